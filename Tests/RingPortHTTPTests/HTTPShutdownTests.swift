import Foundation
import RingPort
import RingPortHTTP
import RingPortServer
import RingPortTestSupport
import Testing

extension RingPortHTTPTests {
    /// The server's graceful shutdown, seen through the HTTP responder: pipelined requests that
    /// arrived before it are all answered.
    @Suite struct HTTPShutdownTests {
        @Test func gracefulShutdownAnswersWhatArrivedAndLeavesNothingOpen() throws {
            let descriptorsBefore = DescriptorSnapshot()
            var configuration = try testServerConfiguration()
            HTTPPlaintextHandler.configure(&configuration)
            let server = try TCPServer(configuration: configuration, handler: HTTPPlaintextHandler())
            try server.start()
            let request = Array("GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n".utf8)
            let clients = try (0..<20).map { _ in try BlockingClient(connectingTo: server.localAddress) }
            // Every client pipelines 50 requests; then the server shuts down while they are answered.
            for client in clients {
                try client.send(Array([[UInt8]](repeating: request, count: 50).joined()))
            }
            // A connection still in the listen backlog at shutdown is never accepted (the kernel
            // resets it); the promise is for the connections the server holds.
            #expect(eventually { server.statistics.accepted == 20 })
            let shutdown = Thread { server.shutdown(gracePeriod: .seconds(5)) }
            shutdown.start()
            for client in clients {
                let responses = try readResponses(from: client, count: 51)
                #expect(responses.count == 50, "every request that arrived before the shutdown is answered")
                #expect(responses.allSatisfy { $0.status == 200 }, "no response is cut short")
                client.close()
            }
            #expect(eventually { server.statistics.open == 0 })
            #expect(eventually { descriptorsBefore.allClosedAgain }, "still open: \(descriptorsBefore.openedSince)")
            #expect(server.portStatistics.operationsInFlight == 0)
        }
    }
}
