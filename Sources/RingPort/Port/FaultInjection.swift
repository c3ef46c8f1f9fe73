import CLiburing
import Glibc
import SystemPackage

/// Makes chosen operations fail (or end) with chosen results, through the kernel, so that tests
/// can drive the error paths of completion handlers: a receive reset by the peer, a send to a
/// vanished peer, an exhausted buffer ring, an accept out of descriptors, a cancellation nobody
/// asked for.
///
/// Set it as ``CompletionPort/Configuration/faultInjection``. When a posted operation matches a
/// ``Rule``, the port does not queue the operation: it queues an io_uring `NOP` in its place,
/// with the same `user_data`, and asks the kernel to complete it with the rule's result
/// (`IORING_NOP_INJECT_RESULT` of recent kernels, found by trying it). The completion then travels the path of a real
/// one — CQE, reaping, the in-flight table, the handle's serialisation, the worker — and reaches
/// the handler with the posted operation's tag, handle and context. On kernels without result
/// injection the NOP completes with 0 and the port substitutes the rule's result when it reaps
/// it (``kernelInjectsResults`` says which path runs).
///
/// An injected operation never ran: a receive read nothing, a send sent nothing, an accept
/// accepted nothing. A multishot operation ends with the injected completion (no
/// `IORING_CQE_F_MORE`); a zero-copy send completes once.
///
/// Application posts (``CompletionPort/post(bytesTransferred:handle:context:value:)``) and the
/// port's own operations (cancellations, closes) are never replaced.
///
/// Meant for tests and fault drills, not for production ports.
///
/// ## Thread-safety
/// Thread-safe: every posting thread consults it under its own lock; the counts may be read
/// from any thread.
public final class FaultInjection: Sendable {
    /// Which operations to replace, with which result, how often.
    public struct Rule: Hashable, Sendable {
        /// The operation tag the rule applies to (``IOOperation/user`` never matches).
        public var operation: IOOperation
        /// The result the operation completes with: a negated errno, 0 (e.g. end of stream for a
        /// receive), or a byte count.
        public var result: Int32
        /// The chance that a matching post is replaced, in 0...1.
        public var probability: Double
        /// Replace at most this many operations (nil: no limit).
        public var limit: Int?

        /// Completes matching operations with `error`.
        public init(_ operation: IOOperation, error: Errno, probability: Double, limit: Int? = nil) {
            self.init(operation, result: -error.rawValue, probability: probability, limit: limit)
        }

        /// Completes matching operations with `result` (a negated errno, 0, or a byte count).
        public init(_ operation: IOOperation, result: Int32, probability: Double, limit: Int? = nil) {
            precondition((0...1).contains(probability), "probability must be in 0...1")
            self.operation = operation
            self.result = result
            self.probability = probability
            self.limit = limit
        }
    }

    /// The rules, in order: the first that matches an operation (and draws) replaces it.
    public let rules: [Rule]
    /// Whether the kernel injects the results (`IORING_NOP_INJECT_RESULT`); otherwise the port
    /// substitutes them when it reaps the NOPs.
    public let kernelInjectsResults: Bool

    private struct State {
        var random: UInt64
        var injected: [Int]
    }

    private let state: LockedValue<State>

    /// Creates the rules with a seed for their draws (the same seed and the same sequence of
    /// posts replace the same operations).
    ///
    /// Probes the kernel for result injection with a ring of its own (a few microseconds).
    public convenience init(rules: [Rule], seed: UInt64 = 0x5EED) {
        self.init(rules: rules, seed: seed, kernelInjectsResults: FaultInjection.kernelInjectsNOPResults())
    }

    /// Test seam: pretend the kernel cannot inject results.
    package init(rules: [Rule], seed: UInt64, kernelInjectsResults: Bool) {
        self.rules = rules
        self.kernelInjectsResults = kernelInjectsResults
        state = LockedValue(State(random: seed, injected: [Int](repeating: 0, count: rules.count)))
    }

    /// How many operations each rule replaced so far (same order as ``rules``).
    public var injectedCounts: [Int] {
        state.withLock { $0.injected }
    }

    /// How many operations were replaced so far, over all rules.
    public var injectedCount: Int {
        injectedCounts.reduce(0, +)
    }

    /// The result to complete a post of `operation` with, or nil to let it run. Called by the
    /// posting thread for every operation.
    func injectedResult(for operation: IOOperation) -> Int32? {
        guard operation != .user else { return nil }
        return state.withLock { state -> Int32? in
            for (index, rule) in rules.enumerated() where rule.operation == operation {
                if let limit = rule.limit, state.injected[index] >= limit { continue }
                if rule.probability < 1 {
                    // SplitMix64: small, fast, and reproducible from the seed.
                    state.random &+= 0x9E37_79B9_7F4A_7C15
                    var z = state.random
                    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                    z ^= z >> 31
                    guard Double(z >> 11) * 0x1p-53 < rule.probability else { continue }
                }
                state.injected[index] += 1
                return rule.result
            }
            return nil
        }
    }

    /// Fills `entry` with the NOP that stands in for an operation, completing with `result`.
    func prepareInjectedNOP(_ entry: UnsafeMutablePointer<io_uring_sqe>, result: Int32) {
        io_uring_prep_nop(entry)
        if kernelInjectsResults {
            entry.pointee.rw_flags = CLiburing_IORING_NOP_INJECT_RESULT
            entry.pointee.len = UInt32(bitPattern: result)
        }
    }

    /// Whether this kernel completes a NOP with the result given in its SQE, tried on a ring of
    /// its own.
    static func kernelInjectsNOPResults() -> Bool {
        guard let ring = try? IOURing(entries: 2, completionEntries: 4) else { return false }
        defer { ring.close() }
        return kernelInjectsNOPResults(on: ring)
    }

    /// Whether this kernel completes a NOP with the result given in its SQE: submits one on
    /// `ring` (which must have nothing in flight) and looks at the CQE (older kernels answer 0,
    /// or `EINVAL` for the flag).
    static func kernelInjectsNOPResults(on ring: IOURing) -> Bool {
        guard let entry = ring.nextSubmissionEntry() else { return false }
        let probe: Int32 = 12_345
        io_uring_prep_nop(entry)
        entry.pointee.rw_flags = CLiburing_IORING_NOP_INJECT_RESULT
        entry.pointee.len = UInt32(bitPattern: probe)
        guard ring.enter(toSubmit: ring.flushSubmissions(), waitFor: 1, timeout: 1_000_000_000) >= 0 else {
            return false
        }
        return withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<io_uring_cqe>?.self, capacity: 1) { batch in
            guard ring.peekCompletions(into: batch) == 1 else { return false }
            let result = batch[0].unsafelyUnwrapped.pointee.res
            ring.advanceCompletions(by: 1)
            return result == probe
        }
    }
}
