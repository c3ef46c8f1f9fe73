import RingPort

/// The bytes `ringport load` sends, and the check of the bytes that come back.
///
/// Byte `j` of message `sequence` on connection `connection` is
/// `table[offset + j] ^ x`, where `h = key(connection, sequence)`, `offset = h & 255` and
/// `x = (h >> 8) & 255`, and `table` is a fixed pseudo-random table of `size + 256` bytes. This is
/// exactly the pattern of `Benchmarks/c/echo_load.c` (same seed, same mix), so both tools put the
/// same bytes on the wire. It is cheap to generate and to check a word at a time, it varies with
/// the (connection, message) pair (65,536 variants, so misrouted or replayed data is caught), and
/// any byte can be regenerated from its position alone: no copy of the sent data is kept.
///
/// ## Ownership and threads
/// The table is allocated in `init`, never written afterwards, and freed in `deinit`; so one
/// pattern is shared read-only by every load worker thread (hence `@unchecked Sendable`). The
/// buffers given to ``fill(_:connection:sequence:from:count:)`` and
/// ``mismatches(in:connection:sequence:from:count:)`` belong to the caller.
final class EchoPattern: @unchecked Sendable {
    /// The message size the table was made for.
    let messageSize: Int
    /// `messageSize + 256` pseudo-random bytes.
    private let table: UnsafeMutablePointer<UInt8>

    /// Builds the table for messages of `messageSize` bytes (xorshift64 from echo_load's fixed
    /// seed, so runs are reproducible).
    init(messageSize: Int) {
        precondition(messageSize > 0)
        self.messageSize = messageSize
        table = .allocate(capacity: messageSize + 256)
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        for index in 0..<(messageSize + 256) {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            table[index] = UInt8(truncatingIfNeeded: state >> 32)
        }
    }

    deinit {
        table.deallocate()
    }

    /// The per-message key: a 64-bit mix (SplitMix64's finaliser) of connection and sequence.
    @inline(__always)
    static func key(connection: UInt32, sequence: UInt64) -> UInt64 {
        var z = sequence &* 0x9E37_79B9_7F4A_7C15 &+ (UInt64(connection) << 40) &+ UInt64(connection)
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Writes bytes `from..<from + count` of message (`connection`, `sequence`) to `destination`,
    /// a word at a time. Runs on the calling (load worker) thread.
    @inline(__always)
    func fill(_ destination: UnsafeMutableRawPointer, connection: UInt32, sequence: UInt64, from: Int, count: Int) {
        let key = EchoPattern.key(connection: connection, sequence: sequence)
        let source = UnsafeRawPointer(table) + Int(key & 255) + from
        let x = UInt8(truncatingIfNeeded: key >> 8)
        let x8 = UInt64(x) &* 0x0101_0101_0101_0101
        var index = 0
        while index + 8 <= count {
            let word = source.loadUnaligned(fromByteOffset: index, as: UInt64.self) ^ x8
            destination.storeBytes(of: word, toByteOffset: index, as: UInt64.self)
            index += 8
        }
        while index < count {
            destination.storeBytes(
                of: source.load(fromByteOffset: index, as: UInt8.self) ^ x, toByteOffset: index, as: UInt8.self)
            index += 1
        }
    }

    /// The number of bytes of `buffer` (`count` bytes) that differ from bytes `from..<from + count`
    /// of message (`connection`, `sequence`). Runs on the calling (load worker) thread.
    @inline(__always)
    func mismatches(in buffer: UnsafeRawPointer, connection: UInt32, sequence: UInt64, from: Int, count: Int) -> Int {
        let key = EchoPattern.key(connection: connection, sequence: sequence)
        let source = UnsafeRawPointer(table) + Int(key & 255) + from
        let x = UInt8(truncatingIfNeeded: key >> 8)
        let x8 = UInt64(x) &* 0x0101_0101_0101_0101
        var bad = 0
        var index = 0
        while index + 8 <= count {
            var difference =
                buffer.loadUnaligned(fromByteOffset: index, as: UInt64.self)
                ^ source.loadUnaligned(fromByteOffset: index, as: UInt64.self) ^ x8
            while difference != 0 {  // rare: count the differing bytes
                if difference & 0xFF != 0 { bad += 1 }
                difference >>= 8
            }
            index += 8
        }
        while index < count {
            if buffer.load(fromByteOffset: index, as: UInt8.self) ^ x
                != source.load(fromByteOffset: index, as: UInt8.self)
            {
                bad += 1
            }
            index += 1
        }
        return bad
    }
}
