import Foundation
import Glibc
import RingPort
import RingPortServer
import RingPortTestSupport
import Synchronization
import Testing

/// One finished `ringport load` process: its exit status, standard output and standard error.
struct FinishedLoad {
    let status: Int32
    let output: String
    let errors: String

    /// Runs `ringport load <arguments>` (the executable built next to the tests) to its end and
    /// collects what it printed. The tool stops by itself; past `timeout` it is killed (and the
    /// test fails on the status).
    init(_ arguments: [String], timeout: Duration = .seconds(30)) throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("ringport-load-\(getpid())-\(UInt64.random(in: 0...UInt64.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let outputURL = directory.appendingPathComponent("stdout")
        let errorsURL = directory.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: outputURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errorsURL.path, contents: nil)
        let outputFile = try FileHandle(forWritingTo: outputURL)
        let errorsFile = try FileHandle(forWritingTo: errorsURL)

        let process = Process()
        process.executableURL = try ringportExecutable()
        process.arguments = ["load"] + arguments
        process.standardOutput = outputFile
        process.standardError = errorsFile
        try process.run()
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline {
            usleep(10_000)
        }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
        try outputFile.close()
        try errorsFile.close()
        status = process.terminationReason == .exit ? process.terminationStatus : -process.terminationStatus
        output = try String(contentsOf: outputURL, encoding: .utf8)
        errors = try String(contentsOf: errorsURL, encoding: .utf8)
    }

    /// Standard output parsed as the one JSON object `--json` prints, or nil.
    var json: [String: Any]? {
        guard let data = output.data(using: .utf8) else { return nil }
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    }
}

/// An echo handler that flips the lowest bit of one byte: the byte at `position` of everything
/// the server receives (over all connections, in the order it handles them).
final class FlipOneByteEcho: ConnectionHandler {
    let position: Int
    private let received = Atomic<Int>(0)

    init(position: Int) {
        self.position = position
    }

    func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        let start = received.wrappingAdd(bytes.count, ordering: .relaxed).oldValue
        guard start <= position && position < start + bytes.count else {
            connection.write(bytes)
            return
        }
        var copy = bytes.bytes
        copy[position - start] ^= 0x01
        connection.write(copy)
    }
}

/// An echo handler that closes each connection once it has echoed `limit` bytes or more.
struct CloseAfterEcho: ConnectionHandler {
    let limit: Int

    func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        connection.write(bytes)
        let echoed = (connection.userState as? Int ?? 0) + bytes.count
        connection.userState = echoed
        if echoed >= limit { connection.close() }
    }
}

/// The keys `Benchmarks/c/echo_load.c --json` prints, which `ringport load --json` must print too.
let echoLoadJSONKeys = [
    "msgs/s", "MB/s", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "errors", "msgs", "connections", "size",
    "depth", "duration_s",
]

extension IntegrationTests {
    @Suite struct LoadCommandTests {
        /// Against `ringport echo`: no error, messages counted, percentiles in order, the
        /// run's shape echoed back, echo_load's keys on one line.
        @Test func loadAgainstTheEchoServerVerifiesEveryMessage() throws {
            let server = try RunningRingport(["echo", "--port", "0", "--log-level", "warning"])
            defer { if server.process.isRunning { server.process.terminate() } }

            let load = try FinishedLoad([
                "--port", "\(server.address.port)", "--json", "--duration", "1", "--warmup", "0",
                "--connections", "8", "--depth", "4",
            ])
            #expect(load.status == 0, "\(load.errors)")
            #expect(load.output.split(separator: "\n").count == 1, "one line: \(load.output)")
            let json = try #require(load.json, "\(load.output)")
            for key in echoLoadJSONKeys {
                #expect(json[key] is NSNumber, "key \(key) in \(load.output)")
            }
            let number = { (key: String) in (json[key] as? NSNumber)?.doubleValue ?? -1 }
            #expect(number("errors") == 0)
            #expect(number("msgs") > 0)
            #expect(number("msgs/s") > 0)
            #expect(number("p50_us") > 0)
            #expect(number("p90_us") >= number("p50_us"))
            #expect(number("p99_us") >= number("p90_us"))
            #expect(number("p999_us") >= number("p99_us"))
            #expect(number("max_us") >= number("p999_us"))
            #expect(number("connections") == 8)
            #expect(number("depth") == 4)
            #expect(number("size") == 128)
            #expect(number("duration_s") == 1)
            #expect(number("mismatched_bytes") == 0)
            // MB/s is the payload one way, in 10^6 bytes.
            #expect(abs(number("MB/s") - number("msgs/s") * 128 / 1e6) < 0.01)

            server.terminate()
            #expect(server.process.terminationStatus == 0)
        }

        /// The readable report (without --json), messages larger than the send buffer, a warm-up,
        /// two workers, single receives and --progress: several lines, a progress line, no error.
        @Test func readableReportWithLargeMessagesAndWarmup() throws {
            let server = try RunningRingport(["echo", "--port", "0", "--log-level", "warning"])
            defer { if server.process.isRunning { server.process.terminate() } }

            let load = try FinishedLoad([
                "--port", "\(server.address.port)", "--duration", "0.9", "--warmup", "0.3",
                "--connections", "4", "--size", "300000", "--depth", "2", "--workers", "2", "--receive", "single",
                "--progress",
            ])
            #expect(load.status == 0, "\(load.errors)")
            #expect(load.output.contains("messages"), "\(load.output)")
            #expect(load.output.contains("latency µs  p50"), "\(load.output)")
            #expect(load.output.contains("errors      0"), "\(load.output)")
            #expect(load.errors.contains("4 connections to \(server.address)"), "\(load.errors)")
            #expect(load.errors.contains("ringport load: 1 s: "), "a progress line: \(load.errors)")
            server.terminate()
        }

        /// One byte flipped by the server in the whole run is one corrupted message: exit 2. With
        /// either way of receiving (multishot receive needs the io_uring backend, whichever
        /// backend the tests run on).
        @Test(arguments: ["multishot", "single"])
        func oneCorruptedByteIsCountedAndExitsTwo(receive: String) throws {
            try withServer(handler: FlipOneByteEcho(position: 5000)) { server in
                let load = try FinishedLoad(
                    [
                        "--port", "\(server.localAddress.port)", "--json", "--duration", "1", "--warmup", "0",
                        "--connections", "2", "--quiet", "--receive", receive,
                    ] + (receive == "multishot" ? ["--backend", "io_uring"] : []))
                #expect(load.status == 2, "\(load.errors)")
                let json = try #require(load.json, "\(load.output)")
                #expect(json["receive"] as? String == receive)
                #expect((json["errors"] as? NSNumber)?.intValue == 1)
                #expect((json["corrupted_msgs"] as? NSNumber)?.intValue == 1)
                #expect((json["mismatched_bytes"] as? NSNumber)?.intValue == 1)
                #expect(((json["msgs"] as? NSNumber)?.intValue ?? 0) > 0)
                #expect(load.errors.contains("1 corrupted bytes received"), "\(load.errors)")
            }
        }

        /// A server that closes the connections after ten messages: each is an error, the run
        /// ends early with what it measured, exit 2.
        @Test func connectionsClosedByTheServerAreErrors() throws {
            try withServer(handler: CloseAfterEcho(limit: 1280)) { server in
                let start = ContinuousClock.now
                let load = try FinishedLoad([
                    "--port", "\(server.localAddress.port)", "--json", "--duration", "5", "--warmup", "0",
                    "--connections", "3", "--quiet",
                ])
                #expect(ContinuousClock.now - start < .seconds(4), "stops when no connection is left")
                #expect(load.status == 2, "\(load.errors)")
                let json = try #require(load.json, "\(load.output)")
                // A close with unread bytes is a reset rather than an end of stream: either counts.
                let closes = (json["premature_closes"] as? NSNumber)?.intValue ?? 0
                let resets = (json["socket_errors"] as? NSNumber)?.intValue ?? 0
                #expect(closes + resets == 3, "\(load.output)")
                #expect((json["errors"] as? NSNumber)?.intValue == 3)
                #expect(((json["msgs"] as? NSNumber)?.intValue ?? 0) >= 3 * 9, "the echoes before the close count")
                #expect(
                    load.errors.contains("server closed the connection") || load.errors.contains("Connection reset"),
                    "\(load.errors)")
            }
        }

        /// Nothing listens on the port: a set-up error, exit 1, with the address and the cause.
        @Test func unreachablePortExitsOneWithAMessage() throws {
            // A port bound but not listening refuses connections, and nobody else can take it meanwhile.
            let descriptor = try TCPSocket.makeSocket(family: AF_INET)
            defer { close(descriptor) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            try #require(result == 0)
            let port = try TCPSocket.localAddress(of: descriptor).port

            let load = try FinishedLoad(["--port", "\(port)", "--json", "--duration", "1", "--warmup", "0"])
            #expect(load.status == 1)
            #expect(load.output.isEmpty, "no report: \(load.output)")
            #expect(load.errors.contains("connect 127.0.0.1:\(port)"), "\(load.errors)")
            #expect(load.errors.contains("Connection refused"), "\(load.errors)")
        }

        /// Usage errors exit 1 as echo_load's do, with a message.
        @Test(arguments: [
            (["--port", "9", "--connections", "20001"], "refusing 20001 connections (maximum 20000)"),
            (["--connections", "8"], "--port"),
            (["--port", "9", "--depth", "0"], "--depth"),
            (["--port", "9", "--duration", "0"], "--duration"),
        ])
        func usageErrorsExitOne(arguments: [String], message: String) throws {
            let load = try FinishedLoad(arguments)
            #expect(load.status == 1)
            #expect(load.errors.contains(message), "\(load.errors)")
            #expect(load.output.isEmpty)
        }

        /// `--help` lists every option.
        @Test func helpListsEveryOption() throws {
            let load = try FinishedLoad(["--help"])
            #expect(load.status == 0)
            for option in [
                "--host", "--port", "--connections", "--size", "--depth", "--duration", "--warmup", "--workers",
                "--connect-timeout", "--receive", "--json", "--progress", "--quiet",
            ] {
                #expect(load.output.contains(option), "\(option) in --help")
            }
        }
    }
}
