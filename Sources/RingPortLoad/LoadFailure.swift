import RingPort

/// Why a load run could not be set up or run: printed as `ringport load: <message>`, exit status 1.
package struct LoadFailure: Error, CustomStringConvertible {
    let message: String

    init(_ message: String) {
        self.message = message
    }

    package var description: String { message }
}
