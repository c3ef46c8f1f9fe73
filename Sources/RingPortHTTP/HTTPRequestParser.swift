/// The head of an HTTP/1.x request: what a responder needs of it.
///
/// A value type; `method` and `target` are copied out of the receive buffer.
public struct HTTPRequestHead: Hashable, Sendable {
    /// The method, e.g. `GET`.
    public var method: String
    /// The request target as sent, e.g. `/plaintext`.
    public var target: String
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var minorVersion: Int
    /// Whether the connection stays open after the response (HTTP/1.1 unless `Connection: close`;
    /// HTTP/1.0 only with `Connection: keep-alive`).
    public var keepAlive: Bool
    /// The body length announced with `Content-Length` (0 without one).
    public var contentLength: Int
}

/// Why a request was rejected, with the status to answer before closing the connection.
public enum HTTPParseError: Error, Hashable, Sendable {
    /// Malformed request line or header, bare LF, obsolete line folding, bad Content-Length,
    /// missing Host on HTTP/1.1, an unsupported HTTP version. Answer 400.
    case badRequest(String)
    /// The head is larger than the limit. Answer 431.
    case headersTooLarge
    /// The announced body is larger than the limit. Answer 413.
    case bodyTooLarge
    /// `Transfer-Encoding`, which this parser does not implement. Answer 501.
    case transferEncodingNotImplemented

    /// The status code to answer with.
    public var status: Int {
        switch self {
        case .badRequest: 400
        case .headersTooLarge: 431
        case .bodyTooLarge: 413
        case .transferEncodingNotImplemented: 501
        }
    }
}

/// A small, strict, incremental HTTP/1.x request parser.
///
/// Feed it the bytes of a connection as they arrive, in any split: it reports every complete
/// request (pipelined requests in one read, one request over many reads) and skips bodies. What
/// it accepts is RFC 9112's grammar without the lenient parts: lines end in CRLF (a bare LF is an
/// error), no obsolete line folding, one Content-Length, a Host header on HTTP/1.1, only
/// HTTP/1.0 and HTTP/1.1. A head may take at most ``maximumHeadBytes``; a body at most
/// ``maximumBodyBytes``. After an error the parser stays failed: close the connection.
///
/// Only an incomplete head is copied (into a buffer that grows at most to the head limit);
/// complete requests are parsed where they lie.
///
/// Thread-safety: a value type for one connection; use it from that connection's callbacks.
public struct HTTPRequestParser: Sendable {
    /// The largest request head (request line and headers) accepted.
    public let maximumHeadBytes: Int
    /// The largest body accepted (and skipped).
    public let maximumBodyBytes: Int
    /// Bytes of an incomplete head, kept until the rest arrives.
    private var pending: [UInt8] = []
    /// Body bytes still to skip.
    private var bodyRemaining = 0
    private var failure: HTTPParseError?

    /// A parser with the given limits (defaults: 8 KiB head, 1 MiB body).
    public init(maximumHeadBytes: Int = 8192, maximumBodyBytes: Int = 1 << 20) {
        self.maximumHeadBytes = maximumHeadBytes
        self.maximumBodyBytes = maximumBodyBytes
    }

    /// Parses `bytes`, calling `onRequest` for each complete request in order. Returns nil, or
    /// the error that ends the connection (after the requests before it were reported).
    public mutating func parse(
        _ bytes: UnsafeRawBufferPointer, onRequest: (HTTPRequestHead) -> Void
    ) -> HTTPParseError? {
        if let failure { return failure }
        var input = bytes
        // Skip the rest of a body announced earlier.
        if bodyRemaining > 0 {
            let skip = min(bodyRemaining, input.count)
            bodyRemaining -= skip
            input = UnsafeRawBufferPointer(rebasing: input[skip...])
        }
        guard !input.isEmpty else { return nil }
        if pending.isEmpty {
            let consumed = parseRequests(input, onRequest: onRequest)
            return keepRemainder(of: input, after: consumed)
        }
        // An incomplete head is pending: join it with the new bytes and parse from there.
        var joined: [UInt8] = []
        swap(&joined, &pending)
        joined.append(contentsOf: input)
        let consumed = joined.withUnsafeBytes { parseRequests($0, onRequest: onRequest) }
        return joined.withUnsafeBytes { keepRemainder(of: $0, after: consumed) }
    }

    /// Whether an incomplete request is buffered (nothing is pending between requests).
    public var hasPartialRequest: Bool {
        !pending.isEmpty || bodyRemaining > 0
    }

    // MARK: Internals

    private mutating func fail(_ error: HTTPParseError) -> HTTPParseError {
        failure = error
        return error
    }

    /// Keeps the unconsumed tail (an incomplete head) for the next call. (A body that runs past
    /// the input was consumed whole and is counted in `bodyRemaining`.)
    private mutating func keepRemainder(of input: UnsafeRawBufferPointer, after consumed: Int) -> HTTPParseError? {
        if let failure { return failure }
        let rest = input.count - consumed
        guard rest > 0 else { return nil }
        if rest >= maximumHeadBytes {
            return fail(.headersTooLarge)
        }
        pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: input[consumed...]))
        return nil
    }

    /// Parses every complete request at the start of `input`; returns the bytes consumed. Sets
    /// `failure` on a malformed one. A body that runs past `input` leaves `bodyRemaining` set.
    private mutating func parseRequests(
        _ input: UnsafeRawBufferPointer, onRequest: (HTTPRequestHead) -> Void
    ) -> Int {
        var start = 0
        while start < input.count {
            guard let headEnd = Self.endOfHead(in: input, from: start, limit: maximumHeadBytes) else {
                if input.count - start >= maximumHeadBytes { _ = fail(.headersTooLarge) }
                return start
            }
            switch Self.parseHead(UnsafeRawBufferPointer(rebasing: input[start..<headEnd])) {
            case .failure(let error):
                _ = fail(error)
                return start
            case .success(let head):
                guard head.contentLength <= maximumBodyBytes else {
                    _ = fail(.bodyTooLarge)
                    return start
                }
                onRequest(head)
                let bodyAvailable = min(head.contentLength, input.count - headEnd)
                start = headEnd + bodyAvailable
                if bodyAvailable < head.contentLength {
                    bodyRemaining = head.contentLength - bodyAvailable
                    return start
                }
            }
        }
        return start
    }

    /// The index just past the CRLFCRLF that ends the head starting at `start`, or nil when it is
    /// not within the first `limit` bytes (the CRLFCRLF counts: a head is at most `limit` bytes,
    /// however the bytes arrive).
    private static func endOfHead(in input: UnsafeRawBufferPointer, from start: Int, limit: Int) -> Int? {
        let end = min(input.count, start + limit)
        var index = start
        while index + 3 < end {
            if input[index + 3] != 0x0A {
                index += input[index + 3] == 0x0D ? 1 : 4
                continue
            }
            if input[index] == 0x0D && input[index + 1] == 0x0A && input[index + 2] == 0x0D {
                return index + 4
            }
            index += 1
        }
        return nil
    }

    /// Parses one complete head (ending with CRLFCRLF).
    private static func parseHead(_ head: UnsafeRawBufferPointer) -> Result<HTTPRequestHead, HTTPParseError> {
        var lines = HeadLines(head)
        guard let requestLine = lines.next() else { return .failure(.badRequest("empty request")) }
        guard case .success(let line) = requestLine else { return .failure(.badRequest("line not ended by CRLF")) }
        let parts = line.split(separator: 0x20, maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy(isTokenCharacter),
            !parts[1].isEmpty, parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7F })
        else {
            return .failure(.badRequest("malformed request line"))
        }
        let minorVersion: Int
        switch String(decoding: parts[2], as: UTF8.self) {
        case "HTTP/1.1": minorVersion = 1
        case "HTTP/1.0": minorVersion = 0
        default: return .failure(.badRequest("unsupported HTTP version"))
        }
        var contentLength: Int?
        var hasHost = false
        var connectionClose = false
        var connectionKeepAlive = false
        while let next = lines.next() {
            guard case .success(let field) = next else { return .failure(.badRequest("line not ended by CRLF")) }
            if field.isEmpty { break }
            guard field[field.startIndex] != 0x20, field[field.startIndex] != 0x09 else {
                return .failure(.badRequest("obsolete line folding"))
            }
            guard let colon = field.firstIndex(of: 0x3A), colon > field.startIndex,
                field[field.startIndex..<colon].allSatisfy(isTokenCharacter)
            else {
                return .failure(.badRequest("malformed header field"))
            }
            let name = field[field.startIndex..<colon]
            var value = field[(colon + 1)...]
            while let first = value.first, first == 0x20 || first == 0x09 { value = value.dropFirst() }
            while let last = value.last, last == 0x20 || last == 0x09 { value = value.dropLast() }
            guard value.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                return .failure(.badRequest("control character in header value"))
            }
            if equalsIgnoringCase(name, "content-length") {
                guard !value.isEmpty, value.count <= 18, value.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
                    return .failure(.badRequest("invalid Content-Length"))
                }
                let length = value.reduce(0) { $0 * 10 + Int($1 - 0x30) }
                if let previous = contentLength, previous != length {
                    return .failure(.badRequest("conflicting Content-Length"))
                }
                contentLength = length
            } else if equalsIgnoringCase(name, "transfer-encoding") {
                return .failure(.transferEncodingNotImplemented)
            } else if equalsIgnoringCase(name, "host") {
                if hasHost { return .failure(.badRequest("more than one Host")) }
                hasHost = true
            } else if equalsIgnoringCase(name, "connection") {
                for option in value.split(separator: 0x2C) {
                    var token = option[...]
                    while let first = token.first, first == 0x20 || first == 0x09 { token = token.dropFirst() }
                    while let last = token.last, last == 0x20 || last == 0x09 { token = token.dropLast() }
                    if equalsIgnoringCase(token, "close") { connectionClose = true }
                    if equalsIgnoringCase(token, "keep-alive") { connectionKeepAlive = true }
                }
            }
        }
        if minorVersion == 1 && !hasHost {
            return .failure(.badRequest("HTTP/1.1 request without Host"))
        }
        return .success(
            HTTPRequestHead(
                method: String(decoding: parts[0], as: UTF8.self),
                target: String(decoding: parts[1], as: UTF8.self),
                minorVersion: minorVersion,
                keepAlive: minorVersion == 1 ? !connectionClose : connectionKeepAlive && !connectionClose,
                contentLength: contentLength ?? 0))
    }

    /// `tchar` of RFC 9110: the characters of methods and field names.
    private static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
            UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
            UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            true
        default: false
        }
    }

    private static func equalsIgnoringCase(_ bytes: Slice<UnsafeRawBufferPointer>, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        return zip(bytes, UnsafeBufferPointer(start: lowercase.utf8Start, count: lowercase.utf8CodeUnitCount))
            .allSatisfy { ($0 | 0x20) == $1 || $0 == $1 }
    }

    /// The CRLF-terminated lines of a head; a line with a bare LF is a failure.
    private struct HeadLines {
        let head: UnsafeRawBufferPointer
        var position = 0

        init(_ head: UnsafeRawBufferPointer) {
            self.head = head
        }

        mutating func next() -> Result<Slice<UnsafeRawBufferPointer>, HTTPParseError>? {
            guard position < head.count else { return nil }
            guard let newline = head[position...].firstIndex(of: 0x0A) else {
                return .failure(.badRequest("unterminated line"))
            }
            defer { position = newline + 1 }
            guard newline > position, head[newline - 1] == 0x0D else {
                return .failure(.badRequest("bare LF"))
            }
            guard !head[position..<(newline - 1)].contains(0x0D) else {
                return .failure(.badRequest("bare CR"))
            }
            return .success(head[position..<(newline - 1)])
        }
    }
}
