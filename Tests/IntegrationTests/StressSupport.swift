import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import Testing

// Helpers of the "hostile and broken clients" stress suite (StressTests.swift): a `ringport`
// process under test with its descriptor count and resident memory, its shutdown summary, and
// non-blocking loopback clients.

// MARK: The server process

/// What a process holds: open descriptors (entries of /proc/PID/fd) and resident memory (VmRSS).
struct Footprint: CustomStringConvertible {
    var descriptors: Int
    var residentBytes: Int

    init(descriptors: Int, residentBytes: Int) {
        self.descriptors = descriptors
        self.residentBytes = residentBytes
    }

    init(pid: Int32) {
        descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
        residentBytes = -1
        if let line = readProcFile("/proc/\(pid)/status").split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }
        ) {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 2, let kilobytes = Int(fields[1]) { residentBytes = kilobytes * 1024 }
        }
    }

    var residentMiB: String { mebibytes(residentBytes) }

    var description: String { "\(descriptors) fds, RSS \(residentMiB) MiB" }
}

/// Where a process's resident memory is (from /proc/PID/smaps): the provided-buffer region (the
/// smallest anonymous mapping of at least `ringBytes` = `--buffer-count` × `--buffer-size`, 16 MiB
/// by default, plus malloc's header; the kernel touches its pages lazily, as it cycles through the
/// ring), the main heap (`[heap]`), other anonymous memory (malloc's per-thread arenas, thread
/// stacks, large allocations), and file-backed pages (the executable and libraries).
struct MemoryBreakdown: CustomStringConvertible {
    var ringSize = 0
    var ring = 0
    var heap = 0
    var otherAnonymous = 0
    var files = 0

    init(pid: Int32, ringBytes: Int = 1024 * 16384) {
        struct Mapping { var size: Int; var name: Substring; var resident = 0 }
        var mappings: [Mapping] = []
        for line in readProcFile("/proc/\(pid)/smaps").split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if let range = fields.first, range.contains("-"), fields.count >= 5,
                range.allSatisfy({ $0.isHexDigit || $0 == "-" })
            {
                let bounds = range.split(separator: "-").compactMap { Int($0, radix: 16) }
                mappings.append(
                    Mapping(
                        size: bounds.count == 2 ? bounds[1] - bounds[0] : 0, name: fields.count > 5 ? fields[5] : ""))
            } else if fields.first == "Rss:", fields.count >= 2, let kilobytes = Int(fields[1]), !mappings.isEmpty {
                mappings[mappings.count - 1].resident = kilobytes * 1024
            }
        }
        // The kernel may have merged a neighbour into the region: take the smallest candidate.
        let ringIndex = mappings.indices
            .filter {
                mappings[$0].name.isEmpty && mappings[$0].size >= ringBytes && mappings[$0].size < ringBytes + (4 << 20)
            }
            .min { mappings[$0].size < mappings[$1].size }
        for (index, mapping) in mappings.enumerated() {
            if index == ringIndex {
                ringSize = mapping.size
                ring = mapping.resident
            } else if mapping.name == "[heap]" {
                heap += mapping.resident
            } else if mapping.name.isEmpty || mapping.name.hasPrefix("[") {
                otherAnonymous += mapping.resident
            } else {
                files += mapping.resident
            }
        }
    }

    var description: String {
        """
        provided-buffer region \(mebibytes(ring)) of \(mebibytes(ringSize)) MiB, [heap] \(mebibytes(heap)), other \
        anonymous \(mebibytes(otherAnonymous)), files \(mebibytes(files)) MiB resident
        """
    }
}

/// A /proc file's whole text ("" if it cannot be read). `String(contentsOfFile:)` stops after
/// the first 4 KiB of a /proc file, whose size reads as 0.
func readProcFile(_ path: String) -> String {
    guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
    defer { try? handle.close() }
    return String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
}

/// The memory of the machine's TCP sockets, in bytes ("TCP: ... mem" of /proc/net/sockstat, in pages).
func kernelTCPMemory() -> Int {
    let line = readProcFile("/proc/net/sockstat").split(separator: "\n").first { $0.hasPrefix("TCP:") } ?? ""
    let fields = line.split(separator: " ")
    guard let index = fields.firstIndex(of: "mem"), index + 1 < fields.count, let pages = Int(fields[index + 1]) else {
        return -1
    }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExtListenOverflows` in /proc/net/netstat, for this network namespace): their handshake's
/// last ACK was dropped, and a client that then resets never reaches `accept`.
func listenQueueOverflows() -> Int {
    let lines = readProcFile("/proc/net/netstat").split(separator: "\n").filter { $0.hasPrefix("TcpExt:") }
    guard lines.count >= 2 else { return 0 }
    let names = lines[0].split(separator: " ")
    let values = lines[1].split(separator: " ")
    guard let index = names.firstIndex(of: "ListenOverflows"), index < values.count else { return 0 }
    return Int(values[index]) ?? 0
}

/// Samples a process's footprint every 2 ms on a thread of its own, keeping the peak descriptor
/// count and resident memory, until ``stop()``.
final class PeakSampler: @unchecked Sendable {
    // @unchecked: the peaks are behind a lock.
    private let peaks = LockedBox((descriptors: 0, residentBytes: 0, running: true))

    init(pid: Int32) {
        let peaks = self.peaks
        Thread {
            while peaks.withLock({ $0.running }) {
                let now = Footprint(pid: pid)
                peaks.withLock {
                    $0.descriptors = max($0.descriptors, now.descriptors)
                    $0.residentBytes = max($0.residentBytes, now.residentBytes)
                }
                usleep(2_000)
            }
            peaks.withLock { $0.running = true }
        }.start()
    }

    /// Stops sampling and returns the peaks.
    func stop() -> Footprint {
        peaks.withLock { $0.running = false }
        _ = eventually(timeout: .seconds(2)) { peaks.withLock { $0.running } }
        return peaks.withLock { Footprint(descriptors: $0.descriptors, residentBytes: $0.residentBytes) }
    }
}

/// `bytes` in MiB with one decimal.
func mebibytes(_ bytes: Int) -> String {
    String(format: "%.1f", Double(bytes) / 1_048_576)
}

/// The `stopped: ...` line `ringport` prints at shutdown, as numbers by name ("connections
/// served", "refused", "accept errors", "idle timeouts", "bytes in", "bytes out", "completions",
/// "io_uring_enter calls", "leader takeovers", "buffer exhaustions", "backpressure pauses", "lost").
struct ShutdownSummary: CustomStringConvertible {
    let line: String
    let values: [String: Int]

    init?(_ line: String?) {
        guard let line, line.hasPrefix("stopped: ") else { return nil }
        self.line = line
        var values: [String: Int] = [:]
        for part in line.dropFirst("stopped: ".count).split(separator: ",") {
            let words = part.split(separator: " ")
            guard let first = words.first, let number = Int(first) else { continue }
            values[words.dropFirst().joined(separator: " ")] = number
        }
        self.values = values
    }

    subscript(_ name: String) -> Int { values[name] ?? -1 }

    var description: String { line }
}

/// A `ringport echo` or `ringport http` process started for one stress case (through
/// ``RunningRingport``, so the executable is the one built next to the test bundle, in the same
/// scratch path), with the means to measure it, check it still answers, and stop it.
final class StressServer: @unchecked Sendable {
    // @unchecked: the fields are immutable except `connectionsOpened`, which is behind a lock.
    enum Kind: String { case echo, http }

    let kind: Kind
    let ringport: RunningRingport
    let pid: Int32
    let address: SocketAddress
    private let opened = LockedBox(0)

    /// Starts `ringport <kind> --port 0 ...` with `options` added (after `shellPrefix`, e.g. a
    /// `ulimit`, when given).
    init(_ kind: Kind, _ options: [String] = [], shellPrefix: String? = nil) throws {
        self.kind = kind
        ringport = try RunningRingport(
            [kind.rawValue, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning", "--grace-period", "5"]
                + options,
            shellPrefix: shellPrefix)
        pid = ringport.process.processIdentifier
        address = ringport.address
    }

    deinit {
        // A case that threw or failed half-way leaves no server behind.
        if ringport.process.isRunning {
            kill(pid, SIGKILL)
            ringport.process.waitUntilExit()
        }
    }

    var port: UInt16 { address.port }

    var isRunning: Bool { ringport.process.isRunning }

    var footprint: Footprint { Footprint(pid: pid) }

    /// Connections the test opened to this server (every helper here counts them), for the
    /// summary's "connections served" + "refused".
    var connectionsOpened: Int { opened.withLock { $0 } }

    func countConnections(_ count: Int = 1) {
        opened.withLock { $0 += count }
    }

    /// A new connection to the server (counted), blocking or not.
    func connect(
        receiveBufferSize: Int32? = nil, sendBufferSize: Int32? = nil, maximumSegmentSize: Int32? = nil,
        nonBlocking: Bool = false
    ) throws -> Int32 {
        let descriptor = try connectLoopback(
            port: port, receiveBufferSize: receiveBufferSize, sendBufferSize: sendBufferSize,
            maximumSegmentSize: maximumSegmentSize, nonBlocking: nonBlocking)
        countConnections()
        return descriptor
    }

    /// Waits until the server holds no more descriptors than `baseline` (connections closed), then
    /// until its resident memory is within 10% of `baseline`'s, and returns the last reading.
    func settle(
        toward baseline: Footprint, descriptorTimeout: Duration = .seconds(10), memoryTimeout: Duration = .seconds(5)
    ) -> Footprint {
        var last = footprint
        _ = eventually(timeout: descriptorTimeout) {
            last = footprint
            return last.descriptors <= baseline.descriptors
        }
        _ = eventually(timeout: memoryTimeout) {
            last = footprint
            return last.residentBytes <= baseline.residentBytes + baseline.residentBytes / 10
        }
        return last
    }

    /// What every case does once its load is over: a fresh client is served, the server settles
    /// back toward `baseline`, the outcome line (`name`, `details()` — evaluated after settling)
    /// is printed, descriptors and RSS are checked against `start` and `baseline`, and the server
    /// is stopped with SIGTERM. Returns its shutdown summary, for the case's own checks.
    func conclude(
        _ name: String, start: Footprint, baseline: Footprint, peak: Footprint? = nil, elapsed: Duration,
        sourceLocation: SourceLocation = #_sourceLocation, details: () -> String
    ) -> ShutdownSummary? {
        expectAnswersAFreshClient(sourceLocation: sourceLocation)
        let end = settle(toward: baseline)
        reportStressOutcome(
            name, details(), start: start, baseline: baseline, peak: peak, end: end, elapsed: elapsed, pid: pid)
        expectSettled(start: start, baseline: baseline, end: end, sourceLocation: sourceLocation)
        return stop(sourceLocation: sourceLocation)
    }

    /// A fresh client is served: 4 KiB echoed exactly (echo), or `GET /plaintext` answered 200
    /// `Hello, World!` (http). Records an issue and returns false otherwise.
    @discardableResult
    func expectAnswersAFreshClient(sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        #expect(isRunning, "the server is alive", sourceLocation: sourceLocation)
        do {
            let client = try BlockingClient(connectingTo: address, receiveTimeout: .seconds(5))
            countConnections()
            defer { client.close() }
            switch kind {
            case .echo:
                let bytes = stressPayload(count: 4096, seed: UInt64(connectionsOpened))
                try client.send(bytes)
                let echoed = try client.receive(count: bytes.count)
                #expect(echoed == bytes, "a fresh client's 4 KiB were echoed exactly", sourceLocation: sourceLocation)
                return echoed == bytes
            case .http:
                try client.send(Array("GET /plaintext HTTP/1.1\r\nHost: stress\r\n\r\n".utf8))
                let responses = try readResponses(from: client, count: 1)
                let ok = responses.count == 1 && responses[0].status == 200 && responses[0].body == "Hello, World!"
                #expect(ok, "a fresh client got 200 Hello, World!: \(responses)", sourceLocation: sourceLocation)
                return ok
            }
        } catch {
            Issue.record("a fresh client was not served: \(error)", sourceLocation: sourceLocation)
            return false
        }
    }

    /// Sends SIGTERM, waits up to 30 s for the exit (then SIGKILL), and expects exit status 0, a
    /// summary line, and no log line at level error or critical. Returns the summary.
    func stop(sourceLocation: SourceLocation = #_sourceLocation) -> ShutdownSummary? {
        let process = ringport.process
        kill(pid, SIGTERM)
        if !eventually(timeout: .seconds(30), { !process.isRunning }) {
            Issue.record("ringport did not exit within 30 s of SIGTERM", sourceLocation: sourceLocation)
            kill(pid, SIGKILL)
        }
        process.waitUntilExit()
        #expect(process.terminationReason == .exit, "exited, not killed by a signal", sourceLocation: sourceLocation)
        #expect(process.terminationStatus == 0, "exit status 0", sourceLocation: sourceLocation)
        let summary = ShutdownSummary(ringport.summary)
        print("STRESS   \(kind) server \(summary?.line ?? "printed no summary")")
        #expect(
            summary != nil, "a stopped: summary line; output: \(ringport.lines.all)", sourceLocation: sourceLocation)
        let errors = ringport.logLines.all.filter { $0.contains(" error ") || $0.contains(" critical ") }
        #expect(errors.isEmpty, "no error logged: \(errors.prefix(5))", sourceLocation: sourceLocation)
        return summary
    }

    /// Expects the summary's counts: `served` connections, `refused`, `idleTimeouts`, nothing
    /// lost, no accept error.
    func expectSummary(
        _ summary: ShutdownSummary?, served: Int, refused: Int = 0, idleTimeouts: Int = 0,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        guard let summary else { return }
        #expect(summary["connections served"] == served, "\(summary)", sourceLocation: sourceLocation)
        #expect(summary["refused"] == refused, "\(summary)", sourceLocation: sourceLocation)
        #expect(summary["idle timeouts"] == idleTimeouts, "\(summary)", sourceLocation: sourceLocation)
        #expect(summary["accept errors"] == 0, "\(summary)", sourceLocation: sourceLocation)
        #expect(summary["lost"] == 0, "\(summary)", sourceLocation: sourceLocation)
    }
}

/// Prints the one-line outcome of a stress case and returns it.
@discardableResult
func reportStressOutcome(
    _ name: String, _ details: String, start: Footprint, baseline: Footprint, peak: Footprint? = nil, end: Footprint,
    elapsed: Duration, pid: Int32? = nil
) -> String {
    var line = "STRESS \(name): \(details); fds \(start.descriptors)→\(end.descriptors)"
    line += ", RSS \(baseline.residentMiB)→\(end.residentMiB) MiB (at start \(start.residentMiB)"
    if let peak { line += ", peak \(peak.residentMiB)" }
    line += "); \(String(format: "%.2f", elapsed.stressSeconds)) s"
    if let pid {
        line += "; \(MemoryBreakdown(pid: pid))"
    }
    print(line)
    return line
}

extension Duration {
    var stressSeconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// Expects `end` to hold no descriptor more than `start` and at most 10% more memory than
/// `baseline` (the reading after the warm-up).
func expectSettled(
    start: Footprint, baseline: Footprint, end: Footprint, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(
        end.descriptors <= start.descriptors, "descriptors \(start.descriptors)→\(end.descriptors)",
        sourceLocation: sourceLocation)
    #expect(
        end.residentBytes <= baseline.residentBytes + baseline.residentBytes / 10,
        "RSS \(baseline.residentMiB)→\(end.residentMiB) MiB: more than 10% above the baseline after the warm-up",
        sourceLocation: sourceLocation)
}

// MARK: Clients

/// Connects a new TCP socket to 127.0.0.1:`port` (blocking), with `SO_RCVBUF`, `SO_SNDBUF` and
/// `TCP_MAXSEG` set before the connect when given (so that they hold from the start: a small MSS
/// keeps the server's send buffer, which the kernel sizes in segments, small too), optionally
/// non-blocking after.
func connectLoopback(
    port: UInt16, receiveBufferSize: Int32? = nil, sendBufferSize: Int32? = nil, maximumSegmentSize: Int32? = nil,
    nonBlocking: Bool = false
) throws -> Int32 {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    if var size = receiveBufferSize {
        setsockopt(descriptor, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    if var size = sendBufferSize {
        setsockopt(descriptor, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    if var size = maximumSegmentSize {
        setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_MAXSEG, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    var result: Int32 = -1
    repeat {
        result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
    } while result != 0 && errno == EINTR
    guard result == 0 else {
        let error = errno
        Glibc.close(descriptor)
        throw POSIXError(POSIXErrorCode(rawValue: error) ?? .EIO)
    }
    if nonBlocking {
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
    }
    return descriptor
}

func setReceiveTimeout(_ descriptor: Int32, _ timeout: Duration) {
    let (seconds, attoseconds) = timeout.components
    var value = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
}

/// Closes `descriptor` with a reset (SO_LINGER 0) instead of a FIN.
func resetAndClose(_ descriptor: Int32) {
    var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
    setsockopt(descriptor, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    Glibc.close(descriptor)
}

/// `count` deterministic pseudo-random bytes from `seed`.
func stressPayload(count: Int, seed: UInt64) -> [UInt8] {
    SeededGenerator(state: seed &* 0x9E37_79B9_7F4A_7C15 &+ 1).bytesArray(count: count)
}

/// A 64-bit checksum of `bytes` (FNV-1a over 8-byte words, then the tail bytes).
func stressChecksum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    var index = 0
    while index + 8 <= bytes.count {
        hash = (hash ^ bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)) &* 0x0000_0100_0000_01B3
        index += 8
    }
    while index < bytes.count {
        hash = (hash ^ UInt64(bytes[index])) &* 0x0000_0100_0000_01B3
        index += 1
    }
    return hash
}

func stressChecksum(_ bytes: [UInt8]) -> UInt64 {
    bytes.withUnsafeBytes { stressChecksum($0) }
}

/// One non-blocking echo connection driven by a poll loop: sends `payload` (up to `sendLimit`),
/// and checks every byte that comes back against it, in order.
final class EchoSession {
    let descriptor: Int32
    let payload: [UInt8]
    /// Bytes to send at most (the payload's size unless the case cuts it short).
    var sendLimit: Int
    var sent = 0
    /// Bytes echoed and found equal to the payload.
    var verified = 0
    /// The offset of the first byte echoed wrongly.
    var mismatchAt: Int?
    var endOfStream = false
    /// errno of a receive or send that failed (other than EAGAIN / EINTR).
    var failure: Int32 = 0
    var writeShutDown = false
    var closed = false
    /// Copies of the echoed bytes, when the case wants them (for a checksum of what came back).
    var echoed: [UInt8]?
    var lastSendProgress = ContinuousClock.now

    init(descriptor: Int32, payload: [UInt8], sendLimit: Int? = nil, keepEchoed: Bool = false) {
        self.descriptor = descriptor
        self.payload = payload
        self.sendLimit = min(sendLimit ?? payload.count, payload.count)
        if keepEchoed {
            echoed = []
            echoed?.reserveCapacity(payload.count)
        }
    }

    var allSent: Bool { sent >= sendLimit }
    var allEchoed: Bool { verified == payload.count }
    var isBroken: Bool { mismatchAt != nil }

    /// Sends what the socket takes, at most `chunk` bytes per system call and `budget` bytes in
    /// all, until it would block.
    @discardableResult
    func sendSome(chunk: Int = 256 * 1024, budget: Int = .max) -> Int {
        var total = 0
        while sent < sendLimit && !closed && total < budget {
            let count = min(chunk, sendLimit - sent)
            let result = payload.withUnsafeBytes {
                send(descriptor, $0.baseAddress! + sent, count, Int32(MSG_NOSIGNAL))
            }
            if result > 0 {
                sent += result
                total += result
                lastSendProgress = .now
                continue
            }
            if result < 0 && errno == EINTR { continue }
            if result < 0 && errno != EAGAIN { failure = errno }
            break
        }
        return total
    }

    /// Receives until the socket would block (or the end of stream), checking each byte.
    @discardableResult
    func receiveSome(into buffer: inout [UInt8]) -> Int {
        var total = 0
        while !closed && !endOfStream {
            let result = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
            if result > 0 {
                let matches =
                    verified + result <= payload.count
                    && buffer.withUnsafeBytes { received in
                        payload.withUnsafeBytes {
                            memcmp(received.baseAddress!, $0.baseAddress! + verified, result) == 0
                        }
                    }
                if !matches {
                    if mismatchAt == nil { mismatchAt = verified }
                    return total
                }
                echoed?.append(contentsOf: buffer[0..<result])
                verified += result
                total += result
                continue
            }
            if result == 0 {
                endOfStream = true
            } else if errno == EINTR {
                continue
            } else if errno != EAGAIN {
                failure = errno
            }
            break
        }
        return total
    }

    func shutdownWrite() {
        if !writeShutDown && !closed {
            writeShutDown = true
            shutdown(descriptor, Int32(SHUT_WR))
        }
    }

    func close(reset: Bool = false) {
        guard !closed else { return }
        closed = true
        if reset { resetAndClose(descriptor) } else { Glibc.close(descriptor) }
    }
}

/// Polls `sessions` (their descriptors, for reading when `wantsRead` and for writing when
/// `wantsWrite`) and calls `service` for every open one after each wake-up (with its events, maybe
/// none), until `done` or the deadline. Returns whether `done` held.
func pollSessions(
    _ sessions: [EchoSession], deadline: ContinuousClock.Instant, timeoutMilliseconds: Int32 = 50,
    wantsRead: (EchoSession) -> Bool = { _ in true }, wantsWrite: (EchoSession) -> Bool,
    service: (EchoSession, Int16) -> Void, done: () -> Bool
) -> Bool {
    while !done() {
        if ContinuousClock.now >= deadline { return false }
        let active = sessions.filter { !$0.closed }
        var descriptors = active.map { session -> pollfd in
            var events: Int16 = 0
            if wantsRead(session) { events |= Int16(POLLIN) }
            if wantsWrite(session) { events |= Int16(POLLOUT) }
            return pollfd(fd: session.descriptor, events: events, revents: 0)
        }
        let ready = poll(&descriptors, nfds_t(descriptors.count), timeoutMilliseconds)
        if ready < 0 && errno != EINTR { return false }
        // Every session is serviced, also without events, so that the case can act on time.
        for (index, session) in active.enumerated() {
            service(session, descriptors[index].revents)
        }
    }
    return true
}

/// Runs `body(0..<count)` on `count` threads of their own and waits for all of them.
func runOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let finished = LockedBox(0)
    for index in 0..<count {
        let thread = Thread {
            body(index); finished.withLock { $0 += 1 }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    while finished.withLock({ $0 }) < count {
        usleep(1_000)
    }
}

/// Raises this process's descriptor limit (soft) for the clients of a case; the server process
/// inherits it.
func raiseDescriptorLimitForStress() {
    raiseDescriptorLimit(to: 16_384)
}
