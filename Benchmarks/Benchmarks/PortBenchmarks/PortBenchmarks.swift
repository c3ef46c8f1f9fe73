// Micro benchmarks of RingPort's completion port: what one completion costs on the raw port API
// (post, NOP, echo round trips), and how many heap allocations it makes in steady state.
//
// Every benchmark sets its port up outside the measurement (the `setup` hook, plus the warm-up
// iterations), then measures `scalingFactor` (1,000) operations per sample between
// startMeasurement() and stopMeasurement(). Times and counts are shown per operation (the
// columns marked `*`); the thresholds in Thresholds/ hold the raw p90 per sample, i.e. per
// 1,000 operations.
//
// Everything runs on the benchmark's own thread with one worker made with makeWorker(): the
// thread posts, then dequeues as the ring's leader (it submits and waits in io_uring_enter).

import Benchmark
import Glibc
import MicroBenchmarkSupport
import RingPort

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = MicroBenchmark.configuration

    // MARK: post + dequeue

    // PostQueuedCompletionStatus + GetQueuedCompletionStatus: a user completion without handle
    // or context, posted and dequeued by the same thread (one NOP SQE through the kernel each).
    let post = Fixture<PortFixture>()
    Benchmark("PostDequeue") { benchmark in
        let fixture = post.value!
        benchmark.startMeasurement()
        for iteration in benchmark.scaledIterations {
            try fixture.port.post(value: UInt64(iteration))
            let completion = try fixture.next()
            blackHole(completion.userValue)
        }
        benchmark.stopMeasurement()
    } setup: {
        post.value = try PortFixture()
    } teardown: {
        post.take()?.close()
    }

    // The same with a completion key and a per-I/O context, as a server posts commands to a
    // connection (the handle is held by the worker until its next dequeue).
    let postKeyed = Fixture<KeyedPostFixture>()
    Benchmark("PostDequeueHandleContext") { benchmark in
        let fixture = postKeyed.value!
        let port = fixture.base.port
        benchmark.startMeasurement()
        for iteration in benchmark.scaledIterations {
            try port.post(
                bytesTransferred: 1, handle: fixture.handle, context: fixture.context, value: UInt64(iteration))
            let completion = try fixture.base.next()
            blackHole(completion.userValue)
        }
        benchmark.stopMeasurement()
    } setup: {
        postKeyed.value = try KeyedPostFixture()
    } teardown: {
        postKeyed.take()?.close()
    }

    // MARK: NOP

    // An io_uring NOP with a context: post, submit, complete, reap, dequeue.
    let nop = Fixture<NopFixture>()
    Benchmark("NopRoundTrip") { benchmark in
        let fixture = nop.value!
        benchmark.startMeasurement()
        for iteration in benchmark.scaledIterations {
            try fixture.base.port.nop(context: fixture.context, value: UInt64(iteration))
            let completion = try fixture.base.next()
            blackHole(completion.userValue)
        }
        benchmark.stopMeasurement()
    } setup: {
        nop.value = try NopFixture()
    } teardown: {
        nop.take()?.close()
    }

    // MARK: Echo round trips

    // A connected loopback TCP pair (TCP_NODELAY), both ends associated with the port. Per
    // iteration: A sends N bytes, B receives all of them (read + write posted together), B sends
    // them back from its receive buffer, A receives them: four operations, four completions.
    echoRoundTripBenchmarks("EchoRoundTrip") { try EchoFixture(messageSize: $0) }

    // The same pair with a multishot receive on each end into the ring's provided buffers (one
    // receive SQE for the whole run, not one per message). B echoes straight from the provided
    // buffer (write(_:from: ReceivedBuffer ...)) and releases it when that write completes; A
    // releases each buffer as soon as it has counted the bytes.
    echoRoundTripBenchmarks("EchoMultishot") { try MultishotEchoFixture(messageSize: $0) }
}

// MARK: - Fixtures

extension EchoFixture: RoundTripFixture {}
extension MultishotEchoFixture: RoundTripFixture {}

/// A port with one ring and one worker for the benchmark's thread.
final class PortFixture {
    let port: CompletionPort
    let worker: CompletionWorker

    init(providedBuffers: CompletionPort.ProvidedBuffers? = nil) throws {
        var configuration = CompletionPort.Configuration()
        configuration.ringCount = 1
        configuration.providedBuffers = providedBuffers
        port = try CompletionPort(configuration: configuration)
        worker = port.makeWorker()
    }

    /// The next completion (waits as long as it takes, as a `WorkerPool` worker does).
    @inline(__always)
    func next() throws -> Completion {
        while true {
            if let completion = try worker.dequeue(timeout: nil) { return completion }
        }
    }

    func close() {
        worker.detach()
        port.close()
    }
}

final class KeyedPostFixture {
    let base: PortFixture
    let handle: IOHandle
    let context = IOContext(capacity: 0)
    private let peer: Int32

    init() throws {
        base = try PortFixture()
        let (left, right) = try makeSocketPair()
        peer = right
        handle = try base.port.associate(descriptor: left)
    }

    func close() {
        base.close()
        Glibc.close(peer)
    }
}

final class NopFixture {
    let base: PortFixture
    let context = IOContext(capacity: 0)

    init() throws {
        base = try PortFixture()
    }

    func close() { base.close() }
}

/// A connected loopback TCP pair on a port.
final class EchoFixture {
    let base: PortFixture
    let messageSize: Int
    let a: IOHandle
    let b: IOHandle
    /// A's message, B's receive buffer (echoed from), A's receive buffer.
    let sendA: IOContext
    let receiveB: IOContext
    let receiveA: IOContext

    init(messageSize: Int, providedBuffers: CompletionPort.ProvidedBuffers? = nil) throws {
        self.messageSize = messageSize
        base = try PortFixture(providedBuffers: providedBuffers)
        let (left, right) = try makeLoopbackPair()
        a = try base.port.associate(descriptor: left)
        b = try base.port.associate(descriptor: right)
        sendA = IOContext(capacity: messageSize)
        receiveB = IOContext(capacity: messageSize)
        receiveA = IOContext(capacity: messageSize)
        sendA.copyBytes(from: (0..<messageSize).map { UInt8(truncatingIfNeeded: $0) })
    }

    /// One round trip: A → B, then B → A with the bytes B received.
    @inline(__always)
    package func roundTrip() throws {
        try transfer(from: a, sendA, to: b, receiveB)
        try transfer(from: b, receiveB, to: a, receiveA)
    }

    /// Sends `messageSize` bytes of `source` on `sender` and receives them into `destination` on
    /// `receiver`, reposting short sends and receives until all have arrived.
    @inline(__always)
    private func transfer(
        from sender: IOHandle, _ source: IOContext, to receiver: IOHandle, _ destination: IOContext
    ) throws {
        let count = messageSize
        let port = base.port
        try port.read(receiver, into: destination, range: 0..<count)
        try port.write(sender, from: source, range: 0..<count)
        var sent = 0
        var received = 0
        while sent < count || received < count {
            let completion = try base.next()
            guard completion.bytesTransferred > 0 else {
                throw BenchmarkFailure(description: "echo: \(completion)")
            }
            if completion.context === destination {
                received += completion.bytesTransferred
                if received < count { try port.read(receiver, into: destination, range: received..<count) }
            } else {
                sent += completion.bytesTransferred
                if sent < count { try port.write(sender, from: source, range: sent..<count) }
            }
        }
    }

    package func close() {
        base.close()  // closes both handles (and their descriptors)
    }
}

/// A connected loopback TCP pair with a multishot receive on each end.
final class MultishotEchoFixture {
    let base: PortFixture
    let messageSize: Int
    let a: IOHandle
    let b: IOHandle
    let receiveA = IOContext(capacity: 0)
    let receiveB = IOContext(capacity: 0)
    /// Contexts for B's echo writes from received buffers, one per buffer in flight; a context's
    /// `userValue` is its index in `echoBuffers`, which holds the buffer it sends.
    let echoContexts: [IOContext]
    var echoBuffers: [ReceivedBuffer?]
    /// Echo contexts not in flight (indices), used as a stack.
    var freeEchoContexts: [Int]

    init(messageSize: Int) throws {
        self.messageSize = messageSize
        base = try PortFixture(providedBuffers: .init(count: 64, size: 16_384))
        guard base.port.supportsMultishotReceive else {
            throw BenchmarkFailure(description: "this kernel has no provided buffer rings")
        }
        let (left, right) = try makeLoopbackPair()
        a = try base.port.associate(descriptor: left)
        b = try base.port.associate(descriptor: right)
        let sendBuffer = IOContext(capacity: messageSize)
        sendBuffer.copyBytes(from: (0..<messageSize).map { UInt8(truncatingIfNeeded: $0) })
        message = sendBuffer
        echoContexts = (0..<16).map { index in
            let context = IOContext(capacity: 0)
            context.userValue = UInt64(index)
            return context
        }
        echoBuffers = [ReceivedBuffer?](repeating: nil, count: echoContexts.count)
        freeEchoContexts = Array(echoContexts.indices.reversed())
        freeEchoContexts.reserveCapacity(echoContexts.count)
        try base.port.receiveMultishot(a, context: receiveA)
        try base.port.receiveMultishot(b, context: receiveB)
    }

    /// A's message.
    private let message: IOContext

    /// One round trip: A sends the message; B echoes every buffer it receives; A counts and
    /// releases what comes back. Ends when all bytes are back and every echo write completed.
    @inline(__always)
    package func roundTrip() throws {
        let count = messageSize
        let port = base.port
        try port.write(a, from: message, range: 0..<count)
        var sent = 0
        var echoed = 0
        var returned = 0
        while sent < count || echoed < count || returned < count {
            let completion = try base.next()
            let context = completion.context
            if context === receiveB || context === receiveA {
                guard let buffer = completion.receivedBuffer else {
                    try rearm(completion)
                    continue
                }
                if context === receiveA {
                    returned += buffer.count
                    buffer.release()
                } else {
                    guard let index = freeEchoContexts.popLast() else {
                        throw BenchmarkFailure(description: "more than \(echoContexts.count) echo writes in flight")
                    }
                    echoBuffers[index] = buffer
                    try port.write(b, from: buffer, range: 0..<buffer.count, context: echoContexts[index])
                }
                if !completion.hasMore { try rearm(completion) }
            } else if context === message {
                guard completion.bytesTransferred > 0 else {
                    throw BenchmarkFailure(description: "send: \(completion)")
                }
                sent += completion.bytesTransferred
                if sent < count { try port.write(a, from: message, range: sent..<count) }
            } else if let context {
                // An echo write of B's.
                guard completion.bytesTransferred > 0 else {
                    throw BenchmarkFailure(description: "echo: \(completion)")
                }
                let index = Int(context.userValue)
                let buffer = echoBuffers[index]!
                let done = context.offset + completion.bytesTransferred
                if done < buffer.count {
                    context.offset = done
                    try port.write(b, from: buffer, range: done..<buffer.count, context: context)
                } else {
                    context.offset = 0
                    echoed += buffer.count
                    buffer.release()
                    echoBuffers[index] = nil
                    freeEchoContexts.append(index)
                }
            }
        }
    }

    /// Ends both multishot receives and takes their last completions, so that the port closes
    /// with nothing left over.
    package func close() {
        var ended = 0
        do {
            try base.port.cancel(receiveA)
            try base.port.cancel(receiveB)
            while ended < 2 {
                let completion = try base.next()
                completion.receivedBuffer?.release()
                if (completion.context === receiveA || completion.context === receiveB) && !completion.hasMore {
                    ended += 1
                }
            }
        } catch {
            print("closing the multishot echo fixture: \(error)")
        }
        base.close()
    }

    /// A multishot receive ended: post it again when it delivered bytes or the ring ran out of
    /// buffers; anything else (end of stream, an error) fails the benchmark.
    private func rearm(_ completion: Completion) throws {
        guard !completion.hasMore else { return }
        guard completion.result > 0 || completion.error?.rawValue == ENOBUFS,
            let handle = completion.handle, let context = completion.context
        else {
            throw BenchmarkFailure(description: "multishot receive ended: \(completion)")
        }
        try base.port.receiveMultishot(handle, context: context)
    }
}

// MARK: - Sockets

/// A connected AF_UNIX stream pair (close-on-exec).
func makeSocketPair() throws -> (Int32, Int32) {
    var descriptors: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &descriptors) == 0 else {
        throw BenchmarkFailure(description: "socketpair: errno \(errno)")
    }
    return (descriptors[0], descriptors[1])
}

/// A connected loopback TCP pair with TCP_NODELAY on both ends, as the echo server sets it.
func makeLoopbackPair() throws -> (Int32, Int32) {
    let listener = try TCPSocket.makeListener(address: SocketAddress(host: "127.0.0.1", port: 0))
    defer { Glibc.close(listener) }
    let address = try TCPSocket.localAddress(of: listener)
    let client = try TCPSocket.connect(to: address)
    let server = Glibc.accept(listener, nil, nil)
    guard server >= 0 else {
        Glibc.close(client)
        throw BenchmarkFailure(description: "accept: errno \(errno)")
    }
    try TCPSocket.setNoDelay(client)
    try TCPSocket.setNoDelay(server)
    return (client, server)
}
