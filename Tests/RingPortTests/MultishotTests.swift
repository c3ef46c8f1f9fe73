import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import SystemPackage
import Testing

/// A one-ring port with `buffers` provided buffers of `size` bytes, a worker, and a multishot
/// receive posted on one end of a socket pair; returns the other end too.
func startMultishotReceive(
    buffers: Int, size: Int
) throws -> (port: CompletionPort, worker: CompletionWorker, handle: IOHandle, context: IOContext, peer: Int32) {
    var configuration = CompletionPort.Configuration()
    configuration.backend = .ioURing  // multishot receive and provided buffers are io_uring's
    configuration.ringCount = 1
    configuration.providedBuffers = .init(count: buffers, size: size)
    let port = try CompletionPort(configuration: configuration)
    let worker = port.makeWorker()
    let (left, right) = try makeSocketPair()
    let handle = try port.associate(descriptor: left)
    let context = IOContext(capacity: 0)
    try port.receiveMultishot(handle, context: context)
    return (port, worker, handle, context, right)
}

/// Whether this kernel ends a multishot receive at a byte limit (Linux 6.17+), probed once.
let kernelHonoursMultishotReceiveLimit: Bool = {
    var configuration = CompletionPort.Configuration()
    configuration.backend = .ioURing
    configuration.ringCount = 1
    configuration.providedBuffers = .init(count: 2, size: 64)
    guard let port = try? CompletionPort(configuration: configuration) else { return false }
    defer { port.close() }
    return port.features.multishotReceiveLimit
}()

extension RingPortTests {
    @Suite struct MultishotTests {
        @Test func probeFindsTheFeaturesOfThisKernel() throws {
            let features = try IOURingFeatures.probe()
            // The machines this project runs on have Linux 6.x; the fallbacks are tested by
            // disabling features, not by this probe.
            #expect(features.multishotAccept)
            #expect(features.providedBufferRings)
            #expect(features.multishotReceive)
            #expect(features.zeroCopySend)
            #expect(features.description.contains("multishot receive (6.0)"))
        }

        @Test func multishotAcceptCompletesOncePerConnection() throws {
            let port = try makeSingleRingPort(backend: .ioURing)
            let worker = port.makeWorker()
            let listenerDescriptor = try TCPSocket.makeListener(address: SocketAddress(host: "127.0.0.1", port: 0))
            let address = try TCPSocket.localAddress(of: listenerDescriptor)
            let listener = try port.associate(descriptor: listenerDescriptor)
            let context = IOContext(capacity: 0)
            try port.acceptMultishot(on: listener, context: context)
            let clients = try (0..<5).map { _ in try TCPSocket.connect(to: address) }
            var accepted: [Int32] = []
            while accepted.count < 5 {
                let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                #expect(completion.operation == .accept)
                #expect(completion.hasMore)
                #expect(context.isInFlight, "the context stays with the port while the accept goes on")
                accepted.append(try #require(completion.acceptedDescriptor))
            }
            #expect(Set(accepted).count == 5)
            // Cancelling ends it with one last completion that hands the context back.
            #expect(try port.cancel(context))
            let last = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(!last.hasMore)
            #expect(last.isCancelled)
            #expect(!context.isInFlight)
            accepted.forEach { close($0) }
            clients.forEach { close($0) }
            port.close(listener)
            worker.detach()
            port.close()
        }

        @Test func multishotReceiveFillsProvidedBuffersUntilThePeerCloses() throws {
            let (port, worker, handle, context, right) = try startMultishotReceive(buffers: 8, size: 64)
            #expect(port.supportsMultishotReceive)

            var received: [UInt8] = []
            let message = Array((0..<200).map { UInt8($0) })
            #expect(write(right, message, message.count) == message.count)
            while received.count < message.count {
                let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                #expect(completion.operation == .read)
                #expect(completion.hasMore)
                let buffer = try #require(completion.receivedBuffer)
                #expect(buffer.count == completion.bytesTransferred)
                #expect(buffer.count <= 64)
                received += buffer.bytes
                buffer.release()
            }
            #expect(received == message)
            #expect(port.statistics.buffersOutstanding == 0)

            close(right)
            let end = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(end.bytesTransferred == 0)
            #expect(end.error == nil)
            #expect(!end.hasMore)
            #expect(end.receivedBuffer == nil)
            #expect(!context.isInFlight)
            port.close(handle)
            worker.detach()
            port.close()
        }

        /// A buffer that a pool worker's handler releases goes back to the kernel with the
        /// worker's next pass through the ring's lock: it still counts as outstanding right after
        /// the release, and is back once the worker dequeues again. With two buffers, 50 messages
        /// in turn all come through: none stays behind.
        @Test func aBufferReleasedOnAPoolWorkerGoesBackWithItsNextDequeue() throws {
            var configuration = CompletionPort.Configuration()
            configuration.backend = .ioURing
            configuration.ringCount = 1
            configuration.providedBuffers = .init(count: 2, size: 64)
            let port = try CompletionPort(configuration: configuration)
            let (left, right) = try makeSocketPair()
            defer { close(right) }
            let handle = try port.associate(descriptor: left)
            let received = LockedBox<[UInt8]>([])
            let outstandingAfterRelease = LockedBox<[Int]>([])
            let workers = WorkerPool(port: port, threadCount: 1) { completion in
                guard let buffer = completion.receivedBuffer else { return }
                received.withLock { $0 += buffer.bytes }
                buffer.release()
                outstandingAfterRelease.withLock { $0.append(port.statistics.buffersOutstanding) }
            }
            try workers.start()
            try port.receiveMultishot(handle, context: IOContext(capacity: 0))
            var sent: [UInt8] = []
            for index in 0..<50 {
                let message = [UInt8](repeating: UInt8(index), count: 32)
                #expect(write(right, message, message.count) == message.count)
                sent += message
                #expect(eventually { received.withLock { $0.count } == sent.count })
            }
            #expect(received.withLock { $0 } == sent)
            #expect(eventually { port.statistics.buffersOutstanding == 0 })
            #expect(outstandingAfterRelease.withLock { $0 }.allSatisfy { $0 == 1 })
            port.close(handle)
            #expect(eventually { port.statistics.operationsInFlight == 0 })
            workers.shutdown()
            port.close()
        }

        /// A multishot receive limited to 8 KiB that a takeover migrates (the new leader cancels
        /// it and submits it again from its own thread) keeps what is left of its limit: it ends
        /// after 8 KiB in all. Before, the request went again with its whole limit: 6 KiB before
        /// the takeover and 8 KiB after.
        @Test(.enabled(if: kernelHonoursMultishotReceiveLimit))
        func aLimitedReceiveKeepsWhatIsLeftOfItsLimitAcrossATakeover() throws {
            var configuration = CompletionPort.Configuration()
            configuration.backend = .ioURing
            configuration.ringCount = 1
            configuration.workerCount = 3
            configuration.stallThreshold = .milliseconds(2)
            configuration.providedBuffers = .init(count: 64, size: 1024)
            configuration.logger.logLevel = .error
            let port = try CompletionPort(configuration: configuration)
            let (left, right) = try makeSocketPair()
            defer { close(right) }
            let handle = try port.associate(descriptor: left)
            let delivered = LockedBox(0)
            let ended = LockedBox(false)
            let workers = WorkerPool(port: port) { completion in
                // The posted completion's handler blocks: a standby takes the ring over.
                if completion.operation == .user {
                    usleep(50_000)
                    return
                }
                if let buffer = completion.receivedBuffer {
                    delivered.withLock { $0 += buffer.count }
                    buffer.release()
                }
                if !completion.hasMore { ended.withLock { $0 = true } }
            }
            try workers.start()
            try port.receiveMultishot(handle, context: IOContext(capacity: 0), limit: 8192)
            let message = [UInt8](repeating: 0x6B, count: 1024)
            for count in 1...6 {
                #expect(write(right, message, message.count) == message.count)
                #expect(eventually { delivered.withLock { $0 } == count * 1024 })
            }
            let takeoversBefore = port.statistics.leaderTakeovers
            try port.post(value: 1)
            #expect(eventually { port.statistics.leaderTakeovers > takeoversBefore }, "no takeover")
            usleep(200_000)  // the new leader migrated the receive; the old one is back and parked
            for _ in 1...8 {
                _ = write(right, message, message.count)
                usleep(2_000)
            }
            #expect(eventually { ended.withLock { $0 } }, "the receive did not end")
            usleep(50_000)
            let total = delivered.withLock { $0 }
            #expect(total >= 8192 && total <= 8192 + 1024, "delivered \(total) bytes")
            port.close(handle)
            #expect(eventually { port.statistics.operationsInFlight == 0 })
            workers.shutdown()
            port.close()
        }

        @Test func exhaustedBuffersEndTheReceiveWithENOBUFSAndItResumes() throws {
            let (port, worker, handle, context, right) = try startMultishotReceive(buffers: 2, size: 16)

            // Hold every buffer: the third arrival finds the ring empty.
            var held: [ReceivedBuffer] = []
            var sawNoBuffers = false
            var received = 0
            let total = 16 * 6
            var sent = 0
            func sendSixteenMoreBytes() {
                guard sent < total else { return }
                #expect(write(right, [UInt8](repeating: 7, count: 16), 16) == 16)
                sent += 16
            }
            while !sawNoBuffers {
                sendSixteenMoreBytes()
                let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                if let buffer = completion.receivedBuffer {
                    received += buffer.count
                    held.append(buffer)
                } else if completion.error == .noBufferSpace {
                    #expect(!completion.hasMore)
                    sawNoBuffers = true
                }
            }
            #expect(port.statistics.buffersOutstanding == 2)
            held.forEach { $0.release() }
            held.removeAll()
            // Buffers are back: post again and get the rest.
            try port.receiveMultishot(handle, context: context)
            while received < total {
                sendSixteenMoreBytes()
                let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                if let buffer = completion.receivedBuffer {
                    received += buffer.count
                    buffer.release()
                } else if completion.error == .noBufferSpace {
                    try port.receiveMultishot(handle, context: context)
                }
            }
            #expect(received == total)
            port.close(handle)
            _ = try worker.dequeue(timeout: .seconds(5))  // the cancelled receive
            close(right)
            worker.detach()
            port.close()
            #expect(port.statistics.buffersOutstanding == 0)
        }

        @Test func zeroCopySendCompletesOnceWithTheBytesSent() throws {
            let port = try makeSingleRingPort(backend: .ioURing)
            let worker = port.makeWorker()
            let (peer, accepted) = try makeLoopbackTCPPair()
            defer { close(peer) }
            let handle = try port.associate(descriptor: accepted)
            let payload = SeededGenerator(state: 5).bytesArray(count: 200_000)
            let context = IOContext(capacity: payload.count)
            context.copyBytes(from: payload)
            try port.writeZeroCopy(handle, from: context, range: 0..<payload.count)
            var received: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            var sent = 0
            while received.count < payload.count {
                let count = recv(peer, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                if count > 0 { received += buffer[0..<count] }
                if let completion = try worker.dequeue(timeout: .milliseconds(1)) {
                    #expect(completion.operation == .write)
                    #expect(!completion.hasMore)
                    #expect(!context.isInFlight, "the context comes back only with the notification")
                    sent += completion.bytesTransferred
                    if sent < payload.count {
                        try port.writeZeroCopy(handle, from: context, range: sent..<payload.count)
                    }
                }
            }
            #expect(received == payload)
            port.close(handle)
            worker.detach()
            port.close()
        }
    }
}
