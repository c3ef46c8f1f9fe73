import Foundation
import Glibc
import RingPortTestSupport
import SystemPackage
import Testing

@testable import RingPort

extension RingPortTests {
    /// UDP through the port: `receiveMessage` / `sendMessage` over real sockets on loopback.
    @Suite struct DatagramTests {
        /// Three clients send datagrams of random sizes (0 bytes to the IPv4 maximum) to a port
        /// whose workers echo each one back to the address it came from; every client gets its
        /// own bytes back, and the server saw each client's address once per datagram.
        @Test(arguments: ["127.0.0.1", "::1"])
        func echoesDatagramsOfRandomSizesToTheirSenders(host: String) throws {
            let port = try makeSingleRingPort()
            let server = try port.associate(descriptor: UDPSocket.makeBound(to: SocketAddress(host: host, port: 0)))
            let serverAddress = try UDPSocket.localAddress(of: server.descriptor)
            let senders = LockedBox<[SocketAddress: Int]>([:])
            let failures = LockedBox<[String]>([])
            let pool = WorkerPool(port: port, threadCount: 2) { completion in
                guard let handle = completion.handle, let context = completion.context else { return }
                if completion.isCancelled { return }
                do throws(RingPortError) {
                    if let error = completion.error {
                        throw RingPortError(.systemCallFailed, operation: "\(completion)", errno: error)
                    }
                    switch completion.operation {
                    case .receiveMessage:
                        guard let sender = context.messageSenderAddress, !context.isMessageTruncated else {
                            throw RingPortError(.invalidArgument, operation: "no sender, or truncated: \(completion)")
                        }
                        senders.withLock { $0[sender, default: 0] += 1 }
                        try port.sendMessage(handle, from: context, range: 0..<completion.bytesTransferred, to: sender)
                    case .sendMessage:
                        try port.receiveMessage(handle, into: context)
                    default:
                        throw RingPortError(.invalidArgument, operation: "unexpected \(completion)")
                    }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
            try pool.start()
            for _ in 0..<4 {
                try port.receiveMessage(server, into: IOContext(capacity: 65536))
            }

            let clients = try (0..<3).map { _ in try DatagramClient(host: host) }
            defer { clients.forEach { $0.close() } }
            var random = SeededGenerator(state: host == "::1" ? 6 : 4)
            var sent = [Int](repeating: 0, count: clients.count)
            for round in 0..<200 {
                // Mostly every client at once with small datagrams; every 8th round one client
                // alone with a large one (three of those at once could overflow the server's
                // receive buffer, and UDP would rightly drop one).
                let active: [Int]
                let sizes: [Int]
                if round == 0 {
                    (active, sizes) = ([0, 1, 2], [0, 1, 1472])
                } else if round % 8 == 7 {
                    (active, sizes) = ([round % 3], [round == 7 ? 65507 : Int.random(in: 1473...65507, using: &random)])
                } else {
                    (active, sizes) = ([0, 1, 2], (0..<3).map { _ in Int.random(in: 0...1472, using: &random) })
                }
                let payloads = sizes.map { random.bytes(count: $0) }
                for (client, payload) in zip(active, payloads) {
                    try clients[client].send(payload, to: serverAddress)
                    sent[client] += 1
                }
                for (client, payload) in zip(active, payloads) {
                    let (reply, source) = try clients[client].receive()
                    #expect(reply.count == payload.count, "round \(round), client \(client)")
                    #expect(firstDifference(reply, payload) == nil, "round \(round), client \(client)")
                    #expect(source == serverAddress)
                }
            }

            #expect(failures.withLock { $0 } == [])
            let expected = Dictionary(uniqueKeysWithValues: zip(clients.map(\.address), sent))
            #expect(senders.withLock { $0 } == expected)
            #expect(Set(clients.map(\.address)).count == clients.count)
            // Closing the handle cancels the four receives; the handler takes their completions.
            port.close(server)
            #expect(eventually { port.statistics.operationsInFlight == 0 && port.statistics.completionsWaiting == 0 })
            pool.shutdown()
            port.close()
        }

        /// A datagram longer than the range: the bytes that fit land in the range (the rest of
        /// the buffer untouched), the truncation is reported, and the rest is gone.
        @Test func reportsATruncatedDatagramAndKeepsTheBytesThatFit() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let server = try port.associate(
                descriptor: UDPSocket.makeBound(to: SocketAddress(host: "127.0.0.1", port: 0)))
            let serverAddress = try UDPSocket.localAddress(of: server.descriptor)
            let client = try DatagramClient(host: "127.0.0.1")
            defer { client.close() }
            let context = IOContext(capacity: 64)
            let filler = [UInt8](repeating: 0xEE, count: 64)
            context.copyBytes(from: filler)
            let long = (0..<100).map { UInt8($0) }

            try port.receiveMessage(server, into: context, range: 20..<30)
            try client.send(long, to: serverAddress)
            let truncated = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(truncated.operation == .receiveMessage)
            #expect(truncated.error == nil)
            #expect(truncated.bytesTransferred == 10)
            #expect(context.isMessageTruncated)
            #expect(context.messageSenderAddress == client.address)
            #expect(context.bytes(in: 20..<30) == Array(long[0..<10]))
            #expect(context.bytes(in: 0..<20) == Array(filler[0..<20]))
            #expect(context.bytes(in: 30..<64) == Array(filler[30..<64]))

            // The next receive gets the next datagram, not the rest of the long one.
            try port.receiveMessage(server, into: context)
            try client.send([1, 2, 3, 4, 5], to: serverAddress)
            let whole = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(whole.bytesTransferred == 5)
            #expect(!context.isMessageTruncated)
            #expect(context.bytes(in: 0..<5) == [1, 2, 3, 4, 5])

            // An empty datagram is a datagram: 0 bytes, no error, a sender.
            try port.receiveMessage(server, into: context)
            try client.send([], to: serverAddress)
            let empty = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(empty.result == 0)
            #expect(!context.isMessageTruncated)
            #expect(context.messageSenderAddress == client.address)
            port.close(server)
            worker.detach()
            port.close()
        }

        /// What the kernel does with a datagram to a port nobody listens on: the send succeeds
        /// either way; an unconnected socket never hears of the ICMP "port unreachable", a
        /// connected one reports `ECONNREFUSED` on its next receive.
        @Test func aDatagramToAClosedPortIsRefusedOnlyOnAConnectedSocket() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let closed = try UDPSocket.makeBound(to: SocketAddress(host: "127.0.0.1", port: 0))
            let closedAddress = try UDPSocket.localAddress(of: closed)
            Glibc.close(closed)
            let context = IOContext(capacity: 64)
            context.copyBytes(from: Array("anyone?".utf8))

            let unconnected = try port.associate(
                descriptor: UDPSocket.makeBound(to: SocketAddress(host: "127.0.0.1", port: 0)))
            try port.sendMessage(unconnected, from: context, range: 0..<7, to: closedAddress)
            let sentUnconnected = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(sentUnconnected.operation == .sendMessage)
            #expect(sentUnconnected.error == nil)
            #expect(sentUnconnected.bytesTransferred == 7)
            // Its next receive delivers the next datagram, not an error.
            let client = try DatagramClient(host: "127.0.0.1")
            defer { client.close() }
            try port.receiveMessage(unconnected, into: context)
            try client.send(Array("hello".utf8), to: UDPSocket.localAddress(of: unconnected.descriptor))
            let received = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(received.error == nil)
            #expect(received.bytesTransferred == 5)
            #expect(context.messageSenderAddress == client.address)

            let connectedDescriptor = try UDPSocket.makeBound(to: SocketAddress(host: "127.0.0.1", port: 0))
            try UDPSocket.connect(connectedDescriptor, to: closedAddress)
            let connected = try port.associate(descriptor: connectedDescriptor)
            try port.sendMessage(connected, from: context, range: 0..<5, to: nil)
            let sentConnected = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(sentConnected.error == nil)
            #expect(sentConnected.bytesTransferred == 5)
            try port.receiveMessage(connected, into: context)
            let refused = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(refused.operation == .receiveMessage)
            #expect(refused.error == .connectionRefused)
            #expect(context.messageSenderAddress == nil)
            port.close(unconnected)
            port.close(connected)
            worker.detach()
            port.close()
        }

        /// Sends the kernel refuses complete with its errno; nothing is sent.
        @Test func sendMessageReportsTheKernelsRefusals() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let socket = try port.associate(
                descriptor: UDPSocket.makeBound(to: SocketAddress(host: "127.0.0.1", port: 0)))
            let peer = try DatagramClient(host: "127.0.0.1")
            defer { peer.close() }
            let context = IOContext(capacity: 70000)

            // An IPv6 address on an IPv4 socket.
            try port.sendMessage(
                socket, from: context, range: 0..<8, to: SocketAddress(host: "::1", port: peer.address.port))
            #expect(try worker.dequeue(timeout: .seconds(5))?.error == .addressFamilyNotSupported)
            // More than a UDP datagram can hold.
            try port.sendMessage(socket, from: context, range: 0..<65508, to: peer.address)
            #expect(try worker.dequeue(timeout: .seconds(5))?.error == .messageTooLong)
            // The datagram the peer gets next is the first that could be sent.
            try port.sendMessage(socket, from: context, range: 0..<3, to: peer.address)
            #expect(try worker.dequeue(timeout: .seconds(5))?.bytesTransferred == 3)
            #expect(try peer.receive().bytes.count == 3)
            // A range outside the buffer is refused before anything is queued.
            #expect(throws: RingPortError.self) {
                try port.sendMessage(socket, from: context, range: 0..<70001, to: peer.address)
            }
            #expect(!context.isInFlight)
            port.close(socket)
            worker.detach()
            port.close()
        }

        /// A pending receive that is cancelled completes with `ECANCELED`, reports no sender
        /// (not the previous datagram's), and the context then receives again.
        @Test func cancellingAPendingReceiveLeavesTheContextReusable() throws {
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let server = try port.associate(descriptor: UDPSocket.makeBound(to: SocketAddress(host: "::1", port: 0)))
            let serverAddress = try UDPSocket.localAddress(of: server.descriptor)
            let client = try DatagramClient(host: "::1")
            defer { client.close() }
            let context = IOContext(capacity: 32)

            try port.receiveMessage(server, into: context)
            try client.send(Array("first".utf8), to: serverAddress)
            #expect(try worker.dequeue(timeout: .seconds(5))?.bytesTransferred == 5)
            #expect(context.messageSenderAddress == client.address)

            try port.receiveMessage(server, into: context)
            #expect(context.isInFlight)
            #expect(try port.cancel(context))
            let cancelled = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(cancelled.operation == .receiveMessage)
            #expect(cancelled.isCancelled)
            #expect(cancelled.error == .canceled)
            #expect(cancelled.context === context)
            #expect(!context.isInFlight)
            #expect(context.messageSenderAddress == nil)
            #expect(!context.isMessageTruncated)

            try port.receiveMessage(server, into: context)
            try client.send(Array("again".utf8), to: serverAddress)
            let again = try #require(try worker.dequeue(timeout: .seconds(5)))
            #expect(again.error == nil)
            #expect(again.bytesTransferred == 5)
            #expect(context.bytes(in: 0..<5) == Array("again".utf8))
            #expect(context.messageSenderAddress == client.address)
            port.close(server)
            worker.detach()
            port.close()
        }

        /// Contexts that never carry a datagram pay nothing for them: no scratch at all for
        /// plain operations, the plain scratch (no bigger than before datagrams existed) for
        /// timers, and the message scratch only after a datagram operation, which keeps
        /// serving timers afterwards.
        @Test func onlyDatagramContextsCarryTheMessageScratch() throws {
            // sockaddr_storage (128) + socklen_t and the flag (8) + __kernel_timespec (16).
            #expect(MemoryLayout<IOContext.Scratch>.size == 152)
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let socket = try port.associate(
                descriptor: UDPSocket.makeBound(to: SocketAddress(host: "127.0.0.1", port: 0)))
            let context = IOContext(capacity: 16)

            try port.nop(context: context)
            #expect(try worker.dequeue(timeout: .seconds(5))?.operation == .nop)
            #expect(context.scratchByteCount == 0)
            try port.timeout(after: .zero, context: context)
            #expect(try worker.dequeue(timeout: .seconds(5))?.operation == .timeout)
            #expect(context.scratchByteCount == MemoryLayout<IOContext.Scratch>.size)

            try port.sendMessage(socket, from: context, range: 0..<4, to: UDPSocket.localAddress(of: socket.descriptor))
            #expect(try worker.dequeue(timeout: .seconds(5))?.bytesTransferred == 4)
            #expect(context.scratchByteCount == MemoryLayout<IOContext.MessageScratch>.size)
            try port.receiveMessage(socket, into: context)
            #expect(try worker.dequeue(timeout: .seconds(5))?.bytesTransferred == 4)
            let timer = try #require(
                try {
                    try port.timeout(after: .zero, context: context)
                    return try worker.dequeue(timeout: .seconds(5))
                }())
            #expect(timer.operation == .timeout)
            #expect(timer.error == nil)
            #expect(context.scratchByteCount == MemoryLayout<IOContext.MessageScratch>.size)
            port.close(socket)
            worker.detach()
            port.close()
        }
    }
}

/// A blocking UDP socket bound to an ephemeral loopback port, for the test side of datagram
/// tests. Receives wait at most 10 s, then fail.
private struct DatagramClient {
    let descriptor: Int32
    let address: SocketAddress

    init(host: String) throws {
        descriptor = try UDPSocket.makeBound(to: SocketAddress(host: host, port: 0))
        address = try UDPSocket.localAddress(of: descriptor)
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ bytes: [UInt8], to destination: SocketAddress) throws {
        let result = bytes.withUnsafeBytes { buffer in
            destination.withSocketAddress { sendto(descriptor, buffer.baseAddress, buffer.count, 0, $0, $1) }
        }
        guard result == bytes.count else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }

    /// The next datagram (up to 64 KiB) and where it came from.
    func receive() throws -> (bytes: [UInt8], source: SocketAddress?) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        while true {
            let result = buffer.withUnsafeMutableBytes { bytes in
                withUnsafeMutablePointer(to: &storage) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(descriptor, bytes.baseAddress, bytes.count, 0, $0, &length)
                    }
                }
            }
            if result < 0 && errno == EINTR { continue }
            guard result >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            return (Array(buffer[0..<result]), SocketAddress(storage: storage, length: length))
        }
    }

    func close() {
        _ = Glibc.close(descriptor)
    }
}
