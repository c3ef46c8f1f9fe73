import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import Testing

/// The same operations on both backends, side by side in one run, where the epoll backend
/// emulates completions over readiness and could differ: data and the peer's FIN reported by one
/// edge-triggered event, receives that wait and are cancelled or closed, sends that fill the
/// socket buffer, connects, positioned file I/O on its thread pool. (The whole suite also runs
/// once per backend: `make test` sets `RINGPORT_BACKEND=epoll` for its second pass.)
extension RingPortTests {
    @Suite struct BackendEquivalenceTests {
        static let backends: [CompletionPort.Backend] = [.ioURing, .epoll]

        /// A receive waits for data; then 150 bytes and the FIN arrive together. Receives of
        /// 100 bytes get 100, 50 and then 0 (end of stream): the short second one must not make
        /// the third wait for an event that was already reported.
        @Test(arguments: backends)
        func dataAndFINInOneEventAreAllReceived(backend: CompletionPort.Backend) throws {
            try withConnection(on: backend) { port, worker, client, handle in
                let context = IOContext(capacity: 100)
                try port.read(handle, into: context)
                #expect(try worker.dequeue(timeout: .milliseconds(50)) == nil)
                let payload = SeededGenerator(state: 3).bytesArray(count: 150)
                #expect(send(client, payload, payload.count, 0) == 150)
                shutdown(client, Int32(SHUT_WR))

                var received: [UInt8] = []
                var results: [Int32] = []
                while results.last != 0 && results.count < 5 {
                    let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                    #expect(completion.operation == .read)
                    results.append(completion.result)
                    received += context.bytes(in: 0..<completion.bytesTransferred)
                    if completion.result > 0 { try port.read(handle, into: context) }
                }
                #expect(results == [100, 50, 0])
                #expect(received == payload)
            }
        }

        /// A receive waiting for data is cancelled: it completes cancelled, its context is the
        /// application's again, and bytes sent afterwards go to the next receive, none lost.
        @Test(arguments: backends)
        func aWaitingReceiveIsCancelledAndNothingIsLost(backend: CompletionPort.Backend) throws {
            try withConnection(on: backend) { port, worker, client, handle in
                let context = IOContext(capacity: 64)
                try port.read(handle, into: context)
                #expect(try worker.dequeue(timeout: .milliseconds(20)) == nil)
                #expect(try port.cancel(context))
                let cancelled = try #require(try worker.dequeue(timeout: .seconds(5)))
                #expect(cancelled.isCancelled)
                #expect(cancelled.context === context)
                #expect(!context.isInFlight)

                #expect(send(client, "after", 5, 0) == 5)
                try port.read(handle, into: context)
                let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                #expect(completion.result == 5)
                #expect(context.bytes(in: 0..<5) == Array("after".utf8))
            }
        }

        /// Closing a handle completes its waiting receive and send as cancelled (or with the
        /// result they reached first) and closes the descriptor: the peer sees end of stream.
        @Test(arguments: backends)
        func closingAHandleCompletesWhatWaitsOnIt(backend: CompletionPort.Backend) throws {
            try withConnection(on: backend) { port, worker, client, handle in
                let receive = IOContext(capacity: 64)
                try port.read(handle, into: receive)
                #expect(try worker.dequeue(timeout: .milliseconds(20)) == nil)
                port.close(handle)
                let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                #expect(completion.context === receive)
                #expect(completion.isCancelled)
                #expect(!receive.isInFlight)
                var byte: UInt8 = 0
                #expect(recv(client, &byte, 1, 0) == 0)
                #expect(throws: RingPortError.self) { try port.read(handle, into: receive) }
            }
        }

        /// A handle tracks every operation in flight on it, however many: of five receives
        /// waiting on one socket, one completes with the peer's byte, and closing the handle
        /// completes the other four as cancelled; none is left in flight.
        @Test(arguments: backends)
        func closingAHandleCompletesEveryOneOfManyWaitingReceives(backend: CompletionPort.Backend) throws {
            try withConnection(on: backend) { port, worker, client, handle in
                let receives = (0..<5).map { _ in IOContext(capacity: 16) }
                for receive in receives { try port.read(handle, into: receive) }
                #expect(try worker.dequeue(timeout: .milliseconds(20)) == nil)
                var byte: UInt8 = 42
                #expect(send(client, &byte, 1, 0) == 1)
                let first = try #require(try worker.dequeue(timeout: .seconds(5)))
                #expect(first.result == 1 && !first.isCancelled)
                port.close(handle)
                var cancelled: [ObjectIdentifier] = []
                for _ in 0..<4 {
                    let completion = try #require(try worker.dequeue(timeout: .seconds(5)))
                    #expect(completion.isCancelled)
                    cancelled.append(ObjectIdentifier(try #require(completion.context)))
                }
                let all = Set(receives.map(ObjectIdentifier.init))
                let firstContext = ObjectIdentifier(try #require(first.context))
                #expect(Set(cancelled + [firstContext]) == all)
                #expect(receives.allSatisfy { !$0.isInFlight })
                #expect(port.statistics.operationsInFlight == 0)
            }
        }

        /// Sends past what the socket buffers hold wait until the peer reads, then complete in
        /// order, every byte delivered once.
        @Test(arguments: backends)
        func sendsThatFillTheSocketBufferCompleteOnceThePeerReads(backend: CompletionPort.Backend) throws {
            try withConnection(on: backend) { port, worker, client, handle in
                var small: Int32 = 65536
                setsockopt(handle.descriptor, SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
                setsockopt(client, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))

                var generator = SeededGenerator(state: 8)
                let chunks = (0..<8).map { _ in generator.bytes(count: 256 * 1024) }
                let contexts = chunks.map { chunk in
                    let context = IOContext(capacity: chunk.count)
                    _ = context.copyBytes(from: chunk)
                    return context
                }
                // One send in flight at a time, as the server does; a short send goes on with the rest.
                var index = 0
                var sent = 0
                try port.write(handle, from: contexts[0], range: 0..<chunks[0].count)
                func handleCompletions(timeout: Duration) throws {
                    while index < contexts.count, let completion = try worker.dequeue(timeout: timeout) {
                        #expect(completion.context === contexts[index])
                        #expect(completion.result > 0, "\(completion)")
                        guard completion.result > 0 else { return }
                        sent += completion.bytesTransferred
                        if sent == chunks[index].count {
                            index += 1
                            sent = 0
                        }
                        if index < contexts.count {
                            try port.write(handle, from: contexts[index], range: sent..<chunks[index].count)
                        }
                    }
                }
                // Nobody reads yet: the sends stop short of the end.
                try handleCompletions(timeout: .milliseconds(100))
                #expect(index < contexts.count)

                let expected = chunks.flatMap { $0 }
                let readerResult = LockedBox<[UInt8]>([])
                let reader = Thread {
                    var received: [UInt8] = []
                    var buffer = [UInt8](repeating: 0, count: 65536)
                    while received.count < expected.count {
                        let count = recv(client, &buffer, buffer.count, 0)
                        if count <= 0 { break }
                        received += buffer[0..<count]
                    }
                    readerResult.withLock { $0 = received }
                }
                reader.start()
                try handleCompletions(timeout: .seconds(10))
                #expect(index == contexts.count)
                #expect(eventually { readerResult.withLock { $0.count } == expected.count })
                #expect(firstDifference(readerResult.withLock { $0 }, expected) == nil)
            }
        }

        /// A connect to a listener completes with 0 and the socket carries data; a connect to a
        /// closed port completes with `ECONNREFUSED`.
        @Test(arguments: backends)
        func connectsCompleteWithTheirResult(backend: CompletionPort.Backend) throws {
            try withPortAndWorker(on: backend) { port, worker in
                let listening = try loopbackAddressNobodyListensOn()
                let refusedHandle = try port.associate(descriptor: socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
                try port.connect(refusedHandle, to: listening, context: IOContext(capacity: 0))
                let refused = try #require(try worker.dequeue(timeout: .seconds(5)))
                #expect(refused.error == .connectionRefused)
                port.close(refusedHandle)

                let open = try TCPSocket.makeListener(address: SocketAddress(host: "127.0.0.1", port: 0))
                defer { close(open) }
                let handle = try port.associate(descriptor: socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
                try port.connect(handle, to: TCPSocket.localAddress(of: open), context: IOContext(capacity: 0))
                let connected = try #require(try worker.dequeue(timeout: .seconds(5)))
                #expect(connected.operation == .connect)
                #expect(connected.result == 0)
                let accepted = accept(open, nil, nil)
                defer { close(accepted) }
                #expect(accepted >= 0)
                let context = IOContext(capacity: 5)
                _ = context.copyBytes(from: Array("hello".utf8))
                try port.write(handle, from: context, range: 0..<5)
                #expect(try #require(try worker.dequeue(timeout: .seconds(5))).result == 5)
                var buffer = [UInt8](repeating: 0, count: 5)
                #expect(recv(accepted, &buffer, 5, Int32(MSG_WAITALL)) == 5)
                #expect(buffer == Array("hello".utf8))
                port.close(handle)
            }
        }

        /// A receive posted on a socket whose connect is still under way, to a closed port: the
        /// refusal ends both. Before, on the epoll backend, the receive took the socket's error
        /// and the connect waited for good.
        @Test(arguments: backends)
        func aRefusedConnectWithAReceiveQueuedBehindItStillCompletes(backend: CompletionPort.Backend) throws {
            try withPortAndWorker(on: backend) { port, worker in
                let closedAddress = try loopbackAddressNobodyListensOn()
                for _ in 1...20 {
                    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                    let handle = try port.associate(descriptor: descriptor)
                    try port.connect(handle, to: closedAddress, context: IOContext(capacity: 0))
                    try port.read(handle, into: IOContext(capacity: 16))
                    var results: [IOOperation: Int32] = [:]
                    while results.count < 2, let completion = try worker.dequeue(timeout: .seconds(5)) {
                        results[completion.operation] = completion.result
                    }
                    try #require(results.count == 2, "only \(results) completed")
                    #expect(results[.connect] == -ECONNREFUSED, "\(results)")
                    #expect(results[.read].map { $0 <= 0 } == true, "\(results)")
                    port.close(handle)
                }
            }
        }
    }
}

/// A loopback TCP address that a listener had a moment ago and nobody listens on now: a connect
/// to it is refused.
private func loopbackAddressNobodyListensOn() throws -> SocketAddress {
    let listener = try TCPSocket.makeListener(address: SocketAddress(host: "127.0.0.1", port: 0))
    defer { close(listener) }
    return try TCPSocket.localAddress(of: listener)
}

/// Runs `body` with a one-ring port on `backend` and a worker for this thread; detaches the
/// worker and closes the port afterwards.
private func withPortAndWorker(
    on backend: CompletionPort.Backend, _ body: (CompletionPort, CompletionWorker) throws -> Void
) throws {
    let port = try makeSingleRingPort(backend: backend)
    defer { port.close() }
    let worker = port.makeWorker()
    defer { worker.detach() }
    try body(port, worker)
}

/// Runs `body` with a one-ring port on `backend`, a worker for this thread, and a loopback TCP
/// connection: the accepted end associated with the port (`handle`), the client end a plain
/// socket. Closes all of them afterwards.
private func withConnection(
    on backend: CompletionPort.Backend,
    _ body: (CompletionPort, CompletionWorker, _ client: Int32, IOHandle) throws -> Void
) throws {
    try withPortAndWorker(on: backend) { port, worker in
        let (client, accepted) = try makeLoopbackTCPPair()
        defer { close(client) }
        let handle = try port.associate(descriptor: accepted)
        defer { port.close(handle) }
        try body(port, worker, client, handle)
    }
}
