import CLiburing
import Glibc
import RingPortTestSupport
import SystemPackage
import Testing

@testable import RingPort

extension RingPortTests {
    @Suite struct RingSetupTests {
        @Test func refusedSetupReportsTheCauseAndTheFix() throws {
            var configuration = CompletionPort.Configuration()
            configuration.setupFault = { _ in -EPERM }
            do {
                _ = try CompletionPort(configuration: configuration)
                Issue.record("set-up must fail")
            } catch {
                #expect(error.code == .ioURingUnavailable)
                #expect(error.errno == .notPermitted)
                let setting = IOURingUnavailability.readIOURingDisabledSetting()
                #expect(
                    error.unavailability
                        == IOURingUnavailability.classify(.notPermitted, ioURingDisabledSetting: setting))
                #expect(error.description.contains("io_uring_setup"))
                #expect(error.description.contains("Fix:"))
            }
        }

        @Test(
            arguments: [
                (Errno.noFunction, nil, IOURingUnavailability.notInKernel),
                (Errno.notPermitted, 2, .disabledBySysctl),
                (Errno.notPermitted, 1, .restrictedToGroup),
                (Errno.notPermitted, 0, .blockedByPolicy),
                (Errno.notPermitted, nil, .blockedByPolicy),
                (Errno.noMemory, 0, .lockedMemoryLimit),
                (Errno.tooManyOpenFiles, 0, .descriptorLimit),
                (Errno.invalidArgument, 0, .invalidRingSize),
                (Errno.ioError, 0, .other),
            ] as [(Errno, Int?, IOURingUnavailability)])
        func setupErrorsAreClassified(errno: Errno, sysctl: Int?, expected: IOURingUnavailability) {
            let cause = IOURingUnavailability.classify(errno, ioURingDisabledSetting: sysctl)
            #expect(cause == expected)
            #expect(!cause.fix.isEmpty)
        }

        @Test func sysctlMessagesNameTheSetting() {
            #expect(IOURingUnavailability.disabledBySysctl.description.contains("kernel.io_uring_disabled"))
            #expect(IOURingUnavailability.blockedByPolicy.description.contains("seccomp"))
            #expect(IOURingUnavailability.lockedMemoryLimit.description.contains("ulimit -l"))
        }

        @Test func olderKernelFlagsFallBack() throws {
            // A kernel without COOP_TASKRUN answers EINVAL; the port retries without it.
            var configuration = CompletionPort.Configuration()
            configuration.ringCount = 1
            configuration.setupFault = { flags in flags & IORING_SETUP_COOP_TASKRUN != 0 ? -EINVAL : nil }
            let port = try CompletionPort(configuration: configuration)
            #expect(port.rings[0].uring.setupFlags & IORING_SETUP_COOP_TASKRUN == 0)
            let worker = port.makeWorker()
            try port.nop(value: 5)
            #expect(try worker.dequeue(timeout: .seconds(5))?.userValue == 5)
            worker.detach()
            port.close()
        }

        @Test func kernelWithoutRequiredFeaturesIsReported() throws {
            var configuration = CompletionPort.Configuration()
            configuration.hiddenFeatures = IORING_FEAT_EXT_ARG
            do {
                _ = try CompletionPort(configuration: configuration)
                Issue.record("set-up must fail without IORING_FEAT_EXT_ARG")
            } catch {
                #expect(error.code == .ioURingUnavailable)
                #expect(error.unavailability == .missingFeatures("IORING_FEAT_EXT_ARG (5.11)"))
                #expect(error.description.contains("Linux 5.11"))
            }
            // The rings created and torn down on the way left nothing behind.
            let port = try CompletionPort()
            port.close()
        }

        @Test func impossibleSizesAreRejected() {
            for entries: UInt32 in [0, 40_000] {
                var configuration = CompletionPort.Configuration()
                configuration.ringEntries = entries
                #expect(throws: RingPortError.self) { _ = try CompletionPort(configuration: configuration) }
            }
            var configuration = CompletionPort.Configuration()
            configuration.ringCount = 0
            #expect(throws: RingPortError.self) { _ = try CompletionPort(configuration: configuration) }
        }
    }
}
