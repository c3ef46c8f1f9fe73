import Foundation
import Glibc
import RingPort
import RingPortHTTP
import RingPortServer
import RingPortTestSupport
import Testing

/// Parses `text` split into the given chunk sizes, returning the targets of the requests and the
/// error, if any.
func parseRequests(
    _ text: String, chunks: [Int]? = nil, parser: HTTPRequestParser = HTTPRequestParser()
) -> ([String], HTTPParseError?) {
    var parser = parser
    var targets: [String] = []
    let bytes = Array(text.utf8)
    var start = 0
    var sizes = chunks ?? [bytes.count]
    while start < bytes.count {
        let size = min(sizes.isEmpty ? bytes.count : sizes.removeFirst(), bytes.count - start)
        let error = bytes[start..<start + size].withUnsafeBytes { chunk in
            parser.parse(chunk) { targets.append($0.target) }
        }
        if let error { return (targets, error) }
        start += size
    }
    return (targets, nil)
}

extension RingPortHTTPTests {
    @Suite struct HTTPParserTests {
        @Test func pipelinedRequestsInOneReadAreAllReported() {
            let request = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            let (targets, error) = parseRequests(request + request.replacingOccurrences(of: "/a", with: "/b") + request)
            #expect(error == nil)
            #expect(targets == ["/a", "/b", "/a"])
        }

        @Test(arguments: [1, 2, 3, 7, 13])
        func requestsSplitAtEveryPointAreReassembled(chunkSize: Int) {
            let text =
                "GET /plaintext HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"
                + "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                + "GET /last HTTP/1.1\r\nHost: x\r\n\r\n"
            let (targets, error) = parseRequests(text, chunks: Array(repeating: chunkSize, count: text.utf8.count))
            #expect(error == nil)
            #expect(targets == ["/plaintext", "/upload", "/last"])
        }

        @Test(arguments: [
            "GET /a HTTP/1.1\nHost: x\r\n\r\n",  // bare LF
            "GET /a HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",  // obsolete line folding
            "GET /a HTTP/2.0\r\nHost: x\r\n\r\n",  // unsupported version
            "GET  /a HTTP/1.1\r\nHost: x\r\n\r\n",  // double space
            "GET /a HTTP/1.1\r\n\r\n",  // no Host
            "GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",  // two Hosts
            "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
            "G(T /a HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: x\r\nX: a\u{7F}b\r\n\r\n",
        ])
        func malformedRequestsAreRejected(text: String) {
            let (targets, error) = parseRequests(text)
            #expect(targets.isEmpty)
            #expect(error?.status == 400)
        }

        @Test func limitsAndTransferEncodingAreReported() {
            let parser = HTTPRequestParser(maximumHeadBytes: 64, maximumBodyBytes: 10)
            #expect(
                parseRequests(
                    "GET / HTTP/1.1\r\nHost: x\r\nX: \(String(repeating: "a", count: 100))\r\n\r\n", parser: parser
                ).1 == .headersTooLarge)
            // Byte by byte, the limit is found before the end of the head.
            let long = "GET / HTTP/1.1\r\nHost: x\r\nX: \(String(repeating: "a", count: 100))"
            #expect(
                parseRequests(long, chunks: Array(repeating: 1, count: long.utf8.count), parser: parser).1
                    == .headersTooLarge)
            #expect(
                parseRequests("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", parser: parser).1
                    == .bodyTooLarge)
            #expect(
                parseRequests("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").1
                    == .transferEncodingNotImplemented)
        }

        @Test func keepAliveFollowsVersionAndConnectionHeader() {
            var parser = HTTPRequestParser()
            var heads: [HTTPRequestHead] = []
            let text =
                "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                + "GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n"
                + "GET / HTTP/1.0\r\n\r\n"
                + "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            _ = Array(text.utf8).withUnsafeBytes { parser.parse($0) { heads.append($0) } }
            #expect(heads.map(\.keepAlive) == [true, false, false, true])
            #expect(!parser.hasPartialRequest)
        }
    }

    @Suite struct HTTPServerTests {
        private func withHTTPServer<Result>(
            configure: (inout TCPServer.Configuration) -> Void = { _ in },
            _ body: (TCPServer) throws -> Result
        ) throws -> Result {
            try withServer(
                handler: HTTPPlaintextHandler(maximumHeadBytes: 1024),
                configure: {
                    HTTPPlaintextHandler.configure(&$0)
                    configure(&$0)
                }, body)
        }

        @Test func pipelinedRequestsAreAnsweredInOrder() throws {
            try withHTTPServer { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                defer { client.close() }
                let request = "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n"
                try client.send(
                    Array(
                        (String(repeating: request, count: 16) + "GET /other HTTP/1.1\r\nHost: t\r\n\r\n" + request)
                            .utf8))
                let responses = try readResponses(from: client, count: 18)
                #expect(responses.count == 18)
                #expect(responses[0..<16].allSatisfy { $0.status == 200 && $0.body == "Hello, World!" })
                #expect(responses[16].status == 404)
                #expect(responses[17].status == 200)
            }
        }

        @Test func requestsSentByteByByteAreAnswered() throws {
            try withHTTPServer { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                defer { client.close() }
                let request = Array(
                    "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n".utf8)
                for byte in request {
                    try client.send([byte])
                    usleep(200)
                }
                let responses = try readResponses(from: client, count: 2)
                #expect(responses.map(\.status) == [200, 200])
            }
        }

        @Test(arguments: [
            ("GET /plaintext HTTP/1.1\nHost: t\r\n\r\n", 400),
            ("GARBAGE\r\n\r\n", 400),
            ("GET /plaintext HTTP/1.1\r\nHost: t\r\nX: \(String(repeating: "y", count: 2000))\r\n\r\n", 431),
            ("POST /plaintext HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n", 413),
        ])
        func badRequestsAreAnsweredAndTheConnectionClosed(request: String, status: Int) throws {
            try withHTTPServer { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                defer { client.close() }
                // A good request first: it is answered before the bad one.
                try client.send(Array(("GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n" + request).utf8))
                let responses = try readResponses(from: client, count: 3)
                #expect(responses.map(\.status) == [200, status])
                #expect(try client.receive(count: 1) == [], "the server closes after an error")
                #expect(eventually { server.statistics.protocolErrors == 1 })
            }
        }

        /// A client still uploading a body the server refused reads the 413, then an end of
        /// stream, and every byte of its upload is taken: the server lingers (write side shut,
        /// what arrives dropped) until the client closes. Closing at once, with the upload unread,
        /// answered it with a reset: the client's sends failed (`EPIPE`, `ECONNRESET`), and
        /// a client that sends before it reads lost the status.
        @Test func aClientUploadingARefusedBodyReadsTheStatusThenAnEndOfStream() throws {
            try withHTTPServer { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                // More than the socket buffers of both ends hold, so that the upload is still
                // going when the response is sent.
                let bodySize = 32 << 20
                try client.send(
                    Array("POST /plaintext HTTP/1.1\r\nHost: t\r\nContent-Length: \(bodySize)\r\n\r\n".utf8))
                // The upload goes on in a thread of its own while this one reads.
                let uploadError = LockedBox<Int32?>(nil)
                let descriptor = client.descriptor
                let upload = try PThread(name: "test-upload") {
                    let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 65536)
                    for _ in 0..<(bodySize / chunk.count) {
                        do {
                            try BlockingClient(descriptor: descriptor).send(chunk)
                        } catch {
                            uploadError.withLock { $0 = (error as? POSIXError)?.code.rawValue ?? -1 }
                            return
                        }
                    }
                }
                let responses = try readResponses(from: client, count: 2)
                #expect(responses.map(\.status) == [413])
                #expect(try client.receive(count: 1) == [], "an end of stream, not a reset")
                upload.join()
                #expect(uploadError.withLock { $0 } == nil, "every send of the upload succeeded")
                #expect(server.statistics.open == 1, "the connection lingers until the client closes")
                client.close()
                #expect(eventually { server.statistics.open == 0 })
                #expect(server.statistics.connectionErrors == 0)
            }
        }

        /// A client that neither closes nor stops sending after its last response is cut off
        /// when the linger timeout passes (the idle timeout, a minute, plays no part).
        @Test func aLingeringConnectionClosesAtTheLingerTimeout() throws {
            try withHTTPServer(configure: { $0.lingeringCloseTimeout = .milliseconds(300) }) { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                defer { client.close() }
                try client.send(Array("GARBAGE\r\n\r\n".utf8))
                #expect(try readResponses(from: client, count: 2).map(\.status) == [400])
                // Bytes sent now are dropped: no answer.
                try client.send(Array("GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n".utf8))
                #expect(try client.receive(count: 1) == [])
                #expect(eventually { server.statistics.open == 0 })
                #expect(server.statistics.closed == 1 && server.statistics.idleTimeouts == 0)
            }
        }

        /// Without a linger timeout the descriptor closes as soon as the response is sent.
        @Test func aServerWithoutALingerTimeoutClosesAtOnce() throws {
            try withHTTPServer(configure: { $0.lingeringCloseTimeout = nil }) { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                defer { client.close() }
                try client.send(Array("GARBAGE\r\n\r\n".utf8))
                #expect(try readResponses(from: client, count: 2).map(\.status) == [400])
                #expect(eventually { server.statistics.open == 0 })
            }
        }

        @Test func http10ClosesAfterTheResponse() throws {
            try withHTTPServer { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                defer { client.close() }
                try client.send(Array("GET /plaintext HTTP/1.0\r\n\r\n".utf8))
                let responses = try readResponses(from: client, count: 2)
                #expect(responses.map(\.status) == [200])
            }
        }

        @Test func slowlorisIsClosedAtTheIdleTimeout() throws {
            try withHTTPServer(configure: { $0.idleTimeout = .milliseconds(300) }) { server in
                let client = try BlockingClient(connectingTo: server.localAddress)
                defer { client.close() }
                let start = ContinuousClock.now
                // One byte every 50 ms never completes a head: only complete requests count as progress.
                var closed = false
                for byte in Array("GET /plaintext HTTP/1.1\r\nHost: t\r\nX-Slow: ".utf8)
                    + Array(repeating: UInt8(ascii: "a"), count: 200)
                {
                    if (try? client.send([byte])) == nil { closed = true; break }
                    var peek: UInt8 = 0
                    if recv(client.descriptor, &peek, 1, Int32(MSG_DONTWAIT)) == 0 { closed = true; break }
                    usleep(50_000)
                }
                #expect(closed)
                #expect(ContinuousClock.now - start < .seconds(3))
                #expect(eventually { server.statistics.idleTimeouts == 1 })
            }
        }
    }
}
