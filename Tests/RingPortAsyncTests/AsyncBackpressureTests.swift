import Foundation
import Glibc
import RingPort
import RingPortAsync
import RingPortLoad
import RingPortTestSupport
import Testing

/// Backpressure both ways, half-close, cancellation of a waiting write, and many connections at
/// once, on real loopback sockets: what arrives is compared byte for byte.
extension RingPortAsyncTests {
    @Suite struct AsyncBackpressureTests {
        /// 32 MiB: more than the loopback socket buffers of both ends hold, so a side that stops
        /// draining stops the other.
        static let streamLength = 32 << 20

        /// The reader stops: the connection stops receiving at the inbound high watermark (a
        /// multishot receive may deliver a few more arrivals while its cancellation is on the
        /// way), the peer's send blocks, and once the reader goes on every byte arrives in order.
        @Test(.timeLimit(.minutes(1))) func aReaderThatStopsReadingStopsTheReceive() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let stream = SeededGenerator(state: 41).bytesArray(count: Self.streamLength)
            let sent = LockedBox(false)
            let sender = Task.detached {
                try client.send(stream)
                sent.withLock { $0 = true }
            }
            var received: [UInt8] = []
            received.reserveCapacity(stream.count)
            received += try #require(try await connection.read()).readableBytesView

            // Nobody reads now: the buffered count settles at the watermark and the peer waits.
            let highWatermark = io.configuration.inboundHighWatermark
            #expect(await eventuallyAsync { connection.inbound.bufferedByteCount >= highWatermark })
            // The multishot receive is cancelled (the only operation of the port): what arrived
            // before the cancel took effect is buffered, and then nothing more.
            #expect(await eventuallyAsync { io.statistics.operationsInFlight == 0 }, "the receive was not cancelled")
            let buffered = connection.inbound.bufferedByteCount
            #expect(buffered <= highWatermark + 32 * 16384, "\(buffered) bytes buffered")
            try await Task.sleep(for: .milliseconds(200))
            #expect(connection.inbound.bufferedByteCount == buffered, "the receive stopped")
            #expect(!sent.withLock { $0 }, "the peer's send waits")

            while received.count < stream.count, let buffer = try await connection.read() {
                received += buffer.readableBytesView
            }
            try await sender.value
            #expect(received.count == stream.count)
            #expect(firstDifference(received, stream) == nil)
            client.close()
            #expect(try await connection.read() == nil)
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// The peer stops reading: writes queue up to the outbound high watermark and then wait;
        /// once the peer reads, the waiting write goes on and every byte arrives in order.
        @Test(.timeLimit(.minutes(1))) func aPeerThatStopsReadingStopsTheWriter() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let stream = SeededGenerator(state: 43).bytesArray(count: Self.streamLength)
            let chunkSize = 65536
            let written = LockedBox(0)
            let writer = Task(executorPreference: io.executor) {
                for start in stride(from: 0, to: stream.count, by: chunkSize) {
                    try await connection.write(stream[start..<min(start + chunkSize, stream.count)])
                    written.withLock { $0 += 1 }
                }
                try await connection.outbound.finish()
            }
            // The socket buffers grow for a while (loopback autotuning); then the writer waits.
            // It waited when the queue reached the high watermark, and waits until the sends bring
            // it under half of it (a short send may take it a little below the high mark).
            let highWatermark = io.configuration.outboundHighWatermark
            let writesBefore = try await countOnceTheWriterWaits(connection, written)
            let queued = connection.outbound.queuedByteCount
            #expect(queued >= highWatermark / 2 && queued <= highWatermark + chunkSize, "\(queued) bytes queued")
            try await Task.sleep(for: .milliseconds(300))
            #expect(written.withLock { $0 } == writesBefore, "the writer waits")
            #expect(writesBefore < stream.count / chunkSize)

            let received = try await onThread { try client.receive(count: Self.streamLength + 1) }
            try await writer.value
            #expect(received.count == stream.count, "then the end of stream (finish)")
            #expect(firstDifference(received, stream) == nil)
            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// A write cancelled while it waits for room throws CancellationError and queues
        /// nothing: the peer gets exactly the writes that returned, then what is written after.
        @Test(.timeLimit(.minutes(1))) func cancellingAWaitingWriteQueuesNothing() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let writing = try await WaitingWriter(
                writing: ByteBuffer(repeating: 0x33, count: 65536), to: connection, on: io)
            let (writer, written) = (writing.task, writing.written)
            let queued = connection.outbound.queuedByteCount
            #expect(queued >= 65536 / 2, "the writer waits with the queue above half the watermark")
            writer.cancel()
            await #expect(throws: CancellationError.self) { try await writer.value }
            #expect(connection.outbound.queuedByteCount <= queued, "the cancelled write queued nothing")

            // The writes that returned, then a tail written after the cancellation (it waits
            // for room until the peer reads).
            let tail = Array("tail".utf8)
            let count = written.withLock { $0 } * 65536
            async let receiving = onThread { try client.receive(count: count + tail.count) }
            try await connection.write(tail)
            let received = try await receiving
            #expect(received.count == count + tail.count)
            #expect(received.prefix(count).allSatisfy { $0 == 0x33 })
            #expect(Array(received.suffix(tail.count)) == tail)
            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// Half-close: after finish() the peer reads every byte and then an end of stream, and
        /// can still answer; the answer and the peer's end arrive on the inbound side. Writing
        /// after finish() throws.
        @Test(.timeLimit(.minutes(1))) func finishShutsTheWriteSideAndTheReadSideGoesOn() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let request = SeededGenerator(state: 47).bytesArray(count: 300_000)
            try await connection.write(request)
            try await connection.outbound.finish()
            try await connection.outbound.finish()  // idempotent
            await #expect {
                try await connection.write([1])
            } throws: { error in
                (error as? RingPortError)?.code == .invalidArgument
            }
            // An empty write is answered as any write (before, it returned without a check).
            await #expect {
                try await connection.write(ByteBuffer())
            } throws: { error in
                (error as? RingPortError)?.code == .invalidArgument
            }

            let received = try await onThread { try client.receive(count: request.count + 1) }
            #expect(received == request, "every byte, then the end of stream")
            let reply = Array("reply after the peer's half-close".utf8)
            try client.send(reply)
            client.close()
            var answer: [UInt8] = []
            for try await buffer in connection.inbound { answer += buffer.readableBytesView }
            #expect(answer == reply)
            connection.close()
            await #expect {
                try await connection.write(ByteBuffer())
            } throws: { error in
                (error as? RingPortError)?.code == .handleClosed
            }
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// A finish() while another task's write waits for room is refused and changes nothing:
        /// the write side stays open, a later write is queued, and the peer gets every byte with
        /// no end of stream. (Before, the refused finish had been recorded: the shutdown followed
        /// the waiting write, and every later write threw.)
        @Test(.timeLimit(.minutes(1))) func aFinishWhileAWriteWaitsIsRefusedAndChangesNothing() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let (connection, client) = try await connectedPair(on: io)
            let writing = try await WaitingWriter(
                writing: ByteBuffer(repeating: 0x55, count: 65536), to: connection, on: io)
            let (writer, written) = (writing.task, writing.written)
            await #expect {
                try await connection.outbound.finish()
            } throws: { error in
                (error as? RingPortError)?.code == .contextInFlight
            }
            await #expect {
                try await connection.write(ByteBuffer())
            } throws: { error in
                (error as? RingPortError)?.code == .contextInFlight
            }
            writer.cancel()
            await #expect(throws: CancellationError.self) { try await writer.value }
            // The cancelled write queued nothing; this one goes after what the others queued. It
            // waits for room while the queue holds the high watermark (the last chunk not sent
            // at all), so the peer reads meanwhile.
            let count = written.withLock { $0 } * 65536
            async let receiving = onThread { try client.receive(count: count + 1) }
            try await connection.write([0x66])
            let received = try await receiving
            #expect(received.count == count + 1 && received.last == 0x66, "every byte, with no end of stream before")
            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }

        /// 1,000 connections at once against the async echo server, each sending random
        /// messages and reading them back: every byte comes back to its sender.
        @Test(.timeLimit(.minutes(2))) func aThousandConcurrentConnectionsEchoByteExact() async throws {
            try DescriptorLimit.raise(toFit: 2_200)
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort()
            let listener = try TCPListener.bind(to: loopbackAnyPort(), on: io)  // backlog 1,024
            let server = Task(executorPreference: io.preferredExecutor) { try await echo(listener) }
            let address = listener.localAddress
            let connections = 1_000
            let verified = try await withThrowingTaskGroup(of: Int.self) { group in
                for client in 0..<connections {
                    group.addTask(executorPreference: io.preferredExecutor) {
                        var generator = SeededGenerator(state: UInt64(client) &+ 7_000)
                        let connection = try await TCPConnection.connect(to: address, on: io)
                        return try await connection.executeThenClose { inbound, outbound in
                            var iterator = inbound.makeAsyncIterator()
                            var total = 0
                            for _ in 0..<3 {
                                let message = generator.bytes(count: Int.random(in: 1...4096, using: &generator))
                                try await outbound.write(ByteBuffer(bytes: message))
                                var echoed: [UInt8] = []
                                while echoed.count < message.count, let buffer = try await iterator.next() {
                                    echoed += buffer.readableBytesView
                                }
                                #expect(echoed == message, "connection \(client)")
                                total += echoed.count
                            }
                            return total
                        }
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(verified >= connections * 3)
            listener.close()
            try await server.value
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }
    }
}
