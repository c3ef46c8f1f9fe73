import Testing

@testable import RingPortHTTP

extension RingPortHTTPTests {
    /// The responder's per-connection state.
    @Suite struct HTTPConnectionStateTests {
        private func request(_ text: String) throws -> HTTPRequestHead {
            var parser = HTTPRequestParser(maximumHeadBytes: 1024, maximumBodyBytes: 0)
            var head: HTTPRequestHead?
            let bytes = Array(text.utf8)
            let error = bytes.withUnsafeBytes { parser.parse($0) { head = $0 } }
            #expect(error == nil)
            return try #require(head)
        }

        /// The output of a pipelined burst is written whole; then its storage is freed, while
        /// the storage of the usual few responses is kept for the next receive.
        @Test func theOutputOfABurstIsNotKept() throws {
            let state = HTTPConnectionState(
                parser: HTTPRequestParser(maximumHeadBytes: 1024, maximumBodyBytes: 0))
            let head = try request("GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
            state.appendResponse(to: head)
            var written = 0
            state.flushOutput { written += $0.count }
            let oneResponse = written
            #expect(oneResponse > 0 && state.output.isEmpty)
            #expect(state.output.capacity >= oneResponse, "a small output keeps its storage")

            for _ in 0..<600 { state.appendResponse(to: head) }
            written = 0
            state.flushOutput { written += $0.count }
            #expect(written == 600 * oneResponse)
            #expect(state.output.isEmpty)
            #expect(state.output.capacity <= HTTPConnectionState.keptOutputCapacity)
        }
    }
}
