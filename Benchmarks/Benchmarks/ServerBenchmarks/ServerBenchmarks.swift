// Micro benchmarks of the server path: a TCPServer echo round trip through a ConnectionHandler
// (accept done in the set-up; per iteration, the benchmark's thread sends 128 bytes or 16 KiB on
// a blocking loopback socket and reads them back while the server's worker receives them
// (multishot into a provided buffer), hands them to EchoHandler, and sends them back).
//
// Counts are per round trip and cover every thread of the process: the server's worker and the
// benchmark's client, whose send and recv make no allocation and touch no reference count. The
// server runs one worker on one ring so that the counts do not depend on which thread handled
// what (with the default six, a standby sentry waking every few milliseconds adds a little).

import Benchmark
import MicroBenchmarkSupport
import RingPort
import RingPortServer

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = MicroBenchmark.configuration

    echoRoundTripBenchmarks("ServerEchoRoundTrip") { try ServerEchoFixture(messageSize: $0) }
}

/// An echo server (one worker, one ring) and one connected blocking client.
final class ServerEchoFixture: RoundTripFixture {
    let server: TCPServer
    let client: BlockingEchoClient

    init(messageSize: Int) throws {
        var configuration = TCPServer.Configuration(address: try SocketAddress(host: "127.0.0.1", port: 0))
        configuration.port.ringCount = 1
        configuration.port.workerCount = 1
        configuration.port.logger.logLevel = .error
        configuration.logger.logLevel = .error
        server = try TCPServer(configuration: configuration, handler: EchoHandler())
        try server.start()
        client = try BlockingEchoClient(connectingTo: server.localAddress, messageSize: messageSize)
        try roundTrip()
    }

    package func roundTrip() throws {
        try client.roundTrip()
    }

    package func close() {
        client.close()
        server.shutdown(gracePeriod: .seconds(1))
    }
}
