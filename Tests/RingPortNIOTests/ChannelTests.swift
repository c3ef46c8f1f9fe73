import Dispatch
import Glibc
import NIOCore
import NIOHTTP1
import RingPort
import RingPortNIO
import RingPortTestSupport
import Testing

extension RingPortNIOTests {
    /// Channels over real loopback sockets: byte-exact echo, the order of events, HTTP/1.1
    /// through NIOHTTP1, backpressure, half-closure, close with writes pending — and every
    /// descriptor back afterwards.
    @Suite struct ChannelTests {
        /// 40 clients on RingPortClientBootstrap × 5 random messages ≤ 40,000 bytes through an
        /// echo server on RingPortServerBootstrap: each gets exactly its bytes back.
        @Test func echoServerAndClientsOnThePort() throws {
            try withGroupLeavingNoDescriptors { group in
                let (server, port) = try startEchoServer(on: group)
                try expectEchoedByteExact(clients: 40, messagesEach: 5, seed: 41) { recorder in
                    try RingPortClientBootstrap(group: group)
                        .channelInitializer { channel in
                            channel.eventLoop.makeCompletedFuture {
                                try channel.pipeline.syncOperations.addHandler(recorder)
                            }
                        }
                        .connect(host: "127.0.0.1", port: port)
                        .wait()
                }
                try server.close().wait()
            }
        }

        /// An accepted channel sees registered → active → read… → readComplete → inactive →
        /// unregistered, in that order, and its close future completes.
        @Test func eventsArriveInOrder() throws {
            try withRecordingServer { fixture in
                let recorder = fixture.recorder
                try fixture.client.send(Array("hello".utf8))
                #expect(eventually { recorder.received.withLock { $0.count } == 5 })
                fixture.closeClient()
                #expect(eventually { recorder.events.withLock { $0.last } == "unregistered" })
                let events = recorder.events.withLock { $0 }
                #expect(Array(events.prefix(3)) == ["registered", "active", "read"])
                #expect(Array(events.suffix(2)) == ["inactive", "unregistered"])
                #expect(events.dropFirst(2).dropLast(2).allSatisfy { $0 == "read" || $0 == "readComplete" })
                #expect(recorder.received.withLock { $0 } == Array("hello".utf8))
            }
        }

        /// SwiftNIO's HTTP/1.1 server pipeline on the port: three pipelined keep-alive requests
        /// get three answers, in order, on one connection.
        @Test func http1PipelineServesPipelinedKeepAliveRequests() throws {
            try withGroupLeavingNoDescriptors { group in
                let server = try RingPortServerBootstrap(group: group)
                    .childChannelInitializer { channel in
                        channel.pipeline.configureHTTPServerPipeline().flatMapThrowing {
                            try channel.pipeline.syncOperations.addHandler(HelloHandler())
                        }
                    }
                    .bind(host: "127.0.0.1", port: 0).wait()
                defer { try? server.close().wait() }
                let client = try BlockingClient(
                    connectingTo: SocketAddress(host: "127.0.0.1", port: UInt16(server.localAddress!.port!)))
                defer { client.close() }
                let request = "GET /plaintext HTTP/1.1\r\nHost: test\r\n\r\n"
                try client.send(Array((request + request + request).utf8))
                let responses = try readResponses(from: client, count: 3)
                #expect(responses.map(\.status) == [200, 200, 200])
                #expect(responses.map(\.body) == Array(repeating: "Hello, World!", count: 3))
            }
        }

        /// A peer that does not read: the server's writes pile up, writability turns off above
        /// the high watermark; closing then fails the writes still queued, and nothing leaks.
        @Test func aPeerThatDoesNotReadTurnsWritabilityOffAndCloseFailsQueuedWrites() throws {
            try withRecordingServer(configure: {
                $0.childChannelOption(.writeBufferWaterMark, value: .init(low: 32 * 1024, high: 64 * 1024))
            }) { fixture in
                let recorder = fixture.recorder
                let channel = try fixture.acceptedChannel()
                // 16 MiB, far more than the socket buffers hold.
                let chunk = ByteBuffer(repeating: 7, count: 64 * 1024)
                let writes = try channel.eventLoop.submit { () -> [EventLoopFuture<Void>] in
                    let futures = (0..<256).map { _ in channel.write(chunk) }
                    channel.flush()
                    return futures
                }.wait()
                #expect(eventually { recorder.events.withLock { $0.contains("notWritable") } })
                #expect(!channel.isWritable)
                try channel.close().wait()
                var failed = 0
                for write in writes {
                    do { try write.wait() } catch { failed += 1 }
                }
                #expect(failed > 0)
            }
        }

        /// With `autoRead` off nothing is received until the handler asks for a read, and then
        /// one arrival is.
        @Test func withoutAutoReadNothingIsReceivedUntilARead() throws {
            try withRecordingServer(configure: { $0.childChannelOption(.autoRead, value: false) }) { fixture in
                let recorder = fixture.recorder
                try fixture.client.send(Array("first".utf8))
                let channel = try fixture.acceptedChannel()
                usleep(100_000)
                #expect(recorder.received.withLock { $0.isEmpty })
                channel.read()
                #expect(eventually { recorder.received.withLock { $0 } == Array("first".utf8) })
            }
        }

        /// A handler that holds `read()` back stops the socket: what arrives after stays in the
        /// kernel (the peer's 32 MiB send blocks), nothing more reaches the pipeline; once it lets
        /// reads through, every byte arrives, in order.
        @Test func aHandlerThatHoldsReadsBackStopsTheSocketAndLosesNothing() throws {
            try withGroupLeavingNoDescriptors { group in
                let gate = ReadGate(holdAfter: 64 * 1024)
                let server = try RingPortServerBootstrap(group: group)
                    .childChannelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(gate) }
                    }
                    .bind(host: "127.0.0.1", port: 0).wait()
                defer { try? server.close().wait() }
                let client = try BlockingClient(
                    connectingTo: SocketAddress(host: "127.0.0.1", port: UInt16(server.localAddress!.port!)))
                defer { client.close() }
                let stream = SeededGenerator(state: 77).bytesArray(count: 32 << 20)
                let sent = LockedBox(0)
                let sender = PeerThread { [client] in
                    var offset = 0
                    while offset < stream.count {
                        let count = stream[offset...].withUnsafeBytes {
                            send(client.descriptor, $0.baseAddress, min($0.count, 1 << 16), 0)
                        }
                        guard count > 0 else { return }
                        offset += count
                        sent.withLock { $0 = offset }
                    }
                }
                #expect(eventually { gate.isHolding })
                // The peer gets as far as the socket buffers let it (a few MiB) and stops: the
                // channel stopped receiving rather than buffering what arrived. Its count holds
                // for 300 ms then (waited for: a loaded machine runs the sender late).
                var sentAt = -1
                #expect(
                    eventually(timeout: .seconds(30)) {
                        let now = sent.withLock { $0 }
                        defer { sentAt = now }
                        if now == sentAt { return true }
                        usleep(300_000)
                        return false
                    }, "the peer's send went on while reads were held")
                #expect(sentAt < stream.count)
                let heldAt = gate.received.withLock { $0.count }
                usleep(200_000)
                #expect(
                    gate.received.withLock { $0.count } == heldAt, "bytes reached the pipeline while reads were held")
                #expect(sent.withLock { $0 } == sentAt, "the peer's send went on while reads were held")
                gate.release()
                #expect(
                    eventually { gate.received.withLock { $0.count } == stream.count },
                    "\(gate.received.withLock { $0.count }) of \(stream.count) bytes arrived")
                #expect(gate.received.withLock { $0 } == stream)
                sender.join()
            }
        }

        /// `close(mode: .input)`: `inputClosed` fires, nothing more is read, and the channel stays
        /// open for writing (the shut-down input's end of stream does not close it).
        @Test func closingTheInputKeepsTheChannelWritable() throws {
            try withRecordingServer { fixture in
                let (recorder, client) = (fixture.recorder, fixture.client)
                try client.send(Array("first".utf8))
                #expect(eventually { recorder.received.withLock { $0 } == Array("first".utf8) })
                let channel = try fixture.acceptedChannel()
                try channel.close(mode: .input).wait()
                #expect(recorder.events.withLock { $0.contains("inputClosed") })
                try? client.send(Array("ignored".utf8))
                usleep(100_000)
                #expect(channel.isActive)
                #expect(recorder.received.withLock { $0 } == Array("first".utf8))
                try channel.writeAndFlush(ByteBuffer(string: "still here")).wait()
                #expect(try client.receive(count: 10) == Array("still here".utf8))
            }
        }

        /// With `allowRemoteHalfClosure`, the peer's FIN arrives as `inputClosed` and the channel
        /// can still answer; the peer reads the answer and then EOF after `close(mode: .output)`.
        @Test(.timeLimit(.minutes(1))) func halfClosure() throws {
            try withRecordingServer(configure: { $0.childChannelOption(.allowRemoteHalfClosure, value: true) }) {
                fixture in
                let (recorder, client) = (fixture.recorder, fixture.client)
                try client.send(Array("question".utf8))
                shutdown(client.descriptor, Int32(SHUT_WR))
                #expect(eventually { recorder.events.withLock { $0.contains("inputClosed") } })
                let channel = try fixture.acceptedChannel()
                #expect(channel.isActive)
                try channel.writeAndFlush(ByteBuffer(string: "answer")).wait()
                try channel.close(mode: .output).wait()
                #expect(try client.receive(count: 6) == Array("answer".utf8))
                var rest = [UInt8](repeating: 0, count: 16)
                #expect(client.receiveSome(into: &rest) == 0)
                #expect(recorder.received.withLock { $0 } == Array("question".utf8))
                // Both sides closed: the channel closes (before, it stayed active for good).
                try channel.closeFuture.wait()
                #expect(!channel.isActive)
                #expect(recorder.events.withLock { $0.contains("inactive") })
            }
        }

        /// `close(mode: .output)` right after a flush: what was flushed is still sent, all of it,
        /// before the peer reads the end of stream; the write side's promise succeeds then, and
        /// a write after it fails. (Before, flushed writes not yet in flight failed with
        /// `outputClosed` and the peer got a truncated stream.)
        @Test(.timeLimit(.minutes(1))) func closingTheOutputSendsWhatWasFlushedFirst() throws {
            try withRecordingServer { fixture in
                let channel = try fixture.acceptedChannel()
                var generator = SeededGenerator(state: 77)
                let first = generator.bytes(count: 3 << 20)
                let second = generator.bytes(count: 3 << 20)
                // The first flush puts the first write in flight; the second is flushed behind it.
                let (writes, closed) = try channel.eventLoop.submit {
                    let writes = [first, second].map { bytes in
                        let write = channel.write(ByteBuffer(bytes: bytes))
                        channel.flush()
                        return write
                    }
                    return (writes, channel.close(mode: .output))
                }.wait()
                var received: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 65536)
                while true {
                    let count = fixture.client.receiveSome(into: &chunk)
                    guard count > 0 else { break }
                    received += chunk.prefix(count)
                }
                #expect(received.count == first.count + second.count)
                #expect(received == first + second)
                for write in writes { try write.wait() }
                try closed.wait()
                #expect(fixture.recorder.events.withLock { $0.contains("outputClosed") })
                #expect(throws: ChannelError.outputClosed) { try channel.writeAndFlush(ByteBuffer(string: "x")).wait() }
                #expect(channel.isActive)
            }
        }

        /// A write's callback that closes the channel while `close()` fails that write: the
        /// outer close still completes, and the callback's close finds the channel closed.
        /// (Before, the inner close ran the whole close and the outer promise never completed.)
        @Test(.timeLimit(.minutes(1))) func aCloseInsideAFailedWritesCallbackLetsTheOuterCloseComplete() throws {
            try withRecordingServer { fixture in
                let channel = try fixture.acceptedChannel()
                let innerClose = try channel.eventLoop.submit { () -> EventLoopFuture<Void> in
                    let inner = channel.eventLoop.makePromise(of: Void.self)
                    let write = channel.eventLoop.makePromise(of: Void.self)
                    write.futureResult.whenFailure { _ in channel.close(promise: inner) }
                    channel.write(ByteBuffer(string: "never flushed"), promise: write)
                    return inner.futureResult
                }.wait()
                try channel.close().wait()
                #expect(throws: ChannelError.alreadyClosed) { try innerClose.wait() }
                #expect(!channel.isActive)
            }
        }

        /// A client that writes and flushes in its initializer, before it is connected: the
        /// bytes go out once the connection is up (before, the send on the unconnected socket
        /// failed and closed the channel, and the connect with it).
        @Test func writesFlushedBeforeTheConnectAreSentOnceConnected() throws {
            try withGroupLeavingNoDescriptors { group in
                let (server, port) = try startEchoServer(on: group)
                let recorder = RecordingHandler()
                let client = try RingPortClientBootstrap(group: group)
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(recorder)
                            channel.writeAndFlush(ByteBuffer(string: "hello early"), promise: nil)
                        }
                    }
                    .connect(host: "127.0.0.1", port: port)
                    .wait()
                #expect(eventually { recorder.received.withLock { $0.count } >= 11 })
                #expect(recorder.received.withLock { $0 } == Array("hello early".utf8))
                try client.close().wait()
                try server.close().wait()
            }
        }
    }
}

/// Answers every HTTP request with "Hello, World!" (keep-alive).
private final class HelloHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Length", value: "13")
        headers.add(name: "Content-Type", value: "text/plain")
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "Hello, World!")))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}
