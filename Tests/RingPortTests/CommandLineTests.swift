import Foundation
import RingPort
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The `ringport` executable built next to the test bundle.
func ringportExecutable() throws -> URL {
    let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    let executable = directory.appendingPathComponent("ringport")
    guard FileManager.default.isExecutableFile(atPath: executable.path) else {
        throw POSIXError(.ENOENT, userInfo: [NSLocalizedDescriptionKey: "\(executable.path) not built: run `swift build` first"])
    }
    return executable
}

/// Reads a pipe line by line on a background queue.
final class LineReader: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    private var partial = ""

    init(_ pipe: Pipe) {
        pipe.fileHandleForReading.readabilityHandler = { [self] handle in
            let data = handle.availableData
            lock.lock()
            defer { lock.unlock() }
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
}

extension RingPortTests {
    @Suite struct CommandLineTests {
        @Test func echoCommandServesTwoHundredClientsAndStopsCleanly() throws {
            let process = Process()
            process.executableURL = try ringportExecutable()
            process.arguments = ["echo", "--host", "127.0.0.1", "--port", "0", "--workers", "6", "--log-level", "warning"]
            let output = Pipe()
            process.standardOutput = output
            let lines = LineReader(output)
            try process.run()
            defer { if process.isRunning { process.terminate() } }

            #expect(eventually { lines.all.contains { $0.contains("listening on") } })
            let banner = try #require(lines.all.first { $0.contains("listening on") })
            #expect(banner.contains("6 workers"))
            let portText = try #require(banner.split(separator: " ").first { $0.hasPrefix("127.0.0.1:") })
            let port = try #require(UInt16(portText.dropFirst("127.0.0.1:".count)))

            EchoLoad(connections: 200, messagesPerConnection: 3, maximumMessageSize: 64 * 1024, seed: 99)
                .expectCleanRun(against: try SocketAddress(host: "127.0.0.1", port: port))

            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
            #expect(process.terminationReason == .exit)
            #expect(process.terminationStatus == 0)
            #expect(eventually { lines.all.contains { $0.hasPrefix("stopped:") } })
            let summary = try #require(lines.all.first { $0.hasPrefix("stopped:") })
            #expect(summary.contains("200 connections served"))
            #expect(summary.hasSuffix(" 0 lost"))
        }

        /// io_uring_setup denied by a seccomp filter, as container runtimes do: the command names
        /// the cause and the fix and exits 1 without starting anything.
        @Test(arguments: [(EPERM, "seccomp"), (ENOSYS, "does not provide io_uring"), (ENOMEM, "ulimit -l")])
        func refusedIOURingIsReportedWithCauseAndFix(errno: Int32, cause: String) throws {
            let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("Fixtures/deny-io-uring-setup.py")
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", fixture.path, "\(errno)", try ringportExecutable().path, "echo", "--port", "0"]
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

        /// The server under `ulimit -n 64` with 120 clients: it serves the ones it holds, backs
        /// off while accept fails with EMFILE (logging it once, not spinning), and serves the rest
        /// as the first ones leave.
        @Test func descriptorExhaustionBacksOffAndRecovers() throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "ulimit -n 64 && exec \"$0\" echo --port 0 --workers 2 --log-level notice", try ringportExecutable().path]
            let output = Pipe()
            let errors = Pipe()
            process.standardOutput = output
            process.standardError = errors
            let lines = LineReader(output)
            let logLines = LineReader(errors)
            try process.run()
            defer { if process.isRunning { process.terminate() } }
            #expect(eventually { lines.all.contains { $0.contains("listening on") } })
            let banner = try #require(lines.all.first { $0.contains("listening on") })
            let portText = try #require(banner.split(separator: " ").first { $0.hasPrefix("127.0.0.1:") })
            let address = try SocketAddress(host: "127.0.0.1", port: #require(UInt16(portText.dropFirst("127.0.0.1:".count))))

            // 120 clients connect (the backlog holds those the server cannot accept yet) and send one byte.
            let clients = try (0..<120).map { _ in try BlockingClient(connectingTo: address, receiveTimeout: .milliseconds(100)) }
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
                let fields = ((try? String(contentsOfFile: statPath, encoding: .utf8)) ?? "").split(separator: ")").last?.split(separator: " ") ?? []
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
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
            #expect(process.terminationStatus == 0)
            // Logged once per episode of failures, not once per failed accept.
            let failures = logLines.all.filter { $0.contains("accept failed") }.count
            let recoveries = logLines.all.filter { $0.contains("accepting again") }.count
            #expect(failures >= 1 && failures <= recoveries + 1)
            let summary = try #require(lines.all.first { $0.hasPrefix("stopped:") })
            let acceptErrors = try #require(summary.split(separator: ",").first { $0.contains("accept errors") }
                .flatMap { Int($0.split(separator: " ")[0]) })
            #expect(acceptErrors > failures)
        }

        /// A first SIGTERM waits for a client that does not read (its writes cannot finish); a
        /// second one closes it at once.
        @Test func aSecondSignalForcesTheShutdown() throws {
            let process = Process()
            process.executableURL = try ringportExecutable()
            process.arguments = ["echo", "--port", "0", "--grace-period", "30", "--max-write-queue", "65536", "--log-level", "warning"]
            let output = Pipe()
            process.standardOutput = output
            let lines = LineReader(output)
            try process.run()
            defer { if process.isRunning { process.terminate() } }
            #expect(eventually { lines.all.contains { $0.contains("listening on") } })
            let banner = try #require(lines.all.first { $0.contains("listening on") })
            let portText = try #require(banner.split(separator: " ").first { $0.hasPrefix("127.0.0.1:") })
            let address = try SocketAddress(host: "127.0.0.1", port: #require(UInt16(portText.dropFirst("127.0.0.1:".count))))
            let hog = try BlockingClient(connectingTo: address, receiveTimeout: .seconds(1))
            var small: Int32 = 16 * 1024
            setsockopt(hog.descriptor, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            for _ in 0..<8 { _ = try? hog.send([UInt8](repeating: 1, count: 1 << 20)) }

            kill(process.processIdentifier, SIGTERM)
            usleep(500_000)
            #expect(process.isRunning, "the first signal waits for the connection to finish")
            let start = ContinuousClock.now
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
            #expect(ContinuousClock.now - start < .seconds(5))
            #expect(process.terminationStatus == 0)
            #expect(eventually { lines.all.contains { $0.hasPrefix("stopped:") && $0.hasSuffix(" 0 lost") } })
            hog.close()
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
