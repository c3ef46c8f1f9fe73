import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import Testing

/// The `ringport` executable built next to the test bundle.
func ringportExecutable() throws -> URL {
    let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    let executable = directory.appendingPathComponent("ringport")
    guard FileManager.default.isExecutableFile(atPath: executable.path) else {
        throw POSIXError(
            .ENOENT, userInfo: [NSLocalizedDescriptionKey: "\(executable.path) not built: run `swift build` first"])
    }
    return executable
}

/// Reads a pipe line by line on a background queue.
final class LineReader: @unchecked Sendable {
    // @unchecked: `lines`, `partial` and `ended` are only touched with `lock` held, by the
    // readability handler (on Foundation's queue) and by `all` and `ended` (on the test's thread).
    private let lock = NSLock()
    private var lines: [String] = []
    private var partial = ""
    private var reachedEnd = false

    init(_ pipe: Pipe) {
        pipe.fileHandleForReading.readabilityHandler = { [self] handle in
            let data = handle.availableData
            if data.isEmpty { handle.readabilityHandler = nil }
            lock.lock()
            defer { lock.unlock() }
            if data.isEmpty { reachedEnd = true }
            partial += String(decoding: data, as: UTF8.self)
            while let newline = partial.firstIndex(of: "\n") {
                lines.append(String(partial[..<newline]))
                partial = String(partial[partial.index(after: newline)...])
            }
        }
    }

    var all: [String] {
        lock.lock()
        defer { lock.unlock() }
        return lines
    }

    /// Whether the writer closed the pipe and every line before that was read.
    var ended: Bool {
        lock.lock()
        defer { lock.unlock() }
        return reachedEnd
    }
}

/// A `ringport` server started for a test: its process, its output and log lines, its address.
struct RunningRingport {
    let process: Process
    let lines: LineReader
    let logLines: LineReader
    /// The banner line ("ringport echo listening on ...").
    let banner: String
    let address: SocketAddress

    /// Starts `ringport` with `arguments` (through `/bin/sh -c "<shellPrefix> exec ringport ..."` when
    /// a shell prefix such as a ulimit is given) and waits for its banner.
    init(_ arguments: [String], shellPrefix: String? = nil) throws {
        try self.init(executable: ringportExecutable().path, arguments, shellPrefix: shellPrefix)
    }

    /// Starts the server `executable` (ringport, or one of `Examples/`) with `arguments` and
    /// `environment` added to this process's, and waits for its banner ("... listening on
    /// 127.0.0.1:<port>").
    init(
        executable: String, _ arguments: [String], environment: [String: String] = [:], shellPrefix: String? = nil
    ) throws {
        process = Process()
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        if let shellPrefix {
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "\(shellPrefix) && exec \"$0\" \"$@\"", executable] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
        }
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        lines = LineReader(output)
        logLines = LineReader(errors)
        try process.run()
        let lines = self.lines
        guard eventually({ lines.all.contains { $0.contains("listening on") } }),
            let banner = lines.all.first(where: { $0.contains("listening on") }),
            let hostPort = banner.split(separator: " ").first(where: { $0.hasPrefix("127.0.0.1:") }),
            let port = UInt16(hostPort.dropFirst("127.0.0.1:".count))
        else {
            process.terminate()
            throw POSIXError(
                .EIO, userInfo: [NSLocalizedDescriptionKey: "\(executable) did not start: \(lines.all) \(logLines.all)"]
            )
        }
        self.banner = banner
        address = try SocketAddress(host: "127.0.0.1", port: port)
    }

    /// Sends SIGTERM and waits for the exit and for the last of its output and log lines.
    func terminate() {
        kill(process.processIdentifier, SIGTERM)
        waitUntilExit()
    }

    /// Waits for the exit and for the last of its output and log lines.
    func waitUntilExit() {
        process.waitUntilExit()
        let (lines, logLines) = (self.lines, self.logLines)
        _ = eventually { lines.ended && logLines.ended }
    }

    /// The "stopped: ..." summary line, once printed.
    var summary: String? {
        let lines = self.lines
        guard eventually({ lines.all.contains { $0.hasPrefix("stopped:") } }) else { return nil }
        return lines.all.first { $0.hasPrefix("stopped:") }
    }

    /// Stops the server with SIGTERM, expects it to exit with status 0 and a summary that lost
    /// nothing, and returns the summary.
    func expectCleanStop(sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        terminate()
        // What the server logged, when it did not exit cleanly: a sanitizer's report (exit
        // status 66) or a crash says there what happened.
        let log =
            process.terminationReason == .exit && process.terminationStatus == 0
            ? "" : logLines.all.joined(separator: "\n")
        #expect(process.terminationReason == .exit, "\(log)", sourceLocation: sourceLocation)
        #expect(process.terminationStatus == 0, "\(log)", sourceLocation: sourceLocation)
        let summary = try #require(summary, sourceLocation: sourceLocation)
        #expect(summary.hasSuffix(" 0 lost"), "\(summary)", sourceLocation: sourceLocation)
        return summary
    }
}

extension IntegrationTests {
    @Suite struct CommandLineTests {
        @Test func echoCommandServesTwoHundredClientsAndStopsCleanly() throws {
            let server = try RunningRingport([
                "echo", "--host", "127.0.0.1", "--port", "0", "--workers", "6", "--log-level", "debug",
            ])
            defer { if server.process.isRunning { server.process.terminate() } }
            #expect(server.banner.contains("6 workers"))

            EchoLoad(connections: 200, messagesPerConnection: 3, maximumMessageSize: 64 * 1024, seed: 99)
                .expectCleanRun(against: server.address)

            let summary = try server.expectCleanStop()
            #expect(summary.contains("200 connections served"))
        }

        /// `ringport async-echo` wherever its tasks run (the port's workers, Swift's global
        /// executor): 100 clients × 3 random messages ≤ 64 KiB echoed byte-exact, and a clean stop
        /// on SIGTERM with nothing lost and no completion left undequeued.
        @Test(arguments: [("workers", "tasks on the port's workers)"), ("global", "tasks on the global executor)")])
        func asyncEchoServesWhereverItsTasksRun(resume: String, banner: String) throws {
            let server = try RunningRingport(["async-echo", "--port", "0", "--resume", resume])
            defer { if server.process.isRunning { server.process.terminate() } }
            #expect(server.banner.hasSuffix(banner), "\(server.banner)")
            EchoLoad(connections: 100, messagesPerConnection: 3, maximumMessageSize: 64 * 1024, seed: 16)
                .expectCleanRun(against: server.address)
            _ = try server.expectCleanStop()
            #expect(!server.logLines.all.contains { $0.contains("not dequeued") }, "\(server.logLines.all)")
        }

        /// `ringport nio-echo` and `ringport nio-http` on either transport: 100 clients × 3 random
        /// messages ≤ 64 KiB echoed byte-exact through the SwiftNIO echo pipeline, and three
        /// pipelined keep-alive requests answered by NIOHTTP1's pipeline with the same headers as
        /// `ringport http`; both stop cleanly on SIGTERM.
        @Test(arguments: ["ringport", "posix"])
        func nioCommandsServeOnBothTransports(transport: String) throws {
            let echo = try RunningRingport(["nio-echo", "--port", "0", "--transport", transport])
            defer { if echo.process.isRunning { echo.process.terminate() } }
            #expect(echo.banner.contains(transport == "ringport" ? "RingPortNIO" : "NIOPosix"), "\(echo.banner)")
            EchoLoad(connections: 100, messagesPerConnection: 3, maximumMessageSize: 64 * 1024, seed: 15)
                .expectCleanRun(against: echo.address)
            echo.terminate()
            #expect(echo.process.terminationStatus == 0)
            let echoSummary = try #require(echo.summary)
            if transport == "ringport" { #expect(echoSummary.hasSuffix(" 0 lost"), "\(echoSummary)") }

            let http = try RunningRingport(["nio-http", "--port", "0", "--transport", transport])
            defer { if http.process.isRunning { http.process.terminate() } }
            let client = try BlockingClient(connectingTo: http.address, receiveTimeout: .seconds(5))
            defer { client.close() }
            try client.send(Array(String(repeating: "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n", count: 3).utf8))
            let responses = try readResponses(from: client, count: 3)
            #expect(responses.map(\.status) == [200, 200, 200])
            #expect(responses.allSatisfy { $0.body == "Hello, World!" })
            http.terminate()
            #expect(http.process.terminationStatus == 0)
        }

        #if TLS
        /// `ringport nio-echo` with a certificate made for the test: openssl's own TLS client
        /// (s_client, which verifies the certificate for `localhost` with it as the only root)
        /// gets 64 KiB of lines back byte-exact on either transport, and a wrong key file stops
        /// the command with an error that names it.
        @Test(arguments: ["ringport", "posix"])
        func nioEchoServesTLS(transport: String) throws {
            let certificate = try TestCertificate()
            defer { certificate.remove() }
            let echo = try RunningRingport([
                "nio-echo", "--port", "0", "--transport", transport,
                "--tls-certificate-chain", certificate.certificatePath, "--tls-private-key", certificate.privateKeyPath,
            ])
            defer { if echo.process.isRunning { echo.process.terminate() } }

            let client = Process()
            client.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            client.arguments = [
                "s_client", "-quiet", "-verify_return_error", "-CAfile", certificate.certificatePath,
                "-verify_hostname", "localhost", "-connect", "127.0.0.1:\(echo.address.port)",
            ]
            let input = Pipe()
            let output = Pipe()
            client.standardInput = input
            client.standardOutput = output
            client.standardError = FileHandle.nullDevice
            try client.run()
            // SIGKILL, not terminate(): a child inherits this process's blocked signals, SIGTERM among them.
            defer { if client.isRunning { kill(client.processIdentifier, SIGKILL) } }
            // 1,024 lines of 63 random letters: s_client passes text through unchanged.
            var generator = SeededGenerator(state: 71)
            let payload = (0..<1024).flatMap { _ in
                generator.bytes(count: 63).map { UInt8(ascii: "a") + $0 % 26 } + [10]
            }
            let writing = try PThread(name: "test-tls-writer") { input.fileHandleForWriting.write(Data(payload)) }
            // Read until every byte is back, s_client ends, or 30 s pass (a bound, not a measurement).
            let deadline = ContinuousClock.now + .seconds(30)
            var readable = pollfd(fd: output.fileHandleForReading.fileDescriptor, events: Int16(POLLIN), revents: 0)
            var received = Data()
            while received.count < payload.count, ContinuousClock.now < deadline {
                guard poll(&readable, 1, 100) == 1 else { continue }
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                received += chunk
            }
            kill(client.processIdentifier, SIGKILL)
            client.waitUntilExit()
            writing.join()
            #expect(received.count == payload.count)
            #expect(Array(received) == payload)
            echo.terminate()
            #expect(echo.process.terminationStatus == 0)

            // The certificate given as the key: the command names the problem and exits 1.
            let process = Process()
            process.executableURL = try ringportExecutable()
            process.arguments = [
                "nio-echo", "--port", "0", "--tls-certificate-chain", certificate.certificatePath,
                "--tls-private-key", certificate.certificatePath,
            ]
            let errors = Pipe()
            process.standardError = errors
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(process.terminationStatus == 1)
            #expect(message.hasPrefix("error: nio-echo: TLS: cannot read the private key"), "\(message)")
        }
        #endif

        /// io_uring_setup denied by a seccomp filter, as container runtimes do, and io_uring asked
        /// for explicitly: the command names the cause and the fix and exits 1 without starting
        /// anything.
        @Test(arguments: [(EPERM, "seccomp"), (ENOSYS, "does not provide io_uring"), (ENOMEM, "ulimit -l")])
        func refusedIOURingIsReportedWithCauseAndFix(errno: Int32, cause: String) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments =
                denyingIOURingSetup(errno: errno) + [
                    try ringportExecutable().path, "echo", "--port", "0", "--backend", "io_uring",
                ]
            let output = Pipe()
            let errors = Pipe()
            process.standardOutput = output
            process.standardError = errors
            try process.run()
            let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(process.terminationStatus == 1)
            #expect(message.hasPrefix("error: io_uring unavailable: io_uring_setup"), "\(message)")
            #expect(message.contains("(errno \(errno))"))
            #expect(message.contains(cause))
            #expect(message.contains("Fix:"))
            #expect(!printed.contains("listening"))
        }

        /// io_uring_setup denied by a seccomp filter (as Docker's and containerd's default profiles
        /// do) and the default backend: the echo server serves 100 clients byte-exact and the HTTP
        /// server answers pipelined requests, both on the epoll backend, after one warning that
        /// says why; the shutdown summary names the backend.
        @Test(arguments: ["echo", "http"])
        func refusedIOURingFallsBackToEpollAndServes(command: String) throws {
            let server = try RunningRingport(
                executable: "/usr/bin/env",
                denyingIOURingSetup(errno: EPERM) + [try ringportExecutable().path, command, "--port", "0"],
                environment: ["RINGPORT_BACKEND": "auto"])
            defer { if server.process.isRunning { server.process.terminate() } }
            #expect(server.banner.contains("epoll"), "\(server.banner)")

            if command == "echo" {
                EchoLoad(connections: 100, messagesPerConnection: 3, maximumMessageSize: 64 * 1024, seed: 5)
                    .expectCleanRun(against: server.address)
            } else {
                let client = try BlockingClient(connectingTo: server.address, receiveTimeout: .seconds(5))
                defer { client.close() }
                try client.send(Array(String(repeating: "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n", count: 3).utf8))
                let responses = try readResponses(from: client, count: 3)
                #expect(responses.map(\.status) == [200, 200, 200])
                #expect(responses.allSatisfy { $0.body == "Hello, World!" })
            }

            let summary = try server.expectCleanStop()
            #expect(summary.hasPrefix("stopped: epoll backend"), "\(summary)")
            let warnings = server.logLines.all.filter { $0.contains("serves with the epoll backend") }
            #expect(warnings.count == 1, "\(server.logLines.all)")
            #expect(warnings.first?.contains("seccomp") == true)
        }

        /// The server under `ulimit -n 64` with 120 clients: it serves the ones it holds, backs
        /// off while accept fails with EMFILE (logging it once, not spinning), and serves the rest
        /// as the first ones leave.
        @Test func descriptorExhaustionBacksOffAndRecovers() throws {
            let server = try RunningRingport(
                ["echo", "--port", "0", "--workers", "2", "--log-level", "notice"], shellPrefix: "ulimit -n 64")
            let process = server.process
            let logLines = server.logLines
            defer { if process.isRunning { process.terminate() } }
            let address = server.address

            // 120 clients connect (the backlog holds those the server cannot accept yet) and send one byte.
            let clients = try (0..<120).map { _ in
                try BlockingClient(connectingTo: address, receiveTimeout: .milliseconds(100))
            }
            for client in clients { try client.send([42]) }
            var served = Set<Int>()
            for (index, client) in clients.enumerated() where (try? client.receive(count: 1)) == [42] {
                served.insert(index)
            }
            #expect(served.count > 10 && served.count < 64, "served \(served.count) with 64 descriptors")
            #expect(eventually { logLines.all.contains { $0.contains("accept failed") } })

            // While accepting fails, the server waits instead of spinning.
            let statPath = "/proc/\(process.processIdentifier)/stat"
            func cpuTicks() -> Int {
                let fields =
                    ((try? String(contentsOfFile: statPath, encoding: .utf8)) ?? "").split(separator: ")").last?.split(
                        separator: " ") ?? []
                return fields.count > 13 ? (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0) : 0
            }
            let ticksBefore = cpuTicks()
            usleep(1_000_000)
            #expect(cpuTicks() - ticksBefore < 20, "less than 20% of a CPU while accept keeps failing")

            // The served ones leave; the rest are accepted and echoed.
            for index in served { clients[index].close() }
            for (index, client) in clients.enumerated() where !served.contains(index) {
                var echoed: [UInt8] = []
                let deadline = ContinuousClock.now + .seconds(10)
                while echoed.isEmpty && ContinuousClock.now < deadline {
                    echoed = (try? client.receive(count: 1)) ?? []
                }
                #expect(echoed == [42], "client \(index) was served after the others left")
                client.close()
            }
            #expect(eventually { logLines.all.contains { $0.contains("accepting again") } })
            server.terminate()
            #expect(process.terminationStatus == 0)
            // Logged once per episode of failures, not once per failed accept.
            let failures = logLines.all.filter { $0.contains("accept failed") }.count
            let recoveries = logLines.all.filter { $0.contains("accepting again") }.count
            #expect(failures >= 1 && failures <= recoveries + 1)
            let summary = try #require(ShutdownSummary(server.summary))
            let acceptErrors = try #require(summary.values["accept errors"])
            #expect(acceptErrors > failures)
        }

        /// A first SIGTERM waits for a client that does not read (its writes cannot finish); a
        /// second one closes it at once.
        ///
        /// What the server holds when the client's sends stall is not visible from outside: in
        /// rare runs it had sent everything it received into the socket buffers, so the first
        /// signal rightly closed the connection at once. Such an attempt checks that nothing
        /// was lost (every byte received was sent, the shutdown was not forced) and starts over,
        /// up to three times; one attempt must reach the second signal.
        @Test func aSecondSignalForcesTheShutdown() throws {
            for _ in 0..<3 {
                if try firstSignalWaitsForAClientThatDoesNotReadAndASecondOneForces() { return }
            }
            Issue.record("in three attempts, the server never had bytes queued for the client that does not read")
        }

        /// One attempt of ``aSecondSignalForcesTheShutdown()``; false when the server had nothing
        /// queued for the client (checked) and exited on the first signal.
        private func firstSignalWaitsForAClientThatDoesNotReadAndASecondOneForces() throws -> Bool {
            let server = try RunningRingport([
                "echo", "--port", "0", "--grace-period", "30", "--max-write-queue", "65536", "--log-level", "info",
            ])
            let process = server.process
            defer { if process.isRunning { process.terminate() } }
            let hog = try BlockingClient(
                connectingTo: server.address, receiveTimeout: .seconds(2), receiveBufferSize: 16 * 1024)
            defer { hog.close() }
            // Send until two sends in a row make no progress for 2 s each (EAGAIN after the send
            // timeout): every buffer on the way is full and the server, its write queue over the
            // limit, has stopped reading. One stalled send is not enough: a server starved of
            // CPU for a moment stalls it too, and then drains its queue.
            var stalledInARow = 0
            for _ in 0..<64 where stalledInARow < 2 {
                do {
                    try hog.send([UInt8](repeating: 1, count: 1 << 20))
                    stalledInARow = 0
                } catch let error as POSIXError where error.code == .EAGAIN {
                    stalledInARow += 1
                }
            }
            try #require(stalledInARow == 2, "64 MiB went through a client that never reads")

            kill(process.processIdentifier, SIGTERM)
            usleep(500_000)
            if !process.isRunning {
                server.waitUntilExit()
                let log = server.lines.all + server.logLines.all
                let summary = try #require(ShutdownSummary(server.summary))
                #expect(process.terminationStatus == 0)
                #expect(!log.contains { $0.contains("SIGTERM again") || $0.contains("at once") }, "\(log)")
                #expect(summary.line.hasSuffix(" 0 lost"))
                let bytesIn = try #require(summary.values["bytes in"])
                #expect(bytesIn > 0 && summary.values["bytes out"] == bytesIn, "\(summary)")
                return false
            }
            let start = ContinuousClock.now
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
            #expect(ContinuousClock.now - start < .seconds(5))
            #expect(process.terminationStatus == 0)
            #expect(server.summary?.hasSuffix(" 0 lost") == true)
            return true
        }

        @Test func invalidOptionsExitNonZeroWithAMessage() throws {
            let process = Process()
            process.executableURL = try ringportExecutable()
            process.arguments = ["echo", "--port", "0", "--ring-entries", "0"]
            let errors = Pipe()
            process.standardError = errors
            try process.run()
            process.waitUntilExit()
            let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus != 0)
            #expect(message.contains("ringEntries 0"))
        }
    }
}

/// The command line that runs a command with `io_uring_setup` failing with `errno` (a seccomp
/// filter, `Fixtures/deny-io-uring-setup.py`); the command and its arguments follow.
func denyingIOURingSetup(errno: Int32) -> [String] {
    let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/deny-io-uring-setup.py")
    return ["python3", fixture.path, "\(errno)"]
}
