import Glibc
import RingPort
import RingPortServer
import RingPortTestSupport
import Testing

/// Keeps every open connection, for a test to reach them from its own thread; echoes. It lets
/// each go when it closes: a connection references the server's resources, which reference the
/// handler, so one kept past its close would keep the whole server alive.
final class KeepingHandler: ConnectionHandler {
    let connections = LockedBox<[Connection]>([])

    func connectionOpened(_ connection: Connection) {
        connections.withLock { $0.append(connection) }
    }

    func connectionClosed(_ connection: Connection, reason: Connection.CloseReason) {
        connections.withLock { $0.removeAll { $0 === connection } }
    }

    func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        connection.write(bytes)
    }
}

extension RingPortServerTests {
    /// `Connection.execute`: work handed to a connection from another thread, serialised with
    /// its callbacks.
    @Suite struct ExecuteTests {
        /// A thread of the test writes to every connection (a broadcast): each client reads the
        /// message.
        @Test func aBroadcastFromAnotherThreadReachesEveryClient() throws {
            let handler = KeepingHandler()
            try withServer(handler: handler) { server in
                let clients = try (0..<4).map { _ in try BlockingClient(connectingTo: server.localAddress) }
                defer { for client in clients { client.close() } }
                #expect(eventually { handler.connections.withLock { $0.count } == clients.count })
                let message = Array("broadcast\n".utf8)
                for connection in handler.connections.withLock({ $0 }) {
                    try connection.execute { $0.write(message) }
                }
                for client in clients {
                    #expect(try client.receive(count: message.count) == message)
                }
            }
        }

        /// Writes handed over one by one while the client's own bytes are echoed come out whole
        /// and in the order they were handed over: 2,000 numbered records, interleaved with the
        /// echo only between records.
        @Test func manyWritesFromAnotherThreadArriveWholeAndInOrder() throws {
            let handler = KeepingHandler()
            try withServer(handler: handler) { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                defer { client.close() }
                #expect(eventually { handler.connections.withLock { $0.count } == 1 })
                let connection = handler.connections.withLock { $0[0] }
                let count = 2000
                for index in 0..<count {
                    let record = Array("<\(String(index, radix: 16))>".utf8)
                    try connection.execute { $0.write(record) }
                    if index % 500 == 0 { try client.send(Array("|echo|".utf8)) }
                }
                var received: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 65536)
                let expectedCount = (0..<count).reduce(0) { $0 + String($1, radix: 16).utf8.count + 2 } + 4 * 6
                while received.count < expectedCount {
                    let result = client.receiveSome(into: &buffer)
                    guard result > 0 else { break }
                    received += buffer[0..<result]
                }
                let text = String(decoding: received, as: UTF8.self).replacingOccurrences(of: "|echo|", with: "")
                let expected = (0..<count).map { "<\(String($0, radix: 16))>" }.joined()
                #expect(text == expected)
            }
        }

        /// A close handed over closes (the client reads an end of stream); once the connection is
        /// closed, `execute` throws `handleClosed`, and the closure is not run.
        @Test func aCloseFromAnotherThreadClosesAndLaterCallsThrow() throws {
            let handler = KeepingHandler()
            try withServer(handler: handler) { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                #expect(eventually { handler.connections.withLock { $0.count } == 1 })
                let connection = handler.connections.withLock { $0[0] }
                try connection.execute { $0.close() }
                #expect(try client.receive(count: 1) == [])
                client.close()
                #expect(eventually { server.statistics.open == 0 })
                let ran = LockedBox(false)
                #expect {
                    try connection.execute { _ in ran.withLock { $0 = true } }
                } throws: { ($0 as? RingPortError)?.code == .handleClosed }
                #expect(!ran.withLock { $0 })
            }
        }
    }
}
