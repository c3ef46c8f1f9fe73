// A deterministic pseudo-random generator for the tests and the fuzz target (Fuzz/HTTPRequestParser
// links this file): the standard library only.

/// Deterministic pseudo-random numbers and bytes (SplitMix64), so a failure can be reproduced
/// from its seed.
package struct SeededGenerator: RandomNumberGenerator {
    package var state: UInt64

    package init(state: UInt64) {
        self.state = state
    }

    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// `count` bytes from a generator seeded as this one is (does not advance this one).
    package func bytesArray(count: Int) -> [UInt8] {
        var copy = self
        return copy.bytes(count: count)
    }

    /// The next `count` bytes: each word's bytes in little-endian order, filled a word at a time
    /// (the last word's low bytes end an odd count).
    package mutating func bytes(count: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        result.withUnsafeMutableBytes { raw in
            var index = 0
            while index + 8 <= count {
                raw.storeBytes(of: next().littleEndian, toByteOffset: index, as: UInt64.self)
                index += 8
            }
            var word = next()
            while index < count {
                raw[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                index += 1
            }
        }
        return result
    }
}
