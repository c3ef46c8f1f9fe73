import Foundation

/// A self-signed certificate for `localhost` and 127.0.0.1 (P-256, valid for two days) and its
/// private key, made for one test by the `openssl` command in a directory of its own, as PEM
/// files. ``remove()`` deletes the directory.
package struct TestCertificate: Sendable {
    /// The directory holding the two files.
    package let directory: String

    /// The certificate (PEM); it is its own chain and its own root.
    package var certificatePath: String { directory + "/certificate.pem" }

    /// The certificate's private key (PEM, unencrypted).
    package var privateKeyPath: String { directory + "/private-key.pem" }

    /// Makes a key and a certificate with `openssl req -x509`; throws if openssl fails.
    package init() throws {
        directory = NSTemporaryDirectory() + "ringport-tls-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", directory + "/private-key.pem", "-out", directory + "/certificate.pem", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ]
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        let message = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            try? FileManager.default.removeItem(atPath: directory)
            throw TestCertificateError(message: String(decoding: message, as: UTF8.self))
        }
    }

    /// Deletes the files.
    package func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// `openssl req` failed; `message` is what it printed.
package struct TestCertificateError: Error, CustomStringConvertible {
    package let message: String
    package var description: String { "openssl req failed: \(message)" }
}
