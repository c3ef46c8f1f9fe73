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
            configuration.backend = .ioURing
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

        @Test(arguments: [Errno.notPermitted, .noFunction, .noMemory])
        func refusedSetupFallsBackToEpoll(errno: Errno) throws {
            var configuration = CompletionPort.Configuration()
            configuration.backend = .automatic
            configuration.readsBackendFromEnvironment = false
            configuration.ringCount = 2
            configuration.setupFault = { _ in -errno.rawValue }
            let port = try CompletionPort(configuration: configuration)
            defer { port.close() }
            #expect(port.backend == .epoll)
            #expect(port.backendFallbackReason?.code == .ioURingUnavailable)
            #expect(port.backendFallbackReason?.errno == errno)
            #expect(!port.features.multishotAccept && !port.features.multishotReceive && !port.features.zeroCopySend)
            // The port serves: a NOP and a receive on a socket pair complete through it.
            let worker = port.makeWorker()
            defer { worker.detach() }
            try port.nop(value: 7)
            #expect(try worker.dequeue(timeout: .seconds(5))?.userValue == 7)
            let (left, right) = try makeSocketPair()
            defer { SystemCall.close(right) }
            let handle = try port.associate(descriptor: left)
            let context = IOContext(capacity: 16)
            try port.read(handle, into: context)
            #expect(Glibc.write(right, "ping", 4) == 4)
            let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.result == 4)
            #expect(context.bytes(in: 0..<4) == Array("ping".utf8))
            port.close(handle)
        }

        @Test func aBadRingSizeIsNotARefusal() {
            // EINVAL for every flag set: the sizes are wrong, and epoll would not cure that.
            var configuration = CompletionPort.Configuration()
            configuration.backend = .automatic
            configuration.readsBackendFromEnvironment = false
            configuration.setupFault = { _ in -EINVAL }
            #expect {
                _ = try CompletionPort(configuration: configuration)
            } throws: { error in
                (error as? RingPortError)?.unavailability == .invalidRingSize
            }
        }

        @Test func epollCanBeChosen() throws {
            var configuration = CompletionPort.Configuration()
            configuration.backend = .epoll
            // Never tried: a refusing io_uring does not matter.
            configuration.setupFault = { _ in -EPERM }
            let port = try CompletionPort(configuration: configuration)
            #expect(port.backend == .epoll)
            #expect(port.backendFallbackReason == nil)
            port.close()
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
            configuration.backend = .ioURing
            configuration.ringCount = 1
            configuration.setupFault = { flags in flags & IORING_SETUP_COOP_TASKRUN != 0 ? -EINVAL : nil }
            let port = try CompletionPort(configuration: configuration)
            let uring = try #require(port.rings[0].queues as? IOURing)
            #expect(uring.setupFlags & IORING_SETUP_COOP_TASKRUN == 0)
            let worker = port.makeWorker()
            try port.nop(value: 5)
            #expect(try worker.dequeue(timeout: .seconds(5))?.userValue == 5)
            worker.detach()
            port.close()
        }

        @Test func kernelWithoutRequiredFeaturesIsReported() throws {
            var configuration = CompletionPort.Configuration()
            configuration.backend = .ioURing
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
            // Automatic: a kernel too old for RingPort's io_uring is served with epoll.
            configuration.backend = .automatic
            configuration.readsBackendFromEnvironment = false
            let fallback = try CompletionPort(configuration: configuration)
            #expect(fallback.backend == .epoll)
            fallback.close()
        }

        /// A buffer ring the kernel refuses to register (its group ID is taken) throws a typed
        /// error with the cause, and its memory is freed once: before, the failure path freed it
        /// and the `deinit` that a throwing class initializer still runs freed it again (a double
        /// free on every kernel without incremental buffer consumption, which the probe tries).
        @Test func aRefusedBufferRingThrowsAndIsFreedOnce() throws {
            let ring = try IOURing(entries: 8, completionEntries: 16)
            let first = try ProvidedBufferRing(ring: ring, groupID: 5, count: 2, bufferSize: 64)
            // The buffers outlive the ring that uses them.
            defer { withExtendedLifetime(first) { ring.close() } }
            for _ in 0..<3 {
                let error = #expect(throws: RingPortError.self) {
                    _ = try ProvidedBufferRing(ring: ring, groupID: 5, count: 2, bufferSize: 64)
                }
                #expect(error?.code == .systemCallFailed)
                #expect(error?.errno == .fileExists)
                #expect(error.map { "\($0)".contains("io_uring_register_buf_ring(group: 5") } == true)
            }
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
