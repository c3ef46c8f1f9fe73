import Foundation
import Glibc
import RingPortTestSupport
import SystemPackage
import Testing

@testable import RingPort

extension RingPortTests {
    @Suite struct FaultInjectionTests {
        @Test func thisKernelInjectsNOPResults() {
            // The kernel path of the tests below is only the kernel's when this holds (on the
            // epoll backend, the emulation's NOP reports the injected result the same way).
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

            // A multishot receive ends with ENOBUFS, holding no provided buffer. (The epoll
            // backend has no multishot receive: a plain receive gets the same fault.)
            if port.supportsMultishotReceive {
                try port.receiveMultishot(handle, context: context)
            } else {
                try port.read(handle, into: context)
            }
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
    }
}
