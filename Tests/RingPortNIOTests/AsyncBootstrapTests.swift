import NIOCore
import RingPort
import RingPortNIO
import RingPortTestSupport
import Testing

extension RingPortNIOTests {
    /// The bootstraps' async variants, as NIOPosix's: a listener whose inbound sequence yields a
    /// `NIOAsyncChannel` per connection, and a client connection made into one.
    @Suite struct AsyncBootstrapTests {
        /// An echo server written with `NIOAsyncChannel` on both sides: 20 clients from the async
        /// client bootstrap each get their random message back byte for byte; closing the
        /// listener ends its sequence; nothing stays open.
        @Test func asyncListenerAndClientsEcho() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let group = try makeGroup()
            let server = try await RingPortServerBootstrap(group: group)
                .bind(host: "127.0.0.1", port: 0) { child in
                    child.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: child)
                    }
                }
            let port = try #require(server.channel.localAddress?.port)
            let serving = Task {
                try await server.executeThenClose { connections in
                    try await withThrowingDiscardingTaskGroup { tasks in
                        for try await connection in connections {
                            tasks.addTask {
                                try? await connection.executeThenClose { inbound, outbound in
                                    for try await buffer in inbound { try await outbound.write(buffer) }
                                }
                            }
                        }
                    }
                }
            }
            var generator = SeededGenerator(state: 91)
            for _ in 0..<20 {
                let message = generator.bytesArray(count: Int.random(in: 1...100_000, using: &generator))
                let client = try await RingPortClientBootstrap(group: group)
                    .connect(host: "127.0.0.1", port: port) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                        }
                    }
                let echoed = try await client.executeThenClose { inbound, outbound in
                    try await outbound.write(ByteBuffer(bytes: message))
                    var echoed: [UInt8] = []
                    for try await buffer in inbound {
                        echoed += buffer.readableBytesView
                        if echoed.count >= message.count { break }
                    }
                    return echoed
                }
                #expect(echoed == message)
            }
            try await server.channel.close()
            _ = try? await serving.value
            try await group.shutdownGracefully()
            #expect(
                eventually { descriptorsBefore.allClosedAgain }, "still open: \(descriptorsBefore.openedSince)")
        }

        /// An accept that fails with `EMFILE` (injected) does not end the async listener's
        /// sequence: the listener tries again and the next connection arrives. (Before, the
        /// error went down the pipeline to NIOCore's async handler, which ended the sequence
        /// with it, and the server with it.)
        @Test(.timeLimit(.minutes(1))) func aFailedAcceptDoesNotEndTheAsyncListener() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            var configuration = RingPortEventLoopGroup.Configuration()
            configuration.port.ringCount = 1
            configuration.port.workerCount = 3
            let injection = FaultInjection(rules: [.init(.accept, error: .tooManyOpenFiles, probability: 1, limit: 1)])
            configuration.port.faultInjection = injection
            let group = try RingPortEventLoopGroup(configuration: configuration)
            let server = try await RingPortServerBootstrap(group: group)
                .bind(host: "127.0.0.1", port: 0) { child in
                    child.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: child)
                    }
                }
            let address = try SocketAddress(
                host: "127.0.0.1", port: UInt16(#require(server.channel.localAddress?.port)))
            let accepted = Task {
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        return try await connection.executeThenClose { inbound, _ in
                            var iterator = inbound.makeAsyncIterator()
                            return try await iterator.next().map { Array($0.readableBytesView) }
                        }
                    }
                    return nil
                }
            }
            let client = try await onThread { try BlockingClient(connectingTo: address) }
            try client.send(Array("after the error".utf8))
            #expect(try await accepted.value == Array("after the error".utf8))
            #expect(injection.injectedCount >= 1, "the accept did fail once")
            client.close()
            try? await server.channel.close()
            try await group.shutdownGracefully()
            #expect(
                eventually { descriptorsBefore.allClosedAgain }, "still open: \(descriptorsBefore.openedSince)")
        }
    }
}
