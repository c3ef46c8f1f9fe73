// libFuzzer entry point for HTTPRequestParser.
//
// Fuzz/run.sh builds it in two modules: RingPortHTTP, made of the files in sources.txt (just
// Sources/RingPortHTTP/HTTPRequestParser.swift, which imports nothing and uses nothing
// else of RingPortHTTP) compiled with -sanitize=fuzzer,address, so that coverage guides
// libFuzzer; and this target (this file, and HTTPParserProperties.swift and SeededGenerator.swift,
// links to the ones in Tests/RingPortHTTPTests and Tests/RingPortTestSupport) compiled with
// -sanitize=address only, linked with -sanitize=fuzzer,address.
//
// The input is the byte stream of one connection. Every property of HTTPParserProperties is
// checked; a violation stops the run with fatalError and the list of what failed, and libFuzzer
// writes the input as a crash artifact.

import Glibc
import RingPortHTTP

/// Inputs up to this size are also fed one byte per call (that costs O(n²) in the parser).
private let byteByByteLimit = 1024

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPRequestParser(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    let violations = HTTPParserProperties.violations(
        of: bytes, byteByByte: bytes.count <= byteByByteLimit, twoWaySplits: [], randomSplits: 4)
    if !violations.isEmpty {
        fatalError(
            "HTTPRequestParser property violated by a \(bytes.count)-byte input:\n  "
                + violations.joined(separator: "\n  ") + "\n")
    }
    return 0
}
