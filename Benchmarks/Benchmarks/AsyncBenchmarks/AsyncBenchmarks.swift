// Micro benchmarks of the async layer: an echo round trip through a task that iterates a
// TCPConnection's inbound ByteBuffers and writes each back on its outbound writer (accept done
// in the set-up; per iteration, the benchmark's thread sends 128 bytes or 16 KiB on a blocking
// loopback socket and reads them back while the port's worker receives them (multishot into a
// provided buffer, copied into a recycled ByteBuffer), resumes the task, which queues the buffer
// and posts its send, and recycles the buffer when the send completes).
//
// Counts are per round trip and cover every thread of the process. One worker on one ring, as
// for the server benchmarks; the task runs on the port's executor (the default).

import Benchmark
import Dispatch
import MicroBenchmarkSupport
import RingPort
import RingPortAsync

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = MicroBenchmark.configuration

    echoRoundTripBenchmarks("AsyncEchoRoundTrip") { try AsyncEchoFixture(messageSize: $0) }
}

/// An async echo server (one worker, one ring, one connection task) and one connected blocking
/// client.
final class AsyncEchoFixture: RoundTripFixture {
    let io: AsyncPort
    let listener: TCPListener
    let client: BlockingEchoClient

    init(messageSize: Int) throws {
        var configuration = AsyncPort.Configuration()
        configuration.port.ringCount = 1
        configuration.port.workerCount = 1
        configuration.port.logger.logLevel = .error
        configuration.logger.logLevel = .error
        io = try AsyncPort(configuration: configuration)
        let listener = try TCPListener.bind(to: SocketAddress(host: "127.0.0.1", port: 0), on: io)
        self.listener = listener
        Task(executorPreference: io.preferredExecutor) {
            guard let connection = try await listener.accept() else { return }
            try await connection.executeThenClose { inbound, outbound in
                for try await buffer in inbound { try await outbound.write(buffer) }
            }
        }
        client = try BlockingEchoClient(connectingTo: listener.localAddress, messageSize: messageSize)
        try roundTrip()
    }

    package func roundTrip() throws {
        try client.roundTrip()
    }

    package func close() {
        client.close()
        listener.close()
        let io = self.io
        let done = DispatchSemaphore(value: 0)
        Task {
            await io.shutdown()
            done.signal()
        }
        done.wait()
    }
}
