import RingPort
import RingPortAsync
import RingPortTestSupport
import Testing

// README async example begins
/// Echoes every connection of `listener` until the listener is closed.
func echo(_ listener: TCPListener) async throws {
    try await withThrowingDiscardingTaskGroup { group in
        for try await connection in listener.connections {  // one accept per connection
            group.addTask {  // a child task per connection
                try? await connection.executeThenClose { inbound, outbound in
                    for try await buffer in inbound {  // ByteBuffers; ends when the peer closes
                        try await outbound.write(buffer)  // queued, sent without a copy
                    }
                }  // reset, cancelled: closed all the same
            }
        }
    }
}
// README async example ends

/// The async example of README.md, verbatim between the markers (except the port, 0 here),
/// run against 32 clients that check every byte.
extension RingPortAsyncTests {
    @Suite struct AsyncExampleTests {
        @Test(.timeLimit(.minutes(1))) func readmeAsyncEchoExampleEchoes() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            // README async server begins
            let io = try AsyncPort()  // a completion port and its workers
            let listener = try TCPListener.bind(to: SocketAddress(host: "127.0.0.1", port: 0), on: io)
            let server = Task(executorPreference: io.preferredExecutor) {  // run on the port's workers
                try await echo(listener)
            }
            // later: listener.close(); try await server.value; await io.shutdown()
            // README async server ends

            let address = listener.localAddress
            try await onThread {
                EchoLoad(connections: 32, messagesPerConnection: 8, maximumMessageSize: 32 * 1024, seed: 11)
                    .expectCleanRun(against: address)
            }
            listener.close()
            try await server.value
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)
        }
    }
}
