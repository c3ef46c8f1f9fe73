import Foundation
import RingPortHTTP
import RingPortServer
import RingPortTestSupport
import Testing

// Regression tests from fuzzing HTTPRequestParser (Fuzz/HTTPRequestParser, run with
// Fuzz/run.sh): the committed corpus and every input that once failed are replayed through the
// fuzzer's properties, split at every point, and each bug found has a test of its own.
// The properties are in HTTPParserProperties.swift.

extension RingPortHTTPTests {
    @Suite struct HTTPParserFuzzRegressionTests {
        static let fuzzDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Fuzz/HTTPRequestParser").standardized

        /// The names of the files in `folder` of Fuzz/HTTPRequestParser, sorted.
        static func inputs(in folder: String) -> [String] {
            let path = fuzzDirectory.appendingPathComponent(folder).path
            return ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [])
                .filter { !$0.hasPrefix(".") }.sorted()
        }

        static func bytes(of file: String, in folder: String) throws -> [UInt8] {
            let url = fuzzDirectory.appendingPathComponent(folder).appendingPathComponent(file)
            return [UInt8](try Data(contentsOf: url))
        }

        /// Every property, with the input split in two at every point and byte by byte.
        static func replay(_ bytes: [UInt8]) -> [String] {
            HTTPParserProperties.violations(
                of: bytes, byteByByte: true,
                twoWaySplits: HTTPParserProperties.twoWaySplitPoints(count: bytes.count),
                randomSplits: 8)
        }

        @Test func theCorpusIsThere() {
            #expect(Self.inputs(in: "corpus").count >= 40, "Fuzz/HTTPRequestParser/corpus is missing or nearly empty")
            #expect(!Self.inputs(in: "regressions").isEmpty)
        }

        @Test(arguments: inputs(in: "corpus"))
        func corpusInputKeepsTheFuzzProperties(file: String) throws {
            let violations = Self.replay(try Self.bytes(of: file, in: "corpus"))
            #expect(violations.isEmpty, "Fuzz/HTTPRequestParser/corpus/\(file):\n\(violations.joined(separator: "\n"))")
        }

        @Test(arguments: inputs(in: "regressions"))
        func regressionInputKeepsTheFuzzProperties(file: String) throws {
            let violations = Self.replay(try Self.bytes(of: file, in: "regressions"))
            #expect(
                violations.isEmpty, "Fuzz/HTTPRequestParser/regressions/\(file):\n\(violations.joined(separator: "\n"))"
            )
        }

        /// The reference reading of the grammar agrees with the cases of HTTPParserTests.
        @Test func theReferenceAgreesWithTheParserTests() {
            func judge(_ text: String) -> HTTPHeadReference.Verdict {
                HTTPHeadReference.judge(Array(text.utf8)[...])
            }
            guard case .request(let head) = judge("GET /a HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n") else {
                Issue.record("a valid request was judged malformed")
                return
            }
            #expect(head.method == Array("GET".utf8) && head.target == Array("/a".utf8))
            #expect(head.minorVersion == 1 && !head.keepAlive && head.contentLength == 0)
            for text in [
                "GET /a HTTP/1.1\nHost: x\r\n\r\n", "GET /a HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
                "GET /a HTTP/2.0\r\nHost: x\r\n\r\n", "GET  /a HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /a HTTP/1.1\r\n\r\n", "GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
                "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
                "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "GET /a HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", "G(T /a HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /a HTTP/1.1\r\nHost: x\r\nX: a\u{7F}b\r\n\r\n",
            ] {
                guard case .badRequest = judge(text) else {
                    Issue.record("not judged malformed: \(text.debugDescription)")
                    continue
                }
            }
            guard case .transferEncoding = judge("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            else {
                Issue.record("Transfer-Encoding not recognised")
                return
            }
        }

        // MARK: Bugs found by fuzzing

        /// Found by the fuzzer (Fuzz/HTTPRequestParser/regressions/head-limit-slack-34-bytes):
        /// a head of maximumHeadBytes + 2 bytes is judged when it arrives in one read, but
        /// answered 431 when it arrives byte by byte. In one read the parser looks for the head's
        /// end within maximumHeadBytes + 4 bytes; between reads it gives up after
        /// maximumHeadBytes bytes without an end. The documented limit is maximumHeadBytes for
        /// the whole head, so both ways answer 431 now (the end of the head is looked for within
        /// the limit, CRLFCRLF included).
        @Test func aHeadJustOverTheLimitIsRejectedInOneReadAsInMany() throws {
            let minimized = try Self.bytes(of: "head-limit-slack-34-bytes", in: "regressions")
            // 34 bytes, a valid request (…-valid-request-34-bytes)
            let valid = "GET /abcdef HTTP/1.1\r\nHost: ab\r\n\r\n"
            #expect(minimized.count == 34 && valid.utf8.count == 34)
            let parser = HTTPRequestParser(maximumHeadBytes: 32)
            let minimizedText = String(decoding: minimized, as: UTF8.self)
            for text in [valid, minimizedText] {
                let whole = parseRequests(text, parser: parser)
                let bytewise = parseRequests(text, chunks: Array(repeating: 1, count: text.utf8.count), parser: parser)
                #expect(
                    whole.0 == bytewise.0 && whole.1 == bytewise.1,
                    "\(text.debugDescription): one read \(whole), byte by byte \(bytewise)")
                #expect(whole.0.isEmpty && whole.1 == .headersTooLarge, "one read: \(whole)")
            }
            #expect(Self.replay(minimized).isEmpty)
        }

        /// The same with the default limits: a request whose head is 8,194 bytes was answered in
        /// one read but got 431 when its last bytes came in a later read; 431 both ways now.
        @Test func aHeadJustOverTheDefaultLimitIsRejectedInOneReadAsInTwo() {
            let prefix = "GET /plaintext HTTP/1.1\r\nHost: t\r\nX-Pad: "
            let text = prefix + String(repeating: "p", count: 8194 - prefix.utf8.count - 4) + "\r\n\r\n"
            #expect(text.utf8.count == 8194)
            let whole = parseRequests(text)
            let split = parseRequests(text, chunks: [8193, 1])
            #expect(whole.0 == split.0 && whole.1 == split.1, "one read \(whole), in two \(split)")
            #expect(whole.0.isEmpty && whole.1 == .headersTooLarge, "one read: \(whole)")
            // What holds either way: a head of exactly the limit is answered however it arrives.
            let exact = prefix + String(repeating: "p", count: 8192 - prefix.utf8.count - 4) + "\r\n\r\n"
            #expect(parseRequests(exact).0 == ["/plaintext"])
            #expect(parseRequests(exact, chunks: [8191, 1]).0 == ["/plaintext"])
        }
    }
}
