import Glibc
import NIOCore
import RingPort
import RingPortNIO
import RingPortTestSupport
import Testing

extension RingPortNIOTests {
    /// The listening channel: a burst of connections and one multishot accept, and a listener
    /// whose pipeline does not ask for reads accepting nothing.
    @Suite struct ListenerTests {
        /// A listener whose accepted channels are counted and left alone (no `autoRead`: they
        /// post nothing of their own).
        final class CountingListener {
            let server: Channel
            let address: RingPort.SocketAddress
            let accepted = LockedBox<[Channel]>([])

            init(group: RingPortEventLoopGroup, autoRead: Bool) throws {
                let accepted = accepted
                server = try RingPortServerBootstrap(group: group)
                    .serverChannelOption(.autoRead, value: autoRead)
                    .childChannelOption(.autoRead, value: false)
                    .childChannelInitializer { channel in
                        accepted.withLock { $0.append(channel) }
                        return channel.eventLoop.makeSucceededVoidFuture()
                    }
                    .bind(host: "127.0.0.1", port: 0).wait()
                address = try RingPort.SocketAddress(host: "127.0.0.1", port: UInt16(server.localAddress!.port!))
            }

            var acceptedCount: Int { accepted.withLock { $0.count } }
        }

        /// 50 connections arriving at once are all accepted; where the kernel has multishot
        /// accepts that takes one or two submissions, not one per connection.
        @Test func aBurstOfConnectionsIsAcceptedWithOneMultishotAccept() throws {
            try withGroupLeavingNoDescriptors { group in
                let listener = try CountingListener(group: group, autoRead: true)
                let submittedBefore = group.port.statistics.submittedOperations
                let clients = try (0..<50).map { _ in try BlockingClient(connectingTo: listener.address) }
                #expect(eventually { listener.acceptedCount == 50 }, "accepted \(listener.acceptedCount)")
                let submitted = group.port.statistics.submittedOperations - submittedBefore
                if group.port.features.multishotAccept {
                    #expect(submitted <= 2, "\(submitted) submissions for 50 accepts")
                } else {
                    #expect(submitted >= 50, "\(submitted) submissions for 50 single accepts")
                }
                for client in clients { client.close() }
                for channel in listener.accepted.withLock({ $0 }) { try channel.close().wait() }
                try listener.server.close().wait()
            }
        }

        /// Without `autoRead`, nothing is accepted until the pipeline reads; a read accepts what
        /// waits (at least one connection), and once reads stop, later connections wait in the
        /// backlog until the next read.
        @Test func withoutAutoReadConnectionsWaitForARead() throws {
            try withGroupLeavingNoDescriptors { group in
                let listener = try CountingListener(group: group, autoRead: false)
                var clients = try (0..<3).map { _ in try BlockingClient(connectingTo: listener.address) }
                usleep(100_000)
                #expect(listener.acceptedCount == 0)

                listener.server.read()
                #expect(eventually { listener.acceptedCount >= 1 })
                while listener.acceptedCount < 3 {
                    let before = listener.acceptedCount
                    listener.server.read()
                    #expect(eventually { listener.acceptedCount > before })
                }
                #expect(listener.acceptedCount == 3)

                // No read asked for: the next connection is not accepted.
                clients.append(try BlockingClient(connectingTo: listener.address))
                usleep(200_000)
                #expect(listener.acceptedCount == 3)
                listener.server.read()
                #expect(eventually { listener.acceptedCount == 4 })

                for client in clients { client.close() }
                for channel in listener.accepted.withLock({ $0 }) { try channel.close().wait() }
                try listener.server.close().wait()
            }
        }
    }
}
