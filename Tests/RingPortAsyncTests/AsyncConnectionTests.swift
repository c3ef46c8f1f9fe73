import Foundation
import Glibc
import RingPort
import RingPortAsync
import RingPortTestSupport
import SystemPackage
import Testing

/// The async layer over real loopback sockets: what comes back, how errors and cancellation
/// surface, and that nothing stays in flight or open afterwards.
extension RingPortAsyncTests {
    @Suite struct AsyncConnectionTests {
        /// Async clients (one writer and one reader task each) against the async echo server:
        /// every byte of many random-size messages comes back in order, with tasks resumed on the
        /// port's workers and on the global executor.
        @Test(.timeLimit(.minutes(1)), arguments: [AsyncPort.Resumption.portWorkers, .globalExecutor])
        func echoesManyRandomMessagesFromManyClientsByteExact(resumption: AsyncPort.Resumption) async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort(resumption)
            let listener = try TCPListener.bind(to: loopbackAnyPort(), on: io)
            let server = Task(executorPreference: io.preferredExecutor) { try await echo(listener) }
            let address = listener.localAddress

            let clients = 24
            let verified = try await withThrowingTaskGroup(of: Int.self) { group in
                for client in 0..<clients {
                    group.addTask(executorPreference: io.preferredExecutor) {
                        var generator = SeededGenerator(state: UInt64(client) &+ 100)
                        var stream: [UInt8] = []
                        var messages: [[UInt8]] = []
                        for _ in 0..<20 {
                            let message = generator.bytes(count: Int.random(in: 1...40_000, using: &generator))
                            messages.append(message)
                            stream += message
                        }
                        let connection = try await TCPConnection.connect(to: address, on: io)
                        defer { connection.close() }
                        #expect(connection.peerAddress == address)
                        let expected = stream
                        async let written: Void = {
                            for message in messages { try await connection.write(message) }
                        }()
                        var received: [UInt8] = []
                        received.reserveCapacity(expected.count)
                        while received.count < expected.count, let buffer = try await connection.read() {
                            received += buffer.readableBytesView
                        }
                        try await written
                        #expect(received == expected, "client \(client)")
                        return received.count
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(verified > clients * 20)
            listener.close()
            try await server.value
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        @Test(.timeLimit(.minutes(1))) func connectToAClosedPortThrowsConnectionRefused() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            // A port that was just listening and no longer is.
            let probe = try TCPSocket.makeListener(address: loopbackAnyPort())
            let address = try TCPSocket.localAddress(of: probe)
            close(probe)

            await #expect {
                _ = try await TCPConnection.connect(to: address, on: io)
            } throws: { error in
                let error = try #require(error as? RingPortError)
                return error.code == .systemCallFailed && error.errno == .connectionRefused
            }
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        @Test(.timeLimit(.minutes(1))) func readingAPeerThatClosesReturnsTheBytesThenEndOfStream() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let listener = try TCPListener.bind(to: loopbackAnyPort(), on: io)
            let address = listener.localAddress
            let client = try await onThread { try BlockingClient(connectingTo: address) }
            let connection = try #require(try await listener.accept())
            #expect(connection.peerAddress == (try TCPSocket.localAddress(of: client.descriptor)))
            #expect(connection.asyncPort === io)
            try client.send(Array("goodbye".utf8))
            client.close()

            var received: [UInt8] = []
            for try await buffer in connection.inbound {
                #expect(buffer.readableBytes > 0)
                received += buffer.readableBytesView
            }
            #expect(received == Array("goodbye".utf8))
            // The end of stream stays: later reads report it again.
            #expect(try await connection.read() == nil)
            #expect(try await connection.read() == nil)
            connection.close()
            listener.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// A pending read whose task is cancelled throws CancellationError at once; the receive
        /// stays armed, the connection usable, and a later read gets the next bytes.
        @Test(.timeLimit(.minutes(1)), arguments: [AsyncPort.Resumption.portWorkers, .globalExecutor])
        func cancellingAPendingReadThrowsCancellationAndKeepsTheConnectionUsable(
            resumption: AsyncPort.Resumption
        ) async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort(resumption)
            let (connection, client) = try await connectedPair(on: io)

            let submittedBefore = io.statistics.submittedOperations
            let reading = Task(executorPreference: io.preferredExecutor) { try await connection.read() }
            // The read is with the kernel (not cancelled before it was posted). On the port's
            // workers, starting the task posted a wake-up first.
            let posts: UInt64 = resumption == .portWorkers ? 2 : 1
            #expect(
                await eventuallyAsync {
                    let statistics = io.statistics
                    return statistics.operationsInFlight == 1
                        && statistics.submittedOperations - submittedBefore == posts
                })
            reading.cancel()
            await #expect(throws: CancellationError.self) { _ = try await reading.value }
            #expect(io.statistics.operationsInFlight == 1, "the receive stays armed")
            #expect(!connection.isClosed)

            try client.send(Array("still here".utf8))
            let bytes = try await Task(executorPreference: io.preferredExecutor) { try await connection.read() }.value
            #expect(bytes.bytes == Array("still here".utf8))
            // And the other direction still works.
            try await connection.write(Array("pong".utf8))
            #expect(try client.receive(count: 4) == Array("pong".utf8))

            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// A read by a task that is cancelled before it reads throws CancellationError without
        /// waiting, and leaves nothing behind: the next read, by a task that is not cancelled,
        /// waits for the peer's bytes and gets them.
        @Test(.timeLimit(.minutes(1))) func aReadByAnAlreadyCancelledTaskThrowsAndTheNextReadWaits()
            async throws
        {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)

            let started = AsyncStream<Void>.makeStream()
            let cancelled = Task(executorPreference: io.preferredExecutor) { () async throws -> ByteBuffer? in
                // Wait until cancelled, without reading.
                for await _ in started.stream {}
                return try await connection.read()
            }
            cancelled.cancel()
            started.continuation.finish()
            await #expect(throws: CancellationError.self) { _ = try await cancelled.value }

            let reading = Task(executorPreference: io.preferredExecutor) { try await connection.read() }
            try await Task.sleep(for: .milliseconds(50))
            try client.send(Array("after".utf8))
            #expect(try await reading.value?.readableBytesView.elementsEqual("after".utf8) == true)

            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// Reads in `executeThenClose`, whose one cancellation handler covers all of its task's
        /// reads: a waiting read throws CancellationError when the task is cancelled, bytes that
        /// arrive afterwards are still returned, and a read that would wait in the cancelled task
        /// throws at once.
        @Test(.timeLimit(.minutes(1))) func readsInExecuteThenCloseAreCancelledWithTheirTaskAndLoseNothing()
            async throws
        {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let firstFailed = LockedBox<(any Error)?>(nil)
            let serving = Task(executorPreference: io.preferredExecutor) {
                try await connection.executeThenClose { inbound, outbound -> (ByteBuffer?, (any Error)?) in
                    var iterator = inbound.makeAsyncIterator()
                    do {
                        _ = try await iterator.next()
                    } catch {
                        firstFailed.withLock { $0 = error }
                    }
                    // Cancelled now; the bytes the test sends next are buffered, and returned.
                    while inbound.bufferedByteCount == 0 { await Task.yield() }
                    let second = try await iterator.next()
                    if let second { try await outbound.write(second) }
                    do {
                        _ = try await iterator.next()
                        return (second, nil)
                    } catch {
                        return (second, error)
                    }
                }
            }
            #expect(await eventuallyAsync { io.statistics.operationsInFlight == 1 }, "the receive is armed")
            try await Task.sleep(for: .milliseconds(50))
            serving.cancel()
            #expect(await eventuallyAsync { firstFailed.withLock { $0 != nil } }, "the waiting read was not resumed")
            #expect(firstFailed.withLock { $0 is CancellationError })
            try client.send(Array("after".utf8))
            let (second, third) = try await serving.value
            #expect(second.bytes == Array("after".utf8))
            #expect(try client.receive(count: 5) == Array("after".utf8))
            #expect(third is CancellationError)
            client.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// A task that reads inside another task's `executeThenClose` (not its child) keeps its
        /// own cancellation: cancelling the scope's task leaves its read waiting, and it gets
        /// the next bytes.
        @Test(.timeLimit(.minutes(1))) func cancellingAScopeLeavesAnotherTasksReadWaiting() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let serving = Task(executorPreference: io.preferredExecutor) {
                try await connection.executeThenClose { inbound, _ -> ByteBuffer? in
                    let reader = Task(executorPreference: io.preferredExecutor) {
                        var iterator = inbound.makeAsyncIterator()
                        return try await iterator.next()
                    }
                    return try await reader.value
                }
            }
            #expect(await eventuallyAsync { io.statistics.operationsInFlight == 1 }, "the receive is armed")
            try await Task.sleep(for: .milliseconds(50))
            serving.cancel()
            try await Task.sleep(for: .milliseconds(50))
            try client.send(Array("mine".utf8))
            #expect(try await serving.value.bytes == Array("mine".utf8))
            client.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// Cancelling reads while the peer's bytes are arriving: whichever wins each race — the
        /// cancellation (the bytes stay buffered for the next read) or the bytes — no byte is lost
        /// or reordered.
        @Test(.timeLimit(.minutes(1))) func readsCancelledWhileBytesArriveLoseNothing() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let rounds = 300
            var received: [UInt8] = []
            var cancelledRounds = 0
            for round in 0..<rounds {
                let reading = Task(executorPreference: io.executor) { try await connection.read() }
                // Half the rounds send before cancelling, half after: both orders race.
                if round % 2 == 0 { try client.send([UInt8(truncatingIfNeeded: round)]) }
                reading.cancel()
                if round % 2 == 1 { try client.send([UInt8(truncatingIfNeeded: round)]) }
                do {
                    received += try #require(try await reading.value).readableBytesView
                } catch is CancellationError {
                    cancelledRounds += 1
                }
            }
            // What the cancelled reads left behind (buffered, or still in the socket) comes now.
            while received.count < rounds, let buffer = try await connection.read() {
                received += buffer.readableBytesView
            }
            #expect(received == (0..<rounds).map { UInt8(truncatingIfNeeded: $0) })
            #expect(cancelledRounds > 0)
            #expect(connection.inbound.bufferedByteCount == 0)
            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// A writer waiting for room (the peer does not read) fails when the peer resets the
        /// connection, and leaves nothing in flight or open.
        @Test(.timeLimit(.minutes(1))) func aWriteToAPeerThatResetsThrows() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            // Writes until one waits for room: the socket buffers are full, the queue is at the
            // high watermark, and the one operation in flight is the send (nothing reads, so no
            // receive is armed).
            let chunk = ByteBuffer(repeating: 0x5A, count: 1 << 20)
            let writer = try await WaitingWriter(writing: chunk, to: connection, on: io)
            let (writing, writes, writesBeforeReset) = (writer.task, writer.written, writer.countWhenWaiting)
            #expect(connection.outbound.queuedByteCount >= 65536 / 2)
            #expect(await eventuallyAsync { io.statistics.operationsInFlight == 1 })
            try await Task.sleep(for: .milliseconds(50))
            #expect(writes.withLock { $0 } == writesBeforeReset, "the writer waits")
            client.setResetOnClose()
            client.close()

            await #expect {
                try await writing.value
            } throws: { error in
                let error = try #require(error as? RingPortError)
                return error.code == .systemCallFailed
                    && (error.errno == .connectionReset || error.errno == .brokenPipe)
            }
            // Reading from the reset connection fails (or sees the end), it does not hang.
            let read = await Task { try await connection.read() }.result
            switch read {
            case .success(let bytes): #expect(bytes == nil)
            case .failure(let error): #expect((error as? RingPortError)?.code == .systemCallFailed)
            }
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// Closing the listener ends its sequence of connections after the ones accepted.
        @Test(.timeLimit(.minutes(1))) func closingTheListenerEndsTheSequence() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let listener = try TCPListener.bind(to: loopbackAnyPort(), on: io)
            let acceptedCount = LockedBox(0)
            let accepted = Task(executorPreference: io.executor) {
                var connections: [TCPConnection] = []
                for try await connection in listener.connections {
                    connections.append(connection)
                    acceptedCount.withLock { $0 += 1 }
                }
                return connections
            }
            let address = listener.localAddress
            let clients = try await onThread { try (0..<3).map { _ in try BlockingClient(connectingTo: address) } }
            // The three are accepted; then the iterator posts the next accept and waits in it.
            #expect(
                await eventuallyAsync { acceptedCount.withLock { $0 } == 3 && io.statistics.operationsInFlight == 1 })
            listener.close()
            let connections = try await accepted.value
            #expect(connections.count == 3)
            #expect(try await listener.accept() == nil)
            for connection in connections { connection.close() }
            for client in clients { client.close() }
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// Shutting the port down ends pending operations with handleClosed instead of
        /// leaving their tasks suspended.
        @Test(.timeLimit(.minutes(1))) func shutdownEndsPendingOperations() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let reading = Task(executorPreference: io.executor) { try await connection.read() }
            #expect(await eventuallyAsync { io.statistics.operationsInFlight == 1 })
            await io.shutdown()
            await #expect {
                _ = try await reading.value
            } throws: { error in
                (error as? RingPortError)?.code == .handleClosed
            }
            #expect(connection.isClosed)
            await #expect {
                _ = try await TCPConnection.connect(to: client.localAddress, on: io)
            } throws: { error in
                (error as? RingPortError)?.code == .portClosed
            }
            client.close()
            #expect(
                await eventuallyAsync { descriptorsBefore.allClosedAgain },
                "still open: \(descriptorsBefore.openedSince)")
        }

        /// A task still running on a worker when the shutdown begins, with a completion of its
        /// connection waiting behind it (the worker handles the connection until the task
        /// returns): the shutdown waits for that completion instead of dropping it, and with it
        /// the receive context's link to the connection, which kept the connection and the port
        /// alive for good.
        @Test(.timeLimit(.minutes(1))) func shutdownWaitsForACompletionDeferredBehindABusyTask() async throws {
            weak var released: AsyncPort?
            try await {
                let io = try makeAsyncPort()
                released = io
                let (connection, client) = try await connectedPair(on: io)
                let readReturned = LockedBox(false)
                let busy = Task(executorPreference: io.executor) {
                    // Resumed on the worker that handled the receive, which handles the
                    // connection until this returns: the end of stream it causes waits.
                    let bytes = try await connection.read()
                    readReturned.withLock { $0 = true }
                    client.close()
                    usleep(100_000)
                    return bytes
                }
                try client.send(Array("x".utf8))
                // The task's read returned, and the task is in its sleep (before the shutdown
                // closes the connection).
                #expect(await eventuallyAsync { readReturned.withLock { $0 } })
                connection.close()
                await io.shutdown()
                #expect(try await busy.value.map { String(buffer: $0) } == "x")
            }()
            #expect(await eventuallyAsync { released == nil }, "the port was kept by its connection")
        }

        /// A shutdown called by a task on the port's workers when no thread can be created: the
        /// stop, which waits for every worker to end, runs on the global executor. On the calling
        /// worker it would wait for itself.
        @Test(.timeLimit(.minutes(1))) func aShutdownFromAWorkerStopsWithoutAThreadOfItsOwn() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let calledOnWorker = LockedBox<Bool?>(nil)
            let stopped = LockedBox(false)
            Task(executorPreference: io.executor) {
                _ = try? await connection.read()  // resumed on the worker that handled it
                calledOnWorker.withLock { $0 = CompletionWorker.poolWorkerOfCallingThread != nil }
                PThread.creationFailureCountdown.store(1, ordering: .relaxed)
                await io.shutdown()
                stopped.withLock { $0 = true }
            }
            try client.send(Array("x".utf8))
            #expect(
                await eventuallyAsync(timeout: .seconds(30)) { stopped.withLock { $0 } }, "the shutdown never returned")
            #expect(calledOnWorker.withLock { $0 } == true)
            #expect(PThread.creationFailureCountdown.load(ordering: .relaxed) == 0, "a thread was started")
            await #expect {
                _ = try await connection.read()
            } throws: { error in
                (error as? RingPortError)?.code == .handleClosed
            }
            client.close()
            #expect(
                await eventuallyAsync { descriptorsBefore.allClosedAgain },
                "still open: \(descriptorsBefore.openedSince)")
        }

        /// A task that keeps its worker busy past the shutdown's timeout, with a completion of
        /// its connection waiting behind it: once the workers stopped, the shutdown hands that
        /// completion over on its own thread instead of dropping it at the close. The task's
        /// next read is answered (before, it waited forever) and the port is freed.
        @Test(.timeLimit(.minutes(1))) func shutdownHandlesWhatABusyWorkerHeldPastTheTimeout() async throws {
            weak var released: AsyncPort?
            try await {
                var configuration = AsyncPort.Configuration()
                configuration.port.ringCount = 1
                configuration.shutdownTimeout = .milliseconds(100)
                let io = try AsyncPort(configuration: configuration)
                released = io
                let (connection, client) = try await connectedPair(on: io)
                // What the task's reads returned: the first, then the second (nil until it is
                // answered). Polled, not awaited, so that an unanswered read fails the test
                // instead of hanging it.
                let reads = LockedBox<(first: String?, second: Result<ByteBuffer?, any Error>?, thread: String)>(
                    (nil, nil, ""))
                Task(executorPreference: io.executor) {
                    // Resumed on the worker that handled the receive, which handles the
                    // connection until this returns: the end of stream it causes waits.
                    let first = try await connection.read().map { String(buffer: $0) }
                    reads.withLock { $0.first = first }
                    client.close()
                    usleep(600_000)  // past the shutdown's timeout
                    let second: Result<ByteBuffer?, any Error>
                    do {
                        second = .success(try await connection.read())
                    } catch {
                        second = .failure(error)
                    }
                    let thread = currentThreadName()
                    reads.withLock {
                        $0.second = second; $0.thread = thread
                    }
                }
                try client.send(Array("x".utf8))
                // The task is in its sleep once its first read returned (before the shutdown
                // closes the connection).
                #expect(await eventuallyAsync { reads.withLock { $0.first != nil } })
                await io.shutdown()
                #expect(
                    await eventuallyAsync { reads.withLock { $0.second != nil } }, "the second read was not answered")
                let (first, second, thread) = reads.withLock { $0 }
                #expect(first == "x")
                // Resumed on the global executor: neither a worker nor the stopping thread.
                #expect(!thread.hasPrefix("ringport-"), "\(thread)")
                switch second {
                case .success(let bytes): #expect(bytes == nil, "the end of stream")
                case .failure(let error): #expect((error as? RingPortError)?.code == .handleClosed)
                case nil: break
                }
                #expect(connection.isClosed)
            }()
            #expect(await eventuallyAsync { released == nil }, "the port was kept by its connection")
        }

        /// An inbound sequence kept after its connection went throws handleClosed; its receive
        /// context stays its own until it goes too, so the next connection never shares it.
        @Test(.timeLimit(.minutes(1))) func anInboundSequenceThatOutlivesItsConnectionThrowsHandleClosed() async throws
        {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            var (connection, client): (TCPConnection?, PeerClient) = try await connectedPair(on: io)
            let inbound = try #require(connection).inbound
            connection = nil  // the last reference: the connection closes its handle
            await #expect {
                var iterator = inbound.makeAsyncIterator()
                _ = try await iterator.next()
            } throws: { error in
                (error as? RingPortError)?.code == .handleClosed
            }
            let (other, otherClient) = try await connectedPair(on: io)
            try otherClient.send([1, 2, 3])
            #expect(try await other.read().bytes == [1, 2, 3])
            try await other.write([4, 5])
            #expect(try otherClient.receive(count: 2) == [4, 5])
            client.close()
            otherClient.close()
            other.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        @Test(.timeLimit(.minutes(1))) func twoConcurrentReadsOnOneConnectionAreRefused() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let first = Task { try await connection.read() }
            #expect(await eventuallyAsync { io.statistics.operationsInFlight == 1 })
            await #expect {
                _ = try await connection.read()
            } throws: { error in
                (error as? RingPortError)?.code == .contextInFlight
            }
            try client.send([1, 2, 3])
            #expect(try await first.value.bytes == [1, 2, 3])
            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// A read by a task cancelled already, while another task's read waits: the second read
        /// is refused (`contextInFlight`), and its cancellation handler, which runs at once,
        /// leaves the other task's wait alone, which gets the next bytes. (Before, the handler
        /// resumed whichever read waited, the other task's, with CancellationError.)
        @Test(.timeLimit(.minutes(1))) func aCancelledTasksReadLeavesAnotherTasksWaitAlone() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let first = Task { try await connection.read() }
            #expect(await eventuallyAsync { io.statistics.operationsInFlight == 1 })
            try await Task.sleep(for: .milliseconds(20))  // the first read is waiting
            await expectRefusedInACancelledTask { _ = try await connection.read() }
            try client.send([4, 5, 6])
            #expect(try await first.value.bytes == [4, 5, 6])
            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// Runs `operation` in a task cancelled before it starts, and expects it to be refused
        /// with `contextInFlight` (another task waits already).
        func expectRefusedInACancelledTask(
            sourceLocation: SourceLocation = #_sourceLocation, _ operation: @escaping @Sendable () async throws -> Void
        ) async {
            let started = AsyncStream<Void>.makeStream()
            let cancelled = Task {
                for await _ in started.stream {}
                try await operation()
            }
            cancelled.cancel()
            started.continuation.finish()
            await #expect(sourceLocation: sourceLocation) {
                try await cancelled.value
            } throws: { error in
                (error as? RingPortError)?.code == .contextInFlight
            }
        }

        /// The same for writes: while one writer waits for room (the peer does not read), a
        /// write by a task cancelled already is refused and leaves the waiting writer alone,
        /// whose bytes go out once the peer reads. (Before, the cancelled task's handler took the
        /// other writer's wait, which threw CancellationError and queued nothing.)
        @Test(.timeLimit(.minutes(1))) func aCancelledTasksWriteLeavesAnotherTasksWaitAlone() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let chunk = ByteBuffer(repeating: 0x44, count: 65536)
            let writing = try await WaitingWriter(writing: chunk, to: connection, on: io)
            let (writer, count) = (writing.task, writing.countWhenWaiting)
            await expectRefusedInACancelledTask { try await connection.write(ByteBuffer(string: "never")) }
            // The waiting write goes on: the peer reads it and the next one.
            let expected = (count + 2) * 65536
            let received = try await onThread { try client.receive(count: expected) }
            #expect(received.count == expected && received.allSatisfy { $0 == 0x44 })
            writer.cancel()
            _ = try? await writer.value
            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// A `for try await` loop over `inbound` in an actor stays on the actor. The iterator's
        /// `next(isolation:)` is `nonisolated(nonsending)`: its caller does not switch back to
        /// its executor when it returns, so this holds only if the iterator itself resumes on
        /// the caller's isolation after waiting for bytes (here every element is waited for).
        /// The actor runs on a thread of its own; the check is the thread's name per element.
        @Test(.timeLimit(.minutes(1))) func aLoopInAnActorStaysOnTheActor() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let reader = InboundReader()
            let reading = Task { try await reader.read(connection.inbound) }
            for index in 0..<5 {
                try await Task.sleep(for: .milliseconds(10))  // the loop waits in between
                try client.send([UInt8(index)])
            }
            client.close()
            let (bytes, threads) = try await reading.value
            #expect(bytes == [0, 1, 2, 3, 4])
            #expect(Set(threads) == ["test-actor"], "\(threads)")
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// A task that prefers the port's executor runs on the port's worker threads, also after
        /// it was resumed by a completion.
        @Test(.timeLimit(.minutes(1))) func tasksPreferringTheExecutorRunOnTheWorkers() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let threads = Task(executorPreference: io.executor) {
                let before = currentThreadName()
                let bytes = try await connection.read()
                return (before, currentThreadName(), bytes)
            }
            try client.send([42])
            let (before, after, bytes) = try await threads.value
            #expect(bytes.bytes == [42])
            #expect(before.hasPrefix("ringport-async"), "\(before)")
            #expect(after.hasPrefix("ringport-async"), "\(after)")
            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
            // After the shutdown a task that still prefers the executor runs elsewhere.
            let late = await Task(executorPreference: io.executor) { currentThreadName() }.value
            #expect(!late.hasPrefix("ringport-async"))
        }
    }
}
