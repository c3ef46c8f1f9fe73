import Logging
import RingPort
import RingPortServer

/// Splits what a connection receives into lines and answers each line with the store's reply.
///
/// Threads: ``TCPServer`` calls it on the port's worker threads, never twice at once for one
/// connection, so the unfinished line lives in the connection's `userState` without a lock.
/// Replies are written in one piece per receive, in the order of the lines.
struct KeyValueHandler: ConnectionHandler {
    let store: KeyValueStore
    /// The longest line accepted, without its line ending; a longer one closes the connection.
    let maximumLineLength: Int
    let logger: Logger

    func connectionOpened(_ connection: Connection) {
        connection.userState = [UInt8]()
        logger.debug("connection opened", metadata: ["peer": "\(connection.peerAddress.map { "\($0)" } ?? "?")"])
    }

    func connection(_ connection: Connection, received bytes: ReceivedBytes) {
        guard var pending = connection.userState as? [UInt8] else { return }  // closing
        bytes.withUnsafeBytes { pending.append(contentsOf: $0) }
        var replies: [UInt8] = []
        var lineStart = pending.startIndex
        while let newline = pending[lineStart...].firstIndex(of: UInt8(ascii: "\n")) {
            var line = pending[lineStart..<newline]
            lineStart = newline + 1
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            if line.count > maximumLineLength {
                return refuseLongLine(connection, after: replies)
            }
            replies += reply(to: line, on: connection).utf8
            replies.append(UInt8(ascii: "\n"))
        }
        pending.removeSubrange(..<lineStart)
        // Room for a "\r" whose "\n" has not arrived yet.
        if pending.count > maximumLineLength + 1 {
            return refuseLongLine(connection, after: replies)
        }
        connection.userState = pending
        if !replies.isEmpty { connection.write(replies) }
    }

    func connectionClosed(_ connection: Connection, reason: Connection.CloseReason) {
        logger.debug("connection closed", metadata: ["reason": "\(reason)"])
    }

    private func reply(to line: ArraySlice<UInt8>, on connection: Connection) -> String {
        do {
            return store.execute(try Command(parsing: Substring(decoding: line, as: UTF8.self)))
        } catch {
            connection.reportProtocolError()
            return "ERR \(error.message)"
        }
    }

    /// Answers the complete lines before it, says why, and closes the connection.
    private func refuseLongLine(_ connection: Connection, after replies: [UInt8]) {
        logger.notice("closing a connection that sent a line over \(maximumLineLength) bytes")
        connection.reportProtocolError()
        connection.userState = nil
        connection.write(replies + Array("ERR line too long (limit \(maximumLineLength) bytes)\n".utf8))
        connection.close()
    }
}
