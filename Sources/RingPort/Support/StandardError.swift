import Glibc

/// Lines for standard error, written with one `write(2)` each: unbuffered, so they appear at
/// once and in order, and safe from any thread (a line is never interleaved with another).
package enum StandardError {
    /// Writes `line` and a newline to standard error.
    package static func write(_ line: String) {
        var text = line
        text.append("\n")
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(STDERR_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { return }
                offset += written
            }
        }
    }
}
