// The properties of HTTPRequestParser that its fuzz target (Fuzz/HTTPRequestParser, run with
// Fuzz/run.sh, which compiles this file through a link) and its regression tests
// (HTTPParserFuzzRegressionTests) check on every input. It uses only the parser's public API
// and the standard library (and SeededGenerator.swift), so the fuzzer can build it against the
// parser file alone.

import RingPortHTTP

// SeededGenerator: from the test support module in the tests, compiled into the fuzz target itself.
#if canImport(RingPortTestSupport)
import RingPortTestSupport
#endif

/// The properties of `HTTPRequestParser` that the fuzzer and the regression tests check.
///
/// An input is parsed under each of ``limitSets``: in one chunk, byte by byte, in two chunks
/// split at given points, and in chunks split at pseudo-random points derived from the input
/// (with empty chunks, and a copy of the parser taken midway and fed the same rest). Checked:
///
/// 1. Every split gives the same requests, the same error and the same `hasPartialRequest` as
///    one chunk; a copy of the parser fed the same chunks gives the same as the original.
/// 2. After every chunk, what was reported agrees with the bytes fed so far, as judged by
///    ``HTTPHeadReference`` (a second, non-incremental reading of the grammar the parser
///    documents): request *n* begins where request *n − 1*'s body ended (the first at byte 0),
///    its head is complete (ends at the first CRLFCRLF) and within the head limit (plus its
///    final CRLFCRLF), the reference reads the same method, target, version, keep-alive and
///    Content-Length from it, the method is a token and the target visible ASCII (so neither
///    is empty or holds CR, LF or space), and no later request is reported while a body is
///    incomplete. So the parser never reports more requests than the bytes hold.
/// 3. Without an error, the bytes after the last request hold no complete head and are not
///    over the head limit (plus 3, a CRLFCR of the head end), and `hasPartialRequest` is true
///    exactly when bytes of a request (head or body) are outstanding; an empty chunk reports
///    nothing.
/// 4. An error is the reference's verdict on the complete head after the last request (400,
///    501, or 413 when Content-Length is over the body limit), or 431 after at least the head
///    limit without a head end within it; and after an error the parser stays failed: later
///    calls (empty, a valid request, the rest of the input) return the same error and report
///    nothing.
enum HTTPParserProperties {
    /// The limits every input is parsed with: the defaults, and small ones that put the edges
    /// of both limits within reach of short inputs.
    static let limitSets: [(head: Int, body: Int)] = [(8192, 1 << 20), (32, 16)]

    /// The violations of the properties by `bytes` (empty when all hold), at most a few dozen.
    /// - Parameters:
    ///   - byteByByte: also feed the input one byte per call.
    ///   - twoWaySplits: feed the input in two chunks split at each of these offsets.
    ///   - randomSplits: how many pseudo-random splits (seeded by the input) to try.
    static func violations(
        of bytes: [UInt8], byteByByte: Bool, twoWaySplits: [Int], randomSplits: Int
    ) -> [String] {
        var violations: [String] = []
        for (head, body) in limitSets {
            var check = HTTPParserCheck(bytes: bytes, maximumHeadBytes: head, maximumBodyBytes: body)
            check.run(byteByByte: byteByByte, twoWaySplits: twoWaySplits, randomSplits: randomSplits)
            violations += check.violations.map { "[head limit \(head), body limit \(body)] \($0)" }
        }
        return violations
    }

    /// The split points to try in two-chunk feeds: every offset of a small input, else evenly
    /// spaced ones plus every offset near the start, the end and the limits.
    static func twoWaySplitPoints(count: Int, maximumEvery: Int = 2048) -> [Int] {
        guard count > maximumEvery else { return Array(0...count) }
        var points = Set(stride(from: 0, through: count, by: max(1, count / 256)))
        for (head, _) in limitSets {
            for point in (head - 8)...(head + 8) where point >= 0 && point <= count { points.insert(point) }
        }
        points.formUnion(0...16)
        points.formUnion((count - 16)...count)
        return points.sorted()
    }
}

/// The check of one input under one pair of limits.
struct HTTPParserCheck {
    let bytes: [UInt8]
    let maximumHeadBytes: Int
    let maximumBodyBytes: Int
    /// What went wrong, in words.
    private(set) var violations: [String] = []

    init(bytes: [UInt8], maximumHeadBytes: Int, maximumBodyBytes: Int) {
        self.bytes = bytes
        self.maximumHeadBytes = maximumHeadBytes
        self.maximumBodyBytes = maximumBodyBytes
    }

    /// What one way of feeding the input gave.
    struct Outcome: Equatable {
        var heads: [HTTPRequestHead] = []
        var error: HTTPParseError?
        /// `hasPartialRequest` after the last chunk (false after an error: not compared then).
        var partial = false
    }

    /// How far the reported requests have been checked against the bytes.
    private struct Walk {
        /// Where the next request must begin: after the last checked one's head and body.
        var offset = 0
        var checkedRequests = 0
        /// No CRLFCRLF begins in `offset..<restScanned - 3` (the bytes after the last request
        /// were searched up to `restScanned` after an earlier chunk).
        var restScanned = 0
    }

    mutating func run(byteByByte: Bool, twoWaySplits: [Int], randomSplits: Int) {
        let whole = feed(ends: [bytes.count], label: "in one chunk")
        if byteByByte && bytes.count > 1 {
            compare(feed(ends: Array(1...bytes.count), label: "byte by byte"), with: whole, "byte by byte")
        }
        for point in twoWaySplits where point >= 0 && point <= bytes.count && violations.count < 8 {
            let label = "split at \(point)"
            compare(feed(ends: [point, bytes.count], label: label), with: whole, label)
        }
        var random = SeededGenerator(state: Self.fnv1a(bytes) ^ UInt64(maximumHeadBytes))
        for _ in 0..<randomSplits where violations.count < 8 {
            // Up to 64 cuts, anywhere (repeats feed empty chunks), and a copy taken after one chunk.
            let cutCount = Int(random.next() % UInt64(min(bytes.count, 64) + 1))
            let cuts = (0..<cutCount).map { _ in Int(random.next() % UInt64(bytes.count + 1)) }.sorted()
            let ends = cuts + [bytes.count]
            let copyAfter = Int(random.next() % UInt64(ends.count))
            let label = "split at \(cuts) (copy after chunk \(copyAfter))"
            compare(feed(ends: ends, label: label, copyAfter: copyAfter), with: whole, label)
        }
    }

    // MARK: Feeding

    /// Feeds the input to a new parser in chunks ending at `ends` (ascending, the last one
    /// `bytes.count`), checking the bytes-versus-requests properties after every chunk. With
    /// `copyAfter`, a copy of the parser taken after that chunk is fed the same later chunks
    /// and must give the same.
    private mutating func feed(ends: [Int], label: String, copyAfter: Int? = nil) -> Outcome {
        var parser = HTTPRequestParser(maximumHeadBytes: maximumHeadBytes, maximumBodyBytes: maximumBodyBytes)
        var outcome = Outcome()
        var walk = Walk()
        var copy: (parser: HTTPRequestParser, requests: Int, nextChunk: Int)?
        var start = 0
        for (index, end) in ends.enumerated() {
            let (heads, error) = Self.parse(&parser, bytes[start..<end])
            if start == end && !heads.isEmpty {
                violate(label, "an empty chunk reported \(heads.count) request(s)")
            }
            outcome.heads += heads
            start = end
            if let error {
                outcome.error = error
                outcome.partial = false
                checkAgainstBytes(fed: end, outcome, partial: nil, &walk, label)
                checkStaysFailed(&parser, error, rest: bytes[end...], label)
                break
            }
            outcome.partial = parser.hasPartialRequest
            if !checkAgainstBytes(fed: end, outcome, partial: outcome.partial, &walk, label) { break }
            if index == copyAfter { copy = (parser, outcome.heads.count, index + 1) }
        }
        if let copy, copy.nextChunk < ends.count {
            var parser = copy.parser
            var replay = Outcome(heads: Array(outcome.heads[..<copy.requests]))
            var start = ends[copy.nextChunk - 1]
            for end in ends[copy.nextChunk...] {
                let (heads, error) = Self.parse(&parser, bytes[start..<end])
                replay.heads += heads
                start = end
                if let error {
                    replay.error = error
                    break
                }
            }
            replay.partial = replay.error == nil && parser.hasPartialRequest
            if replay != outcome {
                violate(
                    label,
                    "a copy of the parser taken after chunk \(copy.nextChunk - 1) and fed the same "
                        + "chunks gave \(Self.describe(replay)), the original \(Self.describe(outcome))")
            }
        }
        return outcome
    }

    /// One `parse` call on a copy of `chunk` in a heap block of exactly its size (so that the
    /// address sanitizer sees a read past it), freed after the call (so that it sees a later
    /// read of it, too).
    private static func parse(
        _ parser: inout HTTPRequestParser, _ chunk: ArraySlice<UInt8>
    ) -> ([HTTPRequestHead], HTTPParseError?) {
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk.count, alignment: 1)
        defer { block.deallocate() }
        block.copyBytes(from: chunk)
        var heads: [HTTPRequestHead] = []
        let error = parser.parse(UnsafeRawBufferPointer(block)) { heads.append($0) }
        return (heads, error)
    }

    private mutating func compare(_ outcome: Outcome, with whole: Outcome, _ label: String) {
        guard outcome != whole else { return }
        violate(label, "gave \(Self.describe(outcome)); in one chunk: \(Self.describe(whole))")
    }

    // MARK: Requests versus bytes

    /// Checks the requests reported so far (from `walk` on) and the error or the partial state
    /// against the first `fed` bytes. Returns false after a violation that makes going on moot.
    @discardableResult
    private mutating func checkAgainstBytes(
        fed: Int, _ outcome: Outcome, partial: Bool?, _ walk: inout Walk, _ label: String
    ) -> Bool {
        while walk.checkedRequests < outcome.heads.count {
            let number = walk.checkedRequests
            let head = outcome.heads[number]
            let subject = "after \(fed) bytes, request #\(number) (\(Self.describe(head)))"
            guard walk.offset < fed else {
                violate(
                    label,
                    walk.offset == fed
                        ? "\(subject) was reported, but no byte of it had arrived"
                        : "\(subject) was reported while the body of the request before it was incomplete")
                return false
            }
            guard let end = Self.headEnd(in: bytes, from: walk.offset, to: fed) else {
                violate(label, "\(subject) was reported, but bytes \(walk.offset)..<\(fed) hold no CRLFCRLF")
                return false
            }
            if end - walk.offset > maximumHeadBytes + 4 {
                violate(
                    label,
                    "\(subject) has a head of \(end - walk.offset) bytes, over the limit \(maximumHeadBytes) (+4)")
            }
            if head.method.isEmpty || !head.method.utf8.allSatisfy(HTTPHeadReference.isTokenCharacter) {
                violate(label, "\(subject) has a method that is empty or not a token")
            }
            if head.target.isEmpty || !head.target.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) {
                violate(label, "\(subject) has a target that is empty or holds CR, LF, space or a non-visible byte")
            }
            if head.contentLength < 0 || head.contentLength > maximumBodyBytes {
                violate(label, "\(subject) was reported with a Content-Length outside 0...\(maximumBodyBytes)")
                return false
            }
            switch HTTPHeadReference.judge(bytes[walk.offset..<end]) {
            case .request(let expected):
                if !expected.matches(head) {
                    violate(label, "\(subject) was reported, but its head reads as \(expected)")
                }
            case .badRequest(let reason):
                violate(label, "\(subject) was reported, but its head is malformed: \(reason)")
            case .transferEncoding:
                violate(label, "\(subject) was reported, but its head has Transfer-Encoding")
            }
            walk.offset = end + head.contentLength
            walk.restScanned = walk.offset
            walk.checkedRequests += 1
        }
        let offset = walk.offset
        if let error = outcome.error {
            guard offset < fed else {
                violate(
                    label, "error \(error) after \(fed) bytes, but no byte of a request after the last one had arrived")
                return false
            }
            let end = Self.headEnd(in: bytes, from: offset, to: fed)
            if error == .headersTooLarge {
                // The limit counts the whole head: once that many bytes are there without an
                // end, the head is over it. (The parser may also wait up to 4 bytes longer.)
                if fed - offset < maximumHeadBytes {
                    violate(
                        label,
                        """
                        431 after \(fed) bytes, with only \(fed - offset) bytes of a head at \(offset) (limit \
                        \(maximumHeadBytes))
                        """
                    )
                } else if let end, end - offset <= maximumHeadBytes {
                    violate(
                        label,
                        """
                        431 after \(fed) bytes, but the head at \(offset) is complete and within the limit \
                        (\(end - offset) bytes)
                        """
                    )
                }
                return false
            }
            guard let end, end - offset <= maximumHeadBytes + 4 else {
                violate(
                    label,
                    "error \(error) after \(fed) bytes, but the head at \(offset) is not complete within the limit")
                return false
            }
            let expected: Int?
            switch HTTPHeadReference.judge(bytes[offset..<end]) {
            case .badRequest: expected = 400
            case .transferEncoding: expected = 501
            case .request(let head): expected = head.contentLength > maximumBodyBytes ? 413 : nil
            }
            if error.status != expected {
                violate(
                    label,
                    "error \(error) for the head at \(offset)..<\(end), where the grammar says "
                        + (expected.map { "\($0)" } ?? "it is a request within the limits"))
            }
            return false
        }
        guard let partial else { return true }
        if offset >= fed {
            let outstanding = offset > fed
            if partial != outstanding {
                violate(
                    label,
                    "after \(fed) bytes, hasPartialRequest is \(partial), but "
                        + (outstanding ? "\(offset - fed) body bytes are outstanding" : "every request is complete"))
                return false
            }
            return true
        }
        if !partial {
            violate(
                label,
                "after \(fed) bytes, hasPartialRequest is false, but bytes \(offset)..<\(fed) of a head are buffered")
            return false
        }
        if let end = Self.headEnd(in: bytes, from: max(offset, walk.restScanned - 3), to: fed) {
            violate(
                label, "after \(fed) bytes, the complete head at \(offset)..<\(end) was neither reported nor rejected")
            return false
        }
        walk.restScanned = fed
        if fed - offset > maximumHeadBytes + 3 {
            violate(
                label,
                """
                after \(fed) bytes, \(fed - offset) bytes without a head end are buffered, over the limit \
                \(maximumHeadBytes)
                """
            )
            return false
        }
        return true
    }

    /// After `error`, the parser must answer every call with it and report nothing.
    private mutating func checkStaysFailed(
        _ parser: inout HTTPRequestParser, _ error: HTTPParseError, rest: ArraySlice<UInt8>, _ label: String
    ) {
        let probes: [(String, ArraySlice<UInt8>)] = [
            ("an empty chunk", []),
            ("a valid request", Array("GET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8)[...]),
            ("the rest of the input", rest),
        ]
        for (name, probe) in probes {
            let (heads, again) = Self.parse(&parser, probe)
            if again != error || !heads.isEmpty {
                violate(
                    label,
                    """
                    after error \(error), \(name) gave \(heads.count) request(s) and error \
                    \(String(describing: again))
                    """
                )
            }
        }
    }

    // MARK: Helpers

    private mutating func violate(_ label: String, _ message: String) {
        if violations.count < 24 { violations.append("\(label): \(message)") }
    }

    /// The index just past the first CRLFCRLF in `bytes[from..<to]`, if any.
    static func headEnd(in bytes: [UInt8], from: Int, to: Int) -> Int? {
        var index = from
        while index + 4 <= to {
            if bytes[index] == 0x0D && bytes[index + 1] == 0x0A && bytes[index + 2] == 0x0D && bytes[index + 3] == 0x0A
            {
                return index + 4
            }
            index += 1
        }
        return nil
    }

    static func describe(_ head: HTTPRequestHead) -> String {
        "\(String(reflecting: head.method)) \(String(reflecting: head.target)) HTTP/1.\(head.minorVersion)"
            + " keepAlive \(head.keepAlive) Content-Length \(head.contentLength)"
    }

    static func describe(_ outcome: Outcome) -> String {
        let heads =
            outcome.heads.prefix(4).map { describe($0) }.joined(separator: "; ")
            + (outcome.heads.count > 4 ? "; … (\(outcome.heads.count) in all)" : "")
        let end = outcome.error.map { "error \($0)" } ?? "no error, hasPartialRequest \(outcome.partial)"
        return "\(outcome.heads.count) request(s) [\(heads)], \(end)"
    }

    /// FNV-1a of the bytes: the seed of the random splits, so that an input always splits alike.
    static func fnv1a(_ bytes: [UInt8]) -> UInt64 {
        bytes.reduce(0xCBF2_9CE4_8422_2325) { ($0 ^ UInt64($1)) &* 0x0000_0100_0000_01B3 }
    }
}

/// A second reading of the grammar `HTTPRequestParser` documents, written independently of it
/// and without its incremental machinery: it judges one complete head (the bytes up to and
/// including the first CRLFCRLF). Lines end in CRLF (a bare LF or CR is an error); the request
/// line is `token SP visible-ASCII SP HTTP/1.0|HTTP/1.1`; a field line is `token ":" value` with
/// no leading whitespace (obsolete folding) and no control character but HTAB in the value;
/// Content-Length is 1 to 18 digits, repeated only with the same value; Transfer-Encoding is not
/// implemented (501); HTTP/1.1 needs exactly one Host and HTTP/1.0 at most one. Lines are judged
/// in order and the first fault decides (so a Transfer-Encoding line before a malformed one is
/// 501, after it 400); within a line, the value's characters are judged before its meaning.
enum HTTPHeadReference {
    /// What a head says.
    enum Verdict {
        case request(Expected)
        case badRequest(String)
        case transferEncoding
    }

    /// The request a well-formed head describes.
    struct Expected: CustomStringConvertible {
        var method: [UInt8]
        var target: [UInt8]
        var minorVersion: Int
        var keepAlive: Bool
        var contentLength: Int

        func matches(_ head: HTTPRequestHead) -> Bool {
            Array(head.method.utf8) == method && Array(head.target.utf8) == target
                && head.minorVersion == minorVersion && head.keepAlive == keepAlive
                && head.contentLength == contentLength
        }

        var description: String {
            "\(String(reflecting: String(decoding: method, as: UTF8.self))) "
                + "\(String(reflecting: String(decoding: target, as: UTF8.self))) HTTP/1.\(minorVersion)"
                + " keepAlive \(keepAlive) Content-Length \(contentLength)"
        }
    }

    static func judge(_ head: ArraySlice<UInt8>) -> Verdict {
        // The lines, each with its terminator checked: split at every LF (the head ends in
        // CRLFCRLF, so the last piece after the final LF is empty and dropped).
        var pieces = head.split(separator: 0x0A, omittingEmptySubsequences: false)
        pieces.removeLast()
        var lines: [ArraySlice<UInt8>?] = []  // nil: a line with a bare LF or a bare CR
        for piece in pieces {
            if let last = piece.last, last == 0x0D, !piece.dropLast().contains(0x0D) {
                lines.append(piece.dropLast())
            } else {
                lines.append(nil)
            }
        }
        guard let first = lines.first, let requestLine = first else {
            return .badRequest("request line not ended by CRLF")
        }
        let parts = requestLine.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return .badRequest("request line without exactly two spaces") }
        let (method, target, version) = (parts[0], parts[1], parts[2])
        guard !method.isEmpty, method.allSatisfy(isTokenCharacter) else { return .badRequest("method not a token") }
        guard !target.isEmpty, target.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            return .badRequest("bad target")
        }
        let minorVersion: Int
        if Array(version) == Array("HTTP/1.1".utf8) {
            minorVersion = 1
        } else if Array(version) == Array("HTTP/1.0".utf8) {
            minorVersion = 0
        } else {
            return .badRequest("version neither HTTP/1.0 nor HTTP/1.1")
        }
        var hosts = 0
        var contentLength: Int?
        var close = false
        var keepAlive = false
        for line in lines.dropFirst() {
            guard let line else { return .badRequest("field line not ended by CRLF") }
            if line.isEmpty { break }  // the empty line that ends the head
            if line.first == 0x20 || line.first == 0x09 { return .badRequest("obsolete line folding") }
            guard let colon = line.firstIndex(of: 0x3A) else { return .badRequest("field line without a colon") }
            let name = lowercased(line[..<colon])
            guard !name.isEmpty, name.allSatisfy(isTokenCharacter) else { return .badRequest("field name not a token") }
            let value = trimmed(line[(colon + 1)...])
            guard value.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                return .badRequest("control character in a field value")
            }
            switch name {
            case Array("content-length".utf8):
                guard (1...18).contains(value.count), value.allSatisfy({ (0x30...0x39).contains($0) }) else {
                    return .badRequest("Content-Length not 1 to 18 digits")
                }
                let length = Int(String(decoding: value, as: UTF8.self))!
                if let contentLength, contentLength != length { return .badRequest("two different Content-Lengths") }
                contentLength = length
            case Array("transfer-encoding".utf8):
                return .transferEncoding
            case Array("host".utf8):
                hosts += 1
                if hosts > 1 { return .badRequest("two Hosts") }
            case Array("connection".utf8):
                for option in value.split(separator: 0x2C) {
                    let token = lowercased(trimmed(option))
                    if token == Array("close".utf8) { close = true }
                    if token == Array("keep-alive".utf8) { keepAlive = true }
                }
            default:
                break
            }
        }
        if minorVersion == 1 && hosts == 0 { return .badRequest("HTTP/1.1 without Host") }
        return .request(
            Expected(
                method: Array(method), target: Array(target), minorVersion: minorVersion,
                keepAlive: minorVersion == 1 ? !close : keepAlive && !close,
                contentLength: contentLength ?? 0))
    }

    /// RFC 9110 `tchar`.
    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "a")...UInt8(ascii: "z"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    private static func lowercased(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        bytes.map { (0x41...0x5A).contains($0) ? $0 + 0x20 : $0 }
    }

    private static func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var slice = bytes
        while let first = slice.first, first == 0x20 || first == 0x09 { slice.removeFirst() }
        while let last = slice.last, last == 0x20 || last == 0x09 { slice.removeLast() }
        return slice
    }
}
