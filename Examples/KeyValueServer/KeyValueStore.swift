import Foundation

/// The keys and values, shared by every connection.
///
/// Thread-safety: ``execute(_:)`` may be called from any thread; connections on different rings
/// call it at the same time. (`NSLock` rather than `Synchronization.Mutex`: ThreadSanitizer
/// understands it.)
final class KeyValueStore: @unchecked Sendable {
    // @unchecked: `values` is only touched while `lock` is held.
    private let lock = NSLock()
    private var values: [String: String] = [:]

    /// Runs `command` and returns its reply line (without the line ending).
    func execute(_ command: Command) -> String {
        lock.lock()
        defer { lock.unlock() }
        switch command {
        case .set(let key, let value):
            values[key] = value
            return "OK"
        case .get(let key):
            return values[key].map { "VALUE \($0)" } ?? "NOT_FOUND"
        case .delete(let key):
            return values.removeValue(forKey: key) == nil ? "NOT_FOUND" : "DELETED"
        }
    }

    /// The number of keys.
    var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return values.count
    }
}
