import Foundation
import Glibc
import Logging
import RingPort
import RingPortServer
import RingPortTestSupport
import ServiceLifecycle
import Testing

/// An example of `Examples/`, built next to the test bundle, started for a test: its process, its
/// output and log lines, and the address from its banner ("<Name> listening on 127.0.0.1:<port>").
struct RunningExample {
    let name: String
    let running: RunningRingport
    var process: Process { running.process }
    var lines: LineReader { running.lines }
    var logLines: LineReader { running.logLines }
    var address: SocketAddress { running.address }

    /// Starts the example `name` with `arguments` (and `environment` added to this process's)
    /// and waits for its banner.
    init(_ name: String, arguments: [String] = ["0"], environment: [String: String] = [:]) throws {
        self.name = name
        let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let executable = directory.appendingPathComponent(name)
        guard FileManager.default.isExecutableFile(atPath: executable.path) else {
            throw POSIXError(
                .ENOENT, userInfo: [NSLocalizedDescriptionKey: "\(executable.path) not built: run `swift build` first"])
        }
        running = try RunningRingport(executable: executable.path, arguments, environment: environment)
    }

    /// Sends SIGTERM and waits for the exit and for the last of its output.
    func terminate() {
        running.terminate()
    }
}

extension BlockingClient {
    /// Sends `message` from a thread of its own while receiving its echo here, so that a message
    /// larger than the socket buffers cannot stall both sides. Returns what came back.
    func echo(_ message: [UInt8]) throws -> [UInt8] {
        let descriptor = descriptor
        let sender = Thread {
            var sent = 0
            while sent < message.count {
                let result = message.withUnsafeBytes {
                    Glibc.send(descriptor, $0.baseAddress! + sent, message.count - sent, Int32(MSG_NOSIGNAL))
                }
                if result < 0 && errno == EINTR { continue }
                if result <= 0 { return }
                sent += result
            }
        }
        sender.start()
        return try receive(count: message.count)
    }

    /// Receives until `count` lines (ending in "\n") arrived, or the peer closed; returns the
    /// lines without their endings.
    func receiveLines(_ count: Int) -> [String] {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while received.count(where: { $0 == UInt8(ascii: "\n") }) < count {
            let result = receiveSome(into: &buffer)
            if result <= 0 { break }
            received += buffer[0..<result]
        }
        return String(decoding: received, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            .dropLast().map(String.init)
    }

    /// Sends `requests` (one line each) in one piece and returns the replies, one line each.
    func ask(_ requests: [String]) throws -> [String] {
        try send(Array(requests.map { $0 + "\n" }.joined().utf8))
        return receiveLines(requests.count)
    }

    /// Whether the peer closed the connection (a receive returns end of stream or a reset).
    var peerClosed: Bool {
        var buffer = [UInt8](repeating: 0, count: 64)
        return receiveSome(into: &buffer) <= 0
    }
}

/// Answers every line it receives with `reply`: replies large enough to stay queued while the
/// client does not read.
private struct BulkReplier: ConnectionHandler {
    let reply: [UInt8]

    func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        bytes.withUnsafeBytes { bytes in
            for byte in bytes where byte == UInt8(ascii: "\n") { connection.write(reply) }
        }
    }
}

extension IntegrationTests {
    @Suite struct ExamplesTests {
        // MARK: The echo examples

        @Test(arguments: ["RawEcho", "AsyncEcho"])
        func echoExampleEchoesByteExactAndStopsOnSIGTERM(name: String) throws {
            let example = try RunningExample(name)
            defer { if example.process.isRunning { example.process.terminate() } }

            var generator = SeededGenerator(state: 42)
            let messages: [[UInt8]] = [
                Array("hello, ring\n".utf8),
                [0],
                Array((0...255).map { UInt8($0) }) + Array((0...255).reversed().map { UInt8($0) }),
                generator.bytes(count: 65_536),
                generator.bytes(count: 4 << 20),  // larger than any buffer on the way
                Array("bye\n".utf8),
            ]
            let client = try BlockingClient(connectingTo: example.address)
            defer { client.close() }
            for message in messages {
                let echoed = try client.echo(message)
                #expect(echoed.count == message.count)
                #expect(firstDifference(echoed, message) == nil, "\(name): \(message.count)-byte message")
            }
            // Several connections at once, each with several messages.
            EchoLoad(connections: 16, messagesPerConnection: 4, maximumMessageSize: 128 * 1024, seed: 7)
                .expectCleanRun(against: example.address)

            example.terminate()
            #expect(example.process.terminationReason == .exit)
            #expect(example.process.terminationStatus == 0, "\(example.logLines.all)")
            #expect(client.peerClosed, "the open connection was closed at exit")
            #expect(throws: (any Error).self, "nothing listens any more") {
                Glibc.close(try TCPSocket.connect(to: example.address))
            }
        }

        /// The examples are meant to be read whole: RawEcho in at most 60 lines, AsyncEcho in at
        /// most 30 (every line of the file, comments and blank lines included).
        @Test(arguments: [("RawEcho", 60), ("AsyncEcho", 30)])
        func echoExampleStaysShort(name: String, limit: Int) throws {
            let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("../../Examples/\(name)/main.swift").standardized
            let text = try String(contentsOf: file, encoding: .utf8)
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            if lines.last == "" { lines.removeLast() }
            #expect(lines.count <= limit, "\(file.path) has \(lines.count) lines")
            #expect(lines.first?.hasPrefix("// \(name):") == true, "starts with its header comment")
        }

        // MARK: KeyValueServer

        @Test func keyValueServerAnswersEveryCommandAndStopsGracefullyOnSIGTERM() throws {
            // The port from the environment this time.
            let example = try RunningExample(
                "KeyValueServer", arguments: [], environment: ["PORT": "0", "LOG_LEVEL": "info"])
            defer { if example.process.isRunning { example.process.terminate() } }
            let client = try BlockingClient(connectingTo: example.address)
            defer { client.close() }

            #expect(try client.ask(["SET greeting hello,  world "]) == ["OK"])
            #expect(try client.ask(["GET greeting"]) == ["VALUE hello,  world "])
            #expect(try client.ask(["GET missing"]) == ["NOT_FOUND"])
            #expect(
                try client.ask(["DEL greeting", "GET greeting", "DEL greeting"]) == [
                    "DELETED", "NOT_FOUND", "NOT_FOUND",
                ])
            #expect(try client.ask(["set k v1\r", "Get k"]) == ["OK", "VALUE v1"], "case-insensitive, CRLF")
            #expect(try client.ask(["FLY away"]) == ["ERR unknown command 'FLY'"])
            #expect(
                try client.ask(["", "GET", "GET a b", "SET onlykey", "DEL"]) == [
                    "ERR empty command", "ERR usage: GET key", "ERR usage: GET key", "ERR usage: SET key value",
                    "ERR usage: DEL key",
                ])
            // The longest line allowed, and a value split over several sends.
            let longest = "SET long " + String(repeating: "v", count: 1024 - 9)
            #expect(try client.ask([longest]) == ["OK"])
            try client.send(Array("GET ".utf8))
            try client.send(Array("long\n".utf8))
            #expect(client.receiveLines(1) == ["VALUE " + String(repeating: "v", count: 1015)])

            // Another connection sees the same store; one line too long ends it.
            let other = try BlockingClient(connectingTo: example.address)
            defer { other.close() }
            #expect(try other.ask(["GET k"]) == ["VALUE v1"])
            let replies = try other.ask(["GET k", "SET big " + String(repeating: "x", count: 2000)])
            #expect(replies == ["VALUE v1", "ERR line too long (limit 1024 bytes)"])
            #expect(other.peerClosed)
            #expect(try client.ask(["GET big"]) == ["NOT_FOUND"], "the first connection is unaffected")

            // SIGTERM: the ServiceGroup shuts the server down gracefully, the open connection is
            // closed, and the process exits 0 with nothing in flight.
            example.terminate()
            #expect(example.process.terminationReason == .exit)
            #expect(example.process.terminationStatus == 0, "\(example.logLines.all)")
            #expect(client.peerClosed)
            let stopped = example.lines.all.first { $0.hasPrefix("KeyValueServer stopped:") }
            #expect(
                stopped
                    == "KeyValueServer stopped: 2 connections served, 7 bad requests, 2 keys, 0 operations in flight")
            #expect(example.logLines.all.contains { $0.contains("kv: drained") })
            #expect(
                !example.logLines.all.contains { $0.contains(" error ") || $0.contains(" critical ") },
                "\(example.logLines.all)")
            #expect(throws: (any Error).self, "nothing listens any more") {
                Glibc.close(try TCPSocket.connect(to: example.address))
            }
        }

        // MARK: TCPServer as a Service

        /// A ServiceGroup's graceful shutdown: the server stops accepting, sends a reply that was
        /// still queued in full, closes the connections, and `run()` returns with nothing in flight.
        @Test func tcpServerInAServiceGroupDrainsOnGracefulShutdown() async throws {
            var generator = SeededGenerator(state: 5)
            let reply = generator.bytes(count: 32 << 20)  // more than the socket buffers hold
            var configuration = TCPServer.Configuration(address: try loopbackAnyPort())
            configuration.gracefulShutdownPeriod = .seconds(60)
            let server = try TCPServer(configuration: configuration, handler: BulkReplier(reply: reply))
            let group = ServiceGroup(services: [server], logger: Logger(label: "test.group"))
            let finished = LockedBox(false)
            let runner = Task {
                defer { finished.withLock { $0 = true } }
                try await group.run()
            }

            let address = server.localAddress
            let reader = try BlockingClient(connectingTo: address)
            defer { reader.close() }
            let idle = try BlockingClient(connectingTo: address)
            defer { idle.close() }
            try reader.send(Array("go\n".utf8))
            #expect(await eventuallyAsync { server.statistics.open == 2 && server.statistics.bytesReceived == 3 })
            #expect(server.statistics.bytesSent < reply.count, "part of the reply is still queued")

            await group.triggerGracefulShutdown()
            // The idle connection is closed; the reader gets the whole reply, then the end.
            #expect(try await onThread { idle.peerClosed })
            #expect(!finished.withLock { $0 }, "run() waits for the reply to be sent")
            let received = try await onThread { try reader.receive(count: reply.count) }
            #expect(received.count == reply.count)
            #expect(firstDifference(received, reply) == nil)
            #expect(try await onThread { reader.peerClosed })

            #expect(await eventuallyAsync(timeout: .seconds(30)) { finished.withLock { $0 } }, "run() returned")
            try await runner.value
            #expect(server.statistics.open == 0)
            #expect(server.statistics.bytesSent == reply.count)
            #expect(server.portStatistics.operationsInFlight == 0)
            #expect(server.portStatistics.completionsWaiting == 0)
            #expect(throws: (any Error).self, "nothing listens any more") {
                Glibc.close(try TCPSocket.connect(to: address))
            }
        }

        /// Cancelling `run()` forces the shutdown: a reply queued for a client that does not read
        /// is dropped instead of waited for (the grace period is a minute).
        @Test func cancellingRunForcesTheShutdown() async throws {
            var configuration = TCPServer.Configuration(address: try loopbackAnyPort())
            configuration.gracefulShutdownPeriod = .seconds(60)
            let server = try TCPServer(
                configuration: configuration, handler: BulkReplier(reply: [UInt8](repeating: 7, count: 32 << 20)))
            let finished = LockedBox(false)
            let runner = Task {
                defer { finished.withLock { $0 = true } }
                try await server.run()
            }
            let hog = try BlockingClient(connectingTo: server.localAddress)
            defer { hog.close() }
            try hog.send(Array("go\n".utf8))
            #expect(await eventuallyAsync { server.statistics.bytesReceived == 3 })

            runner.cancel()
            // Bounded well below the grace period: a failure limit, not a measurement.
            #expect(await eventuallyAsync(timeout: .seconds(20)) { finished.withLock { $0 } }, "run() returned")
            _ = await runner.result
            #expect(server.statistics.open == 0)
            #expect(server.statistics.bytesSent < 32 << 20, "the queued reply was dropped")
            #expect(server.portStatistics.operationsInFlight == 0)
        }

        /// `run()` on a server that `start()` already started, stopped by a direct
        /// `shutdown(gracePeriod:)`: it returns once the server has stopped.
        @Test func runReturnsWhenTheServerIsShutDownDirectly() async throws {
            let server = try TCPServer(
                configuration: TCPServer.Configuration(address: try loopbackAnyPort()),
                handler: BulkReplier(reply: Array("pong\n".utf8)))
            try server.start()
            let finished = LockedBox(false)
            let runner = Task {
                defer { finished.withLock { $0 = true } }
                try await server.run()
            }
            let client = try BlockingClient(connectingTo: server.localAddress)
            defer { client.close() }
            #expect(try await onThread { try client.ask(["ping"]) } == ["pong"])

            try await onThread { server.shutdown(gracePeriod: .seconds(10)) }
            #expect(await eventuallyAsync { finished.withLock { $0 } }, "run() returned")
            try await runner.value
            #expect(server.portStatistics.operationsInFlight == 0)
            // A later run() returns at once.
            try await server.run()
        }
    }
}
