import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import SystemPackage
import Testing

extension RingPortTests {
    @Suite struct CompletionPortTests {
        @Test func userPostRoundTripsKeyContextAndValue() throws {
            let port = try makeSingleRingPort()
            let (left, right) = try makeSocketPair()
            defer { close(right) }
            let handle = try port.associate(descriptor: left, userState: "per-handle state")
            let context = IOContext(capacity: 16)
            context.userValue = 0xC0FFEE
            context.copyBytes(from: Array("payload".utf8))
            let worker = port.makeWorker()

            try port.post(bytesTransferred: 42, handle: handle, context: context, value: 7)
            let completion = try #require(try worker.dequeue(timeout: .seconds(5)))

            #expect(completion.operation == .user)
            #expect(completion.result == 42)
            #expect(completion.bytesTransferred == 42)
            #expect(completion.userValue == 7)
            #expect(completion.error == nil)
            #expect(completion.handle === handle)
            #expect(completion.handle?.userState as? String == "per-handle state")
            handle.userState = 42
            #expect(handle.userState as? Int == 42)
            handle.userState = nil
            #expect(handle.userState == nil)
            #expect(completion.context === context)
            #expect(context.userValue == 0xC0FFEE)
            #expect(!context.isInFlight)
            #expect(context.bytes(in: 0..<7) == Array("payload".utf8))
            worker.detach()
            port.close()
        }

        /// A completion of a handle that another worker is handling waits for that worker, and
        /// counts as waiting meanwhile: a port that looked idle with it was shut down under it,
        /// and the completion was dropped.
        @Test func aCompletionDeferredBehindTheHandlingWorkerCountsAsWaiting() throws {
            let port = try makeSingleRingPort()
            let (left, right) = try makeSocketPair()
            defer { close(right) }
            let handle = try port.associate(descriptor: left)
            let handling = port.makeWorker()
            let other = port.makeWorker()

            try port.post(bytesTransferred: 1, handle: handle, context: nil, value: 1)
            let first = try #require(try handling.dequeue(timeout: .seconds(5)))
            #expect(first.userValue == 1)
            // `handling` holds the handle until its next dequeue: `other` reaps the second
            // completion and leaves it to `handling`.
            try port.post(bytesTransferred: 2, handle: handle, context: nil, value: 2)
            var reaped = false
            for _ in 0..<250 where !reaped {
                #expect(try other.dequeue(timeout: .milliseconds(20)) == nil)
                reaped = port.statistics.operationsInFlight == 0
            }
            #expect(reaped)
            #expect(port.statistics.completionsWaiting == 1)

            let second = try #require(try handling.dequeue(timeout: .seconds(5)))
            #expect(second.userValue == 2)
            #expect(port.statistics.completionsWaiting == 0)
            handling.detach()
            other.detach()
            port.close()
        }

        @Test func nopRoundTripsThroughTheKernel() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let context = IOContext(capacity: 0)
            try port.nop(context: context, value: 99)
            #expect(context.isInFlight)
            let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.operation == .nop)
            #expect(completion.result == 0)
            #expect(completion.userValue == 99)
            #expect(completion.context === context)
            #expect(completion.handle == nil)
            #expect(!context.isInFlight)
            #expect(port.statistics.submittedOperations == 1)
            #expect(port.statistics.completedOperations == 1)
            worker.detach()
            port.close()
        }

        @Test func batchDequeueReturnsCompletionsInOrderUpToTheMaximum() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            for value in 0..<10 {
                try port.post(value: UInt64(value))
            }
            var batch: [Completion] = []
            var rounds = 0
            while batch.count < 10 && rounds < 10 {
                let before = batch.count
                let taken = try worker.dequeue(into: &batch, maximumCount: 4, timeout: .seconds(5))
                #expect(taken == batch.count - before)
                #expect(taken <= 4)
                rounds += 1
            }
            #expect(batch.map(\.userValue) == Array(0..<10).map(UInt64.init))
            #expect(batch.allSatisfy { $0.operation == .user })
            #expect(rounds >= 3)
            // Nothing left: a short dequeue times out.
            #expect(try worker.dequeue(timeout: .milliseconds(20)) == nil)
            worker.detach()
            port.close()
        }

        @Test func timeoutFiresNoEarlierThanAsked() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let context = IOContext(capacity: 0)
            let start = ContinuousClock.now
            try port.timeout(after: .milliseconds(50), context: context)
            let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            let elapsed = ContinuousClock.now - start
            #expect(completion.operation == .timeout)
            #expect(completion.error == nil)
            #expect(!completion.isCancelled)
            #expect(completion.context === context)
            #expect(elapsed >= .milliseconds(50))
            worker.detach()
            port.close()
        }

        @Test func dequeueTimesOutWhenNothingCompletes() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let start = ContinuousClock.now
            #expect(try worker.dequeue(timeout: .milliseconds(30)) == nil)
            #expect(ContinuousClock.now - start >= .milliseconds(30))
            worker.detach()
            port.close()
        }

        @Test func zeroTimeoutPollsTheKernelWithoutWaiting() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            #expect(try worker.dequeue(timeout: .zero) == nil)
            try port.nop(value: 11)
            // One poll submits the NOP, which completes at once, and reaps it.
            let completion = try #require(try worker.dequeue(timeout: .zero))
            #expect(completion.userValue == 11)
            #expect(port.statistics.operationsInFlight == 0)
            worker.detach()
            port.close()
        }

        @Test func negativeDurationsCountAsZero() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            #expect(try worker.dequeue(timeout: .milliseconds(-1)) == nil)
            #expect(try worker.dequeue(timeout: .seconds(-3)) == nil)
            let context = IOContext(capacity: 0)
            try port.timeout(after: .milliseconds(-500), context: context)
            let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.operation == .timeout)
            #expect(completion.error == nil)
            worker.detach()
            port.close()
        }

        @Test func cancelDeliversACancelledCompletionAndKeepsTheBufferUntilThen() throws {
            let port = try makeSingleRingPort()
            let (left, right) = try makeSocketPair()
            defer { close(right) }
            let handle = try port.associate(descriptor: left)
            let worker = port.makeWorker()
            let pattern = (0..<256).map { UInt8($0) }
            weak var weakContext: IOContext?
            do {
                let context = IOContext(capacity: 256)
                context.copyBytes(from: pattern)
                weakContext = context
                try port.read(handle, into: context)
                #expect(context.isInFlight)
                // Posting it again while in flight is refused.
                #expect(throws: RingPortError.self) { try port.read(handle, into: context) }
            }
            // The application dropped its reference: the port keeps the context (and its buffer) alive.
            #expect(weakContext != nil)
            let context = try #require(weakContext)
            #expect(try port.cancel(context))
            let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.operation == .read)
            #expect(completion.isCancelled)
            #expect(completion.error == .canceled)
            #expect(completion.context === context)
            #expect(completion.handle === handle)
            #expect(context.bytes(in: 0..<256) == pattern)
            #expect(try !port.cancel(context))
            port.close(handle)
            worker.detach()
            port.close()
        }

        /// An accept names its peer's address in its context; an accept on the same context that
        /// is then cancelled names none (before, it still named the earlier peer).
        @Test func aCancelledAcceptNamesNoPeerAddress() throws {
            let port = try makeSingleRingPort()
            let listenerDescriptor = try TCPSocket.makeListener(address: SocketAddress(host: "127.0.0.1", port: 0))
            let address = try TCPSocket.localAddress(of: listenerDescriptor)
            let listener = try port.associate(descriptor: listenerDescriptor)
            let worker = port.makeWorker()
            let context = IOContext(capacity: 0)
            try port.accept(on: listener, context: context)
            let client = try TCPSocket.connect(to: address)
            defer { close(client) }
            let accepted = try #require(try worker.dequeue(timeout: .seconds(5)))
            let descriptor = try #require(accepted.acceptedDescriptor)
            defer { close(descriptor) }
            let clientAddress = try TCPSocket.localAddress(of: client)
            #expect(context.acceptedPeerAddress == clientAddress)

            try port.accept(on: listener, context: context)
            #expect(try port.cancel(context))
            let cancelled = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(cancelled.isCancelled)
            #expect(context.acceptedPeerAddress == nil)
            port.close(listener)
            worker.detach()
            port.close()
        }

        @Test func readAndWriteMoveBytesThroughTheKernel() throws {
            let port = try makeSingleRingPort()
            let (left, right) = try makeSocketPair()
            let reader = try port.associate(descriptor: left)
            let writer = try port.associate(descriptor: right)
            let worker = port.makeWorker()
            let message = Array("hello, completion port".utf8)
            let readContext = IOContext(capacity: 64)
            let writeContext = IOContext(capacity: 64)
            writeContext.copyBytes(from: message)
            try port.read(reader, into: readContext)
            try port.write(writer, from: writeContext, range: 0..<message.count)
            var seen: [IOOperation: Completion] = [:]
            while seen.count < 2 {
                let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                seen[completion.operation] = completion
            }
            #expect(seen[.write]?.bytesTransferred == message.count)
            #expect(seen[.read]?.bytesTransferred == message.count)
            #expect(readContext.bytes(in: 0..<message.count) == message)
            #expect(throws: RingPortError.self) { try port.write(writer, from: writeContext, range: 0..<65) }
            port.close(reader)
            port.close(writer)
            worker.detach()
            port.close()
        }

        @Test func connectReachesAListenerAndReportsRefusal() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let listener = try TCPSocket.makeListener(address: SocketAddress(host: "127.0.0.1", port: 0))
            let address = try TCPSocket.localAddress(of: listener)

            let client = try port.associate(descriptor: TCPSocket.makeSocket(family: address.protocolFamily))
            let context = IOContext(capacity: 16)
            try port.connect(client, to: address, context: context)
            let connected = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(connected.operation == .connect)
            #expect(connected.error == nil)
            let accepted = accept(listener, nil, nil)
            #expect(accepted >= 0)
            context.copyBytes(from: Array("ping".utf8))
            try port.write(client, from: context, range: 0..<4)
            #expect(try worker.dequeue(timeout: .seconds(5))?.bytesTransferred == 4)
            var received = [UInt8](repeating: 0, count: 4)
            #expect(recv(accepted, &received, 4, Int32(MSG_WAITALL)) == 4)
            #expect(received == Array("ping".utf8))
            close(accepted)
            close(listener)

            // Nobody listens there any more.
            let refused = try port.associate(descriptor: TCPSocket.makeSocket(family: address.protocolFamily))
            try port.connect(refused, to: address, context: context)
            let failure = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(failure.operation == .connect)
            #expect(failure.error == .connectionRefused)
            port.close(client)
            port.close(refused)
            worker.detach()
            port.close()
        }

        @Test func closingAHandleCancelsItsOperationsAndClosesItsDescriptor() throws {
            let descriptorsBefore = DescriptorSnapshot()
            let port = try makeSingleRingPort()
            let (left, right) = try makeSocketPair()
            let handle = try port.associate(descriptor: left)
            let worker = port.makeWorker()
            let context = IOContext(capacity: 32)
            try port.read(handle, into: context)
            port.close(handle)
            #expect(handle.isClosed)
            let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.operation == .read)
            #expect(completion.isCancelled)
            #expect(completion.handle === handle)
            do {
                try port.read(handle, into: context)
                Issue.record("posting on a closed handle must throw")
            } catch {
                #expect(error.code == .handleClosed)
            }
            close(right)
            worker.detach()
            port.close()
            #expect(descriptorsBefore.allClosedAgain, "still open: \(descriptorsBefore.openedSince)")
            #expect(port.statistics.openHandles == 0)
        }

        /// TCP urgent data: a receive stops short at the urgent mark with the bytes after it
        /// already queued. The next receive gets them at once, without new data arriving. (The
        /// epoll backend took the short receive for an emptied socket and let the next one wait
        /// for an edge that never came.)
        @Test func bytesAfterTheUrgentMarkAreReceivedWithoutNewData() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let (client, accepted) = try makeLoopbackTCPPair()
            defer { Glibc.close(client) }
            let handle = try port.associate(descriptor: accepted)
            // "c" is the urgent byte (out of band); the stream carries "ab" then "def".
            #expect(send(client, "abc", 3, Int32(MSG_OOB)) == 3)
            #expect(send(client, "def", 3, 0) == 3)
            usleep(20_000)
            let context = IOContext(capacity: 4096)
            var received: [UInt8] = []
            for _ in 0..<4 where received.count < 5 {
                try port.read(handle, into: context)
                let completion = try #require(try worker.dequeue(timeout: .seconds(5)), "a receive waited for good")
                try #require(completion.bytesTransferred > 0, "\(completion)")
                received += context.bytes(in: 0..<completion.bytesTransferred)
            }
            #expect(received == Array("abdef".utf8))
            port.close(handle)
            worker.detach()
            port.close()
        }

        /// `shutdownWriting(_:)` ends the peer's stream while the handle is open, and after
        /// `close(_:)` refuses without touching the descriptor's old number, here forced to be
        /// another live socket's (the check and the shutdown happen under the ring's lock, which
        /// the close holds).
        @Test func shutdownWritingEndsThePeersStreamAndNeverReachesAReusedNumber() throws {
            let descriptorsBefore = DescriptorSnapshot()
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()

            let (client, accepted) = try makeLoopbackTCPPair()
            let handle = try port.associate(descriptor: accepted)
            try port.shutdownWriting(handle)
            var byte: UInt8 = 0
            #expect(recv(client, &byte, 1, 0) == 0, "the peer reads an end of stream")

            let (otherClient, otherAccepted) = try makeLoopbackTCPPair()
            let closedHandle = try port.associate(descriptor: otherAccepted)
            port.close(closedHandle)
            // The close goes through the ring: dequeue until the descriptor is gone.
            let closed = eventually {
                _ = try? worker.dequeue(timeout: .milliseconds(5))
                return fcntl(otherAccepted, F_GETFD) == -1
            }
            try #require(closed, "the closed handle's descriptor is closed")
            // Another socket takes the old number.
            let (reusingClient, reusingAccepted) = try makeLoopbackTCPPair()
            try #require(dup2(reusingAccepted, otherAccepted) == otherAccepted)
            Glibc.close(reusingAccepted)

            do {
                try port.shutdownWriting(closedHandle)
                Issue.record("shutting down a closed handle must throw")
            } catch {
                #expect(error.code == .handleClosed)
            }
            // The socket now under that number still sends.
            var message: [UInt8] = Array("still open".utf8)
            #expect(send(otherAccepted, &message, message.count, Int32(MSG_NOSIGNAL)) == message.count)
            var received = [UInt8](repeating: 0, count: message.count)
            #expect(recv(reusingClient, &received, received.count, Int32(MSG_WAITALL)) == message.count)
            #expect(received == message)

            port.close(handle)
            worker.detach()
            port.close()
            for descriptor in [client, otherClient, reusingClient, otherAccepted] { Glibc.close(descriptor) }
            #expect(descriptorsBefore.allClosedAgain, "still open: \(descriptorsBefore.openedSince)")
        }

        /// `shutdownReading(_:)` ends receives on the handle (a receive completes with 0 bytes
        /// although the peer sent nothing and keeps its side open) while sends still reach the
        /// peer; after `close(_:)` it refuses with `handleClosed`.
        @Test func shutdownReadingEndsReceivesKeepsSendingAndRefusesAClosedHandle() throws {
            let descriptorsBefore = DescriptorSnapshot()
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()

            let (client, accepted) = try makeLoopbackTCPPair()
            let handle = try port.associate(descriptor: accepted)
            try port.shutdownReading(handle)
            let context = IOContext(capacity: 16)
            try port.read(handle, into: context)
            let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(completion.context === context)
            #expect(completion.error == nil)
            #expect(completion.bytesTransferred == 0, "the receive ends at once: \(completion)")

            var message: [UInt8] = Array("sent after SHUT_RD".utf8)
            #expect(send(accepted, &message, message.count, Int32(MSG_NOSIGNAL)) == message.count)
            var received = [UInt8](repeating: 0, count: message.count)
            #expect(recv(client, &received, received.count, Int32(MSG_WAITALL)) == message.count)
            #expect(received == message)

            port.close(handle)
            do {
                try port.shutdownReading(handle)
                Issue.record("shutting down a closed handle must throw")
            } catch {
                #expect(error.code == .handleClosed)
                #expect(error.operation.contains("SHUT_RD"), "the error names the call: \(error.operation)")
            }
            worker.detach()
            port.close()
            Glibc.close(client)
            #expect(descriptorsBefore.allClosedAgain, "still open: \(descriptorsBefore.openedSince)")
        }

        @Test func portCloseCancelsEverythingAndClosesOpenHandles() throws {
            let descriptorsBefore = DescriptorSnapshot()
            let port = try makeSingleRingPort()
            let (left, right) = try makeSocketPair()
            let handle = try port.associate(descriptor: left)
            let context = IOContext(capacity: 32)
            let timer = IOContext(capacity: 0)
            try port.read(handle, into: context)
            try port.timeout(after: .seconds(3600), context: timer)
            #expect(port.statistics.operationsInFlight == 2)
            port.close()
            #expect(!context.isInFlight)
            #expect(!timer.isInFlight)
            #expect(handle.isClosed)
            close(right)
            #expect(descriptorsBefore.allClosedAgain, "still open: \(descriptorsBefore.openedSince)")
            #expect(throws: RingPortError.self) { try port.nop() }
        }
    }
}

extension RingPortTests.CompletionPortTests {
    /// One thread dequeuing for a port of two rings: the ring it is not attached to is polled,
    /// so completions of handles on either ring arrive.
    @Test func oneWorkerServesEveryRing() throws {
        var configuration = CompletionPort.Configuration()
        configuration.ringCount = 2
        let port = try CompletionPort(configuration: configuration)
        let worker = port.makeWorker()
        let pairs = try (0..<4).map { _ in try makeSocketPair() }
        let handles = try pairs.map { try port.associate(descriptor: $0.0) }
        #expect(Set(handles.map(\.id.ring)) == [0, 1])
        let contexts = handles.map { _ in IOContext(capacity: 8) }
        for (handle, context) in zip(handles, contexts) {
            try port.read(handle, into: context)
        }
        for pair in pairs {
            #expect(write(pair.1, "ring", 4) == 4)
        }
        var seen = 0
        let deadline = ContinuousClock.now + .seconds(5)
        while seen < 4 && ContinuousClock.now < deadline {
            if let completion = try worker.dequeue(timeout: .milliseconds(100)) {
                #expect(completion.bytesTransferred == 4)
                seen += 1
            }
        }
        #expect(seen == 4)
        // Idle with an uncovered ring: the worker sleeps in 1 ms steps instead of spinning.
        func threadCPUTime() -> Duration {
            var time = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
            return .seconds(time.tv_sec) + .nanoseconds(time.tv_nsec)
        }
        let cpuBefore = threadCPUTime()
        #expect(try worker.dequeue(timeout: .milliseconds(200)) == nil)
        #expect(threadCPUTime() - cpuBefore < .milliseconds(100))
        for handle in handles { port.close(handle) }
        for pair in pairs { close(pair.1) }
        worker.detach()
        port.close()
    }
}
