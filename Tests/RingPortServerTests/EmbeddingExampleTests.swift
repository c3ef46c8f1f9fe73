import RingPort
import RingPortServer
import RingPortTestSupport
import Testing

// README server example begins
/// Answers every byte in upper case.
struct Uppercase: ConnectionHandler {
    func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        connection.write(bytes.bytes.map { $0 >= 97 && $0 <= 122 ? $0 - 32 : $0 })
    }
}

func startUppercaseServer(port: UInt16) throws -> TCPServer {
    var configuration = TCPServer.Configuration(address: try SocketAddress(host: "127.0.0.1", port: port))
    configuration.idleTimeout = .seconds(30)  // every limit has a safe default; tune what you need
    let server = try TCPServer(configuration: configuration, handler: Uppercase())
    try server.start()  // later: server.shutdown(gracePeriod: .seconds(10))
    return server
}
// README server example ends

/// The embedding example of README.md, verbatim between the markers (except the port, 0 here),
/// run against a real client.
extension RingPortServerTests {
    @Suite struct EmbeddingExampleTests {
        @Test func readmeEchoExampleEchoes() throws {
            // README example begins
            let port = try CompletionPort()  // one ring per two CPUs
            let listener = try port.associate(
                descriptor: TCPSocket.makeListener(
                    address: SocketAddress(host: "127.0.0.1", port: 0)))
            let buffers = ContextPool(bufferSize: 4096)

            let workers = WorkerPool(port: port) { completion in  // CPU × 2 + 2 threads
                guard let handle = completion.handle, let context = completion.context else { return }
                switch completion.operation {
                case .accept:
                    if let descriptor = completion.acceptedDescriptor,
                        let connection = try? port.associate(descriptor: descriptor)
                    {
                        try? port.read(connection, into: buffers.take())
                    }
                    try? port.accept(on: handle, context: context)  // post the next accept
                case .read where completion.bytesTransferred > 0:
                    context.count = completion.bytesTransferred
                    context.offset = 0
                    try? port.write(handle, from: context, range: 0..<context.count)
                case .write where completion.error == nil:
                    context.offset += completion.bytesTransferred
                    if context.offset < context.count {  // finish a short send
                        try? port.write(handle, from: context, range: context.offset..<context.count)
                    } else {
                        try? port.read(handle, into: context)  // post the next read
                    }
                default:  // 0 bytes or an error: close and free
                    port.close(handle)
                    buffers.recycle(context)
                }
            }
            try workers.start()
            for _ in 0..<16 {
                try port.accept(on: listener, context: IOContext(capacity: 0))
            }
            // README example ends

            let address = try TCPSocket.localAddress(of: listener.descriptor)
            EchoLoad(connections: 32, messagesPerConnection: 4, maximumMessageSize: 32 * 1024, seed: 3)
                .expectCleanRun(against: address)
            workers.shutdown()
            port.close()
        }

        @Test func readmeServerExampleAnswersInUpperCase() throws {
            let server = try startUppercaseServer(port: 0)
            defer { server.shutdown() }
            let client = try BlockingClient(connectingTo: server.localAddress)
            defer { client.close() }
            try client.send(Array("hello, ring!".utf8))
            #expect(try client.receive(count: 12) == Array("HELLO, RING!".utf8))
        }
    }
}
