// AsyncEcho: the echo server with RingPortAsync: one task per connection writes back every
// ByteBuffer its inbound sequence delivers.
// Usage: AsyncEcho [port] (or PORT=...; default 8888). Stops on SIGINT or SIGTERM.
import Glibc
import RingPort
import RingPortAsync
import UnixSignals

let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
let portArgument = CommandLine.arguments.dropFirst().first ?? getenv("PORT").map { String(cString: $0) }
let address = try SocketAddress(host: "127.0.0.1", port: UInt16(portArgument ?? "8888") ?? 8888)
let io = try AsyncPort()  // a completion port, its worker threads, a task executor on them
let listener = try TCPListener.bind(to: address, on: io)
print("AsyncEcho listening on \(listener.localAddress)")
fflush(nil)
let server = Task(executorPreference: io.preferredExecutor) { [listener] in  // on the port's workers
    try await withThrowingDiscardingTaskGroup { group in
        for try await connection in listener.connections {  // ends when the listener is closed
            group.addTask {  // inbound: received ByteBuffers; outbound.write queues one (sent as is)
                try? await connection.executeThenClose { inbound, outbound in
                    for try await buffer in inbound { try await outbound.write(consume buffer) }
                }
            }
        }
    }
}
for await _ in signals { break }
await io.shutdown()  // closes the listener and the connections still open: their tasks end
try await server.value
