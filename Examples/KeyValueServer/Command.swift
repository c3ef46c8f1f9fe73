/// One request line of the key-value protocol, parsed.
///
/// ```
/// SET key value    → OK            (the value is the rest of the line, spaces included)
/// GET key          → VALUE value   or NOT_FOUND
/// DEL key          → DELETED       or NOT_FOUND
/// anything else    → ERR ...       (the connection stays open)
/// ```
/// Keys are one word; command names are case-insensitive.
enum Command: Equatable {
    case set(key: String, value: String)
    case get(key: String)
    case delete(key: String)

    /// Parses `line` (without its line ending); throws a message for the `ERR` reply.
    init(parsing line: Substring) throws(CommandError) {
        let name = line.prefix { $0 != " " }
        let arguments = line.dropFirst(name.count).drop { $0 == " " }
        let key = arguments.prefix { $0 != " " }
        let rest = arguments.dropFirst(key.count)
        switch name.uppercased() {
        case "SET":
            guard !key.isEmpty, rest.first == " " else { throw CommandError("usage: SET key value") }
            self = .set(key: String(key), value: String(rest.dropFirst()))
        case "GET":
            guard !key.isEmpty, rest.isEmpty else { throw CommandError("usage: GET key") }
            self = .get(key: String(key))
        case "DEL":
            guard !key.isEmpty, rest.isEmpty else { throw CommandError("usage: DEL key") }
            self = .delete(key: String(key))
        case "":
            throw CommandError("empty command")
        default:
            throw CommandError("unknown command '\(name.prefix(32))'")
        }
    }
}

/// Why a line is not a command: the text of the `ERR` reply.
struct CommandError: Error {
    let message: String

    init(_ message: String) {
        self.message = message
    }
}
