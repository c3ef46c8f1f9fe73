import ArgumentParser
import NIOCore

#if TLS
import NIOSSL
#endif

/// `ringport nio-echo`'s TLS options: with a certificate chain and its private key (PEM files),
/// every connection's pipeline starts with NIOSSL's `NIOSSLServerHandler`, so the echo handler
/// reads and writes plaintext while the peer speaks TLS.
struct EchoTLSOptions: ParsableArguments {
    @Option(help: "A PEM file with the server's certificate chain (leaf first): serve TLS (needs --tls-private-key).")
    var tlsCertificateChain: String?

    @Option(help: "A PEM file with the private key of the certificate chain's leaf.")
    var tlsPrivateKey: String?

    func validate() throws {
        guard (tlsCertificateChain == nil) == (tlsPrivateKey == nil) else {
            throw ValidationError("--tls-certificate-chain and --tls-private-key go together")
        }
        #if !TLS
        if tlsCertificateChain != nil {
            throw ValidationError("this ringport was built without TLS (the package's TLS trait is off)")
        }
        #endif
    }

    /// The server-side TLS set-up to share between all connections, or nil without TLS. Reads
    /// and checks the files; a file that cannot be read as PEM, or a key that does not match the
    /// certificate, throws an ``EchoTLSError`` that says which.
    func makeServerTLS() throws(EchoTLSError) -> EchoServerTLS? {
        guard let tlsCertificateChain, let tlsPrivateKey else { return nil }
        #if TLS
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(tlsCertificateChain)
        } catch {
            throw EchoTLSError("cannot read the certificate chain \(tlsCertificateChain) as PEM (\(error))")
        }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: tlsPrivateKey, format: .pem)
        } catch {
            throw EchoTLSError("cannot read the private key \(tlsPrivateKey) as PEM (\(error))")
        }
        let configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        do {
            return EchoServerTLS(context: try NIOSSLContext(configuration: configuration))
        } catch {
            throw EchoTLSError("the private key does not fit the certificate chain's leaf (\(error))")
        }
        #else
        return nil
        #endif
    }
}

/// Why `nio-echo` cannot serve TLS with the files it was given.
struct EchoTLSError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) {
        self.description = description
    }
}

/// A TLS context shared by every connection of a server (NIOSSL's contexts are thread-safe).
struct EchoServerTLS: Sendable {
    #if TLS
    let context: NIOSSLContext

    /// Puts TLS first in a new connection's pipeline. On the channel's event loop.
    func addHandler(to channel: Channel) throws {
        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
    }
    #else
    func addHandler(to channel: Channel) throws {}
    #endif
}
