#if TLS
import NIOCore
import NIOSSL
import RingPort
import RingPortNIO
import RingPortTestSupport
import Testing

extension RingPortNIOTests {
    /// TLS through NIOSSL on RingPortNIO channels, both ends on the port, with a certificate
    /// made for the test.
    @Suite struct TLSTests {
        /// 100 concurrent clients behind NIOSSLClientHandler, each sending 3 random messages of
        /// up to 40,000 bytes (several TLS records each) to an echo server behind
        /// NIOSSLServerHandler: each client gets exactly its bytes back; then every descriptor
        /// is closed again.
        @Test func aHundredTLSClientsAreEchoedByteExact() throws {
            try withTLSEchoServer { group, port, clientContext in
                try expectEchoedByteExact(clients: 100, messagesEach: 3, seed: 61) { recorder in
                    try connectTLSClient(on: group, port: port, context: clientContext, recorder: recorder)
                }
            }
        }

        /// A client that does not trust the certificate fails its handshake with NIOSSL's
        /// error and its channel closes; a plaintext peer sending garbage is closed by the
        /// server; a TLS client after both is still served.
        @Test func failedHandshakesCloseOnlyTheirConnection() throws {
            try withTLSEchoServer { group, port, clientContext in
                // The default trust roots do not include the test's certificate.
                let untrusting = try NIOSSLContext(configuration: .makeClientConfiguration())
                let refusedRecorder = RecordingHandler()
                let refused = try connectTLSClient(
                    on: group, port: port, context: untrusting, recorder: refusedRecorder)
                refused.writeAndFlush(ByteBuffer(string: "never sent"), promise: nil)
                try refused.closeFuture.wait()
                #expect(
                    refusedRecorder.errors.withLock { $0 }.contains { $0 is NIOSSLError }, "\(refusedRecorder.errors)")
                #expect(refusedRecorder.received.withLock { $0 }.isEmpty)

                let plaintext = try BlockingClient(
                    connectingTo: SocketAddress(host: "127.0.0.1", port: UInt16(port)), receiveTimeout: .seconds(5))
                try plaintext.send(Array("GET / HTTP/1.1\r\nHost: not-tls\r\n\r\n".utf8))
                #expect(try plaintext.receive(count: 4096).count < 100, "at most a TLS alert, then the close")
                plaintext.close()

                let recorder = RecordingHandler()
                let client = try connectTLSClient(on: group, port: port, context: clientContext, recorder: recorder)
                client.writeAndFlush(ByteBuffer(string: "still served"), promise: nil)
                #expect(eventually { recorder.received.withLock { $0.count } >= 12 })
                #expect(recorder.received.withLock { $0 } == Array("still served".utf8))
                try client.close().wait()
            }
        }
    }
}

/// Runs `body` with a group, the port of a TLS echo server on it (a certificate made for the
/// test) and a client context that trusts that certificate; then closes the server and checks
/// the group as ``withGroupLeavingNoDescriptors(sourceLocation:_:)`` does.
private func withTLSEchoServer(
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (RingPortEventLoopGroup, Int, NIOSSLContext) throws -> Void
) throws {
    // The certificate first: running openssl makes Foundation start a thread with descriptors
    // of its own (epoll, eventfd, sockets) that stay for the life of the process.
    let certificate = try TestCertificate()
    defer { certificate.remove() }
    let (serverContext, clientContext) = try makeContexts(certificate)
    try withGroupLeavingNoDescriptors(sourceLocation: sourceLocation) { group in
        let server = try startTLSEchoServer(on: group, context: serverContext)
        defer { try? server.close().wait() }
        try body(group, server.localAddress!.port!, clientContext)
    }
}

/// The server's context (the certificate and its key) and a client's that trusts the
/// certificate as its only root.
private func makeContexts(_ certificate: TestCertificate) throws -> (server: NIOSSLContext, client: NIOSSLContext) {
    let chain = try NIOSSLCertificate.fromPEMFile(certificate.certificatePath)
    let key = try NIOSSLPrivateKey(file: certificate.privateKeyPath, format: .pem)
    let server = try NIOSSLContext(
        configuration: .makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key)))
    var clientConfiguration = TLSConfiguration.makeClientConfiguration()
    clientConfiguration.trustRoots = .certificates(chain)
    return (server, try NIOSSLContext(configuration: clientConfiguration))
}

/// A listening echo server on loopback whose pipelines are NIOSSLServerHandler, then EchoHandler.
private func startTLSEchoServer(on group: RingPortEventLoopGroup, context: NIOSSLContext) throws -> Channel {
    try RingPortServerBootstrap(group: group)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                try channel.pipeline.syncOperations.addHandler(EchoHandler())
            }
        }
        .bind(host: "127.0.0.1", port: 0)
        .wait()
}

/// A client channel whose pipeline is NIOSSLClientHandler (for `localhost`), then `recorder`.
private func connectTLSClient(
    on group: RingPortEventLoopGroup, port: Int, context: NIOSSLContext, recorder: RecordingHandler
) throws -> Channel {
    try RingPortClientBootstrap(group: group)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                try channel.pipeline.syncOperations.addHandler(recorder)
            }
        }
        .connect(host: "127.0.0.1", port: port)
        .wait()
}
#endif
