import Foundation
import RingPort
import RingPortServer
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// This process's resident set size in bytes (from /proc/self/statm).
func residentBytes() -> Int {
    let fields = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8))?.split(separator: " ") ?? []
    return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
}

/// Raises this process's descriptor limit to at least `count` (up to the hard limit).
func raiseDescriptorLimit(to count: Int) {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    if limit.rlim_cur < rlim_t(count) {
        limit.rlim_cur = min(rlim_t(count), limit.rlim_max)
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}

extension RingPortTests {
    @Suite struct ServerLimitTests {
        @Test func echoesAThousandClientsWithPayloadsUpToOneMebibyte() throws {
            raiseDescriptorLimit(to: 8192)
            try withServer { server in
                EchoLoad(connections: 1000, messagesPerConnection: 1, maximumMessageSize: 1 << 20, seed: 1000, timeout: .seconds(120))
                    .expectCleanRun(against: server.localAddress)
                #expect(eventually { server.statistics.open == 0 })
                #expect(server.statistics.accepted == 1000)
                #expect(server.portStatistics.buffersOutstanding == 0)
            }
        }

        @Test func connectionsBeyondTheLimitAreRefusedWhileOthersAreServed() throws {
            try withServer(configure: { $0.maximumConnections = 10 }) { server in
                let held = try (0..<10).map { _ in try BlockingClient(connectingTo: server.localAddress) }
                for client in held {
                    try client.send([1])
                    #expect(try client.receive(count: 1) == [1])
                }
                // The eleventh and twelfth are accepted and closed at once.
                for _ in 0..<2 {
                    let refused = try BlockingClient(connectingTo: server.localAddress, receiveTimeout: .seconds(5))
                    #expect((try? refused.receive(count: 1)) ?? [] == [])
                    refused.close()
                }
                #expect(eventually { server.statistics.refused == 2 })
                // The held ones still work.
                for client in held {
                    try client.send([2, 3])
                    #expect(try client.receive(count: 2) == [2, 3])
                    client.close()
                }
                // Once they are gone there is room again.
                #expect(eventually { server.statistics.open == 0 })
                let late = try BlockingClient(connectingTo: server.localAddress)
                try late.send([9])
                #expect(try late.receive(count: 1) == [9])
                late.close()
            }
        }

        @Test func idleTimeoutClosesASilentClientOnly() throws {
            try withServer(configure: { $0.idleTimeout = .milliseconds(400) }) { server in
                let silent = try BlockingClient(connectingTo: server.localAddress, receiveTimeout: .seconds(5))
                let chatty = try BlockingClient(connectingTo: server.localAddress)
                let start = ContinuousClock.now
                // The chatty one talks every 100 ms for a second.
                while ContinuousClock.now - start < .seconds(1) {
                    try chatty.send([7])
                    #expect(try chatty.receive(count: 1) == [7])
                    usleep(100_000)
                }
                #expect(try silent.receive(count: 1) == [], "the silent client was closed")
                try chatty.send([8])
                #expect(try chatty.receive(count: 1) == [8])
                #expect(server.statistics.idleTimeouts == 1)
                silent.close()
                chatty.close()
            }
        }

        @Test func aClientThatNeverReadsCannotGrowServerMemory() throws {
            let limit = 256 * 1024
            try withServer(configure: {
                $0.maximumQueuedWriteBytes = limit
                // A small buffer pool, so that what the pool may hold (1 MiB, resident once the
                // kernel has written into it) stays small beside the bound checked below.
                $0.port.providedBuffers = .init(count: 64, size: 16384)
            }) { server in
                let hog = try BlockingClient(connectingTo: server.localAddress, receiveTimeout: .seconds(2))
                var small: Int32 = 64 * 1024
                setsockopt(hog.descriptor, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
                let before = residentBytes()
                // Push 64 MiB without reading: the sends stall once the server stops reading.
                let chunk = [UInt8](repeating: 0x5A, count: 1 << 20)
                var sent = 0
                for _ in 0..<64 {
                    guard (try? hog.send(chunk)) != nil else { break }
                    sent += chunk.count
                }
                #expect(sent < 64 << 20, "the server stopped reading, so the client's sends blocked")
                #expect(eventually { server.statistics.backpressurePauses >= 1 })
                let growth = residentBytes() - before
                #expect(growth < 16 << 20, "server memory grew by \(growth) bytes")
                // Others are still served.
                let other = try BlockingClient(connectingTo: server.localAddress)
                try other.send([1, 2, 3])
                #expect(try other.receive(count: 3) == [1, 2, 3])
                other.close()
                hog.setResetOnClose()
                hog.close()
                #expect(eventually { server.statistics.open == 0 })
            }
        }

        @Test func gracefulShutdownAnswersWhatArrivedAndLeavesNothingOpen() throws {
            let descriptorsBefore = openDescriptorCount()
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
            #expect(eventually { openDescriptorCount() == descriptorsBefore })
            #expect(server.portStatistics.operationsInFlight == 0)
        }
    }
}
