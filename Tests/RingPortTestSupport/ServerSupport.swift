import Foundation
import Glibc
import RingPort
import RingPortServer
import Testing

/// A server configuration on an ephemeral loopback port, logging warnings only.
package func testServerConfiguration() throws -> TCPServer.Configuration {
    var configuration = TCPServer.Configuration(address: try SocketAddress(host: "127.0.0.1", port: 0))
    configuration.port.logger.logLevel = .warning
    configuration.logger.logLevel = .warning
    return configuration
}

/// Starts a server with `handler` (the echo handler by default) on an ephemeral loopback port,
/// runs `body`, and shuts it down.
package func withServer<Result>(
    handler: some ConnectionHandler = EchoHandler(),
    configure: (inout TCPServer.Configuration) -> Void = { _ in },
    _ body: (TCPServer) throws -> Result
) throws -> Result {
    var configuration = try testServerConfiguration()
    configure(&configuration)
    let server = try TCPServer(configuration: configuration, handler: handler)
    try server.start()
    defer { server.shutdown(gracePeriod: .seconds(2)) }
    return try body(server)
}

/// Waits until the server's in-flight operations stop changing (accepts, timers armed) and
/// returns their number.
package func settledOperationsInFlight(_ server: TCPServer) -> Int {
    var last = -1
    for _ in 0..<100 {
        let now = server.portStatistics.operationsInFlight
        if now == last { return now }
        last = now
        usleep(10_000)
    }
    return last
}

/// The ways a server can run: its two receive paths and accept strategies, and the first of them
/// with batched completions.
package enum ServerMode: String, CaseIterable, CustomTestStringConvertible {
    /// `batched`: multishot, with workers taking up to 16 completions at a time.
    case multishot, plain, batched

    /// The two ways of receiving, for tests where batches change nothing.
    package static let receiveModes: [ServerMode] = [.multishot, .plain]

    package func apply(_ configuration: inout TCPServer.Configuration) {
        switch self {
        case .multishot:
            break
        case .plain:
            configuration.port.providedBuffers = nil
            configuration.acceptStrategy = .pool(depth: 8)
        case .batched:
            configuration.completionBatch = 16
        }
    }

    package var testDescription: String { rawValue }
}

/// This process's resident set size in bytes (from /proc/self/statm).
package func residentBytes() -> Int {
    let fields = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8))?.split(separator: " ") ?? []
    return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
}

/// Raises this process's descriptor limit to at least `count` (up to the hard limit).
package func raiseDescriptorLimit(to count: Int) {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    if limit.rlim_cur < rlim_t(count) {
        limit.rlim_cur = min(rlim_t(count), limit.rlim_max)
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}

/// Reads HTTP responses from a socket until `count` have arrived or the peer closes. Returns each
/// response's status code and body; a response cut short is reported as status 0.
package func readResponses(from client: BlockingClient, count: Int) throws -> [(status: Int, body: String)] {
    var buffer: [UInt8] = []
    var responses: [(Int, String)] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while responses.count < count {
        // Parse what is buffered.
        if let headEnd = buffer.indices.dropLast(3).first(where: {
            buffer[$0] == 13 && buffer[$0 + 1] == 10 && buffer[$0 + 2] == 13 && buffer[$0 + 3] == 10
        }) {
            let head = String(decoding: buffer[..<headEnd], as: UTF8.self)
            let status = Int(head.split(separator: " ")[1]) ?? -1
            let length =
                head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
            if buffer.count >= headEnd + 4 + length {
                let body = String(decoding: buffer[(headEnd + 4)..<(headEnd + 4 + length)], as: UTF8.self)
                responses.append((status, body))
                buffer.removeFirst(headEnd + 4 + length)
                continue
            }
        }
        let received = client.receiveSome(into: &chunk)
        if received <= 0 {
            if !buffer.isEmpty { responses.append((0, "")) }
            break
        }
        buffer += chunk[0..<received]
    }
    return responses
}

/// Both ways an injected result can reach the port: from the kernel (`IORING_NOP_INJECT_RESULT`,
/// where this kernel has it) and substituted by the port when it reaps the NOP.
package enum InjectionPath: String, CaseIterable, CustomTestStringConvertible {
    case kernel, port

    package func injection(_ rules: [FaultInjection.Rule], seed: UInt64 = 11) -> FaultInjection {
        switch self {
        case .kernel: FaultInjection(rules: rules, seed: seed)
        case .port: FaultInjection(rules: rules, seed: seed, kernelInjectsResults: false)
        }
    }

    package var testDescription: String { rawValue }
}
