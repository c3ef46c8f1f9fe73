import Foundation
import RingPortServer
import SystemPackage
import Testing

@testable import RingPort

#if canImport(Glibc)
import Glibc
#endif

/// Both ways an injected result can reach the port: from the kernel (`IORING_NOP_INJECT_RESULT`,
/// where this kernel has it) and substituted by the port when it reaps the NOP.
enum InjectionPath: String, CaseIterable, CustomTestStringConvertible {
    case kernel, port

    func injection(_ rules: [FaultInjection.Rule], seed: UInt64 = 11) -> FaultInjection {
        switch self {
        case .kernel: FaultInjection(rules: rules, seed: seed)
        case .port: FaultInjection(rules: rules, seed: seed, kernelInjectsResults: false)
        }
    }

    var testDescription: String { rawValue }
}

extension RingPortTests {
    @Suite struct FaultInjectionTests {
        @Test func thisKernelInjectsNOPResults() {
            // The kernel path of the tests below is only the kernel's when this holds.
            #expect(FaultInjection.kernelInjectsNOPResults())
        }

        @Test(arguments: InjectionPath.allCases)
        func injectedResultsArriveWithTheOperationsTagHandleAndContext(path: InjectionPath) throws {
            let injection = path.injection([
                .init(.read, error: .connectionReset, probability: 1, limit: 1),
                .init(.write, error: .brokenPipe, probability: 1, limit: 2),
                .init(.timeout, error: .canceled, probability: 1, limit: 1),
                .init(.read, error: .noBufferSpace, probability: 1, limit: 1),
            ])
            var configuration = CompletionPort.Configuration()
            configuration.ringCount = 1
            configuration.providedBuffers = .init(count: 4, size: 256)
            configuration.faultInjection = injection
            let port = try CompletionPort(configuration: configuration)
            let worker = port.makeWorker()
            let (left, right) = try makeSocketPair()
            defer { close(right) }
            let handle = try port.associate(descriptor: left)
            let context = IOContext(capacity: 64)

            // A receive fails with ECONNRESET without reading: the bytes stay in the socket.
            #expect(write(right, "abc", 3) == 3)
            try port.read(handle, into: context)
            var completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.operation == .read)
            #expect(completion.error == .connectionReset)
            #expect(completion.handle === handle && completion.context === context)
            #expect(!completion.hasMore && !context.isInFlight)

            // A multishot receive ends with ENOBUFS, holding no provided buffer.
            try port.receiveMultishot(handle, context: context)
            completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.error == .noBufferSpace)
            #expect(completion.receivedBuffer == nil && !completion.hasMore)
            #expect(port.statistics.buffersOutstanding == 0)

            // The rules are spent: the real receive gets the bytes that were never read.
            try port.read(handle, into: context)
            completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.bytesTransferred == 3)
            #expect(context.bytes(in: 0..<3) == Array("abc".utf8))

            // A send and a zero-copy send fail with EPIPE and send nothing.
            context.copyBytes(from: Array("xyz".utf8))
            try port.write(handle, from: context, range: 0..<3)
            completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.operation == .write && completion.error == .brokenPipe)
            try port.writeZeroCopy(handle, from: context, range: 0..<3)
            completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.operation == .write && completion.error == .brokenPipe && !completion.hasMore)
            var byte: UInt8 = 0
            #expect(recv(right, &byte, 1, Int32(MSG_DONTWAIT)) == -1 && errno == EAGAIN, "nothing was sent")

            // A ten-second timer completes at once, cancelled.
            let timer = IOContext(capacity: 0)
            try port.timeout(after: .seconds(10), context: timer, handle: handle)
            completion = try #require(try worker.dequeue(timeout: .seconds(2)))
            #expect(completion.operation == .timeout && completion.isCancelled && completion.context === timer)

            // Application posts are never replaced.
            try port.post(bytesTransferred: 5, handle: handle, value: 9)
            completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.operation == .user && completion.result == 5 && completion.userValue == 9)

            #expect(injection.injectedCounts == [1, 2, 1, 1])
            port.close(handle)
            worker.detach()
            port.close()
            let statistics = port.statistics
            #expect(statistics.staleCompletions == 0)
            #expect(statistics.operationsInFlight == 0)
            #expect(statistics.submittedOperations == statistics.completedOperations)
        }

        /// Faults a connection survives: no buffer (`ENOBUFS`), cancellations nobody asked for,
        /// accepts failing with `EMFILE` or cancelled. Every byte must still be echoed.
        @Test(arguments: ServerMode.allCases, InjectionPath.allCases)
        func recoverableFaultsLoseNoByte(mode: ServerMode, path: InjectionPath) throws {
            let injection = path.injection([
                .init(.accept, error: .canceled, probability: 1, limit: 2),
                .init(.accept, error: .tooManyOpenFiles, probability: 1, limit: 2),
                .init(.read, error: .noBufferSpace, probability: 0.1, limit: 20),
                .init(.read, error: .canceled, probability: 0.1),
                .init(.write, error: .canceled, probability: 0.1),
                .init(.timeout, error: .canceled, probability: 0.5),
            ])
            try withServer(configure: {
                mode.apply(&$0)
                $0.port.faultInjection = injection
            }) { server in
                EchoLoad(connections: 48, messagesPerConnection: 4, maximumMessageSize: 48 * 1024, seed: 3)
                    .expectCleanRun(against: server.localAddress)
                #expect(eventually { server.statistics.open == 0 })
                let counts = injection.injectedCounts
                #expect(counts[0] == 2 && counts[1] == 2, "\(counts)")
                #expect(counts[2] > 0 && counts[3] > 0 && counts[4] > 0, "\(counts)")
                let statistics = server.statistics
                #expect(statistics.accepted == 48)
                #expect(statistics.connectionErrors == 0)
                #expect(statistics.acceptErrors == 2)
                #expect(statistics.bufferExhaustions == counts[2])
                #expect(server.portStatistics.buffersOutstanding == 0)
                #expect(server.portStatistics.staleCompletions == 0)
            }
        }

        /// Faults that end a connection (reset, broken pipe, end of stream) end only the
        /// connection hit: the others are served, nothing leaks, and no client sees a wrong byte.
        @Test(arguments: ServerMode.allCases, InjectionPath.allCases)
        func fatalFaultsEndOnlyTheConnectionHit(mode: ServerMode, path: InjectionPath) throws {
            let injection = path.injection([
                .init(.read, error: .connectionReset, probability: 0.04),
                .init(.write, error: .brokenPipe, probability: 0.04),
                .init(.read, result: 0, probability: 0.02),
            ])
            try withServer(configure: {
                mode.apply(&$0)
                $0.port.faultInjection = injection
            }) { server in
                let idleOperations = settledOperationsInFlight(server)
                let idleDescriptors = openDescriptorCount()
                let result = EchoLoad(connections: 64, messagesPerConnection: 4, maximumMessageSize: 32 * 1024, seed: 5)
                    .run(against: server.localAddress)
                let counts = injection.injectedCounts
                #expect(result.connections == 64 && result.connectFailures == 0)
                #expect(result.mismatches == 0, "a client saw a wrong byte: \(result)")
                #expect(result.unfinished == 0, "a client was left hanging: \(result)")
                #expect(result.prematureCloses > 0 && result.prematureCloses <= counts.reduce(0, +), "\(result) \(counts)")
                #expect(eventually { server.statistics.open == 0 })
                // Each injected error is one connection error; an injected end of stream is none.
                #expect(server.statistics.connectionErrors == counts[0] + counts[1], "\(counts)")
                #expect(server.statistics.closed == 64)
                #expect(eventually { server.portStatistics.operationsInFlight == idleOperations })
                #expect(eventually { openDescriptorCount() == idleDescriptors })
                #expect(server.portStatistics.buffersOutstanding == 0)
                #expect(server.portStatistics.staleCompletions == 0)
            }
        }
    }
}
