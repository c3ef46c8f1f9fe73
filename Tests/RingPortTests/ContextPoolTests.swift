import RingPort
import Testing

extension RingPortTests {
    @Suite struct ContextPoolTests {
        /// A recycled context comes back reset, and the pool keeps at most `maximumIdle`.
        @Test func recycledContextsComeBackResetUpToTheLimit() {
            let pool = ContextPool(bufferSize: 64, maximumIdle: 2)
            let contexts = (0..<3).map { _ in pool.take() }
            for (index, context) in contexts.enumerated() {
                context.userValue = UInt64(index + 1)
                context.attachment = pool
                context.count = 10
                context.offset = 5
            }
            contexts.forEach(pool.recycle)
            #expect(pool.idleCount == 2)
            let again = pool.take()
            #expect(contexts.contains { $0 === again })
            #expect(again.userValue == 0 && again.attachment == nil && again.count == 0 && again.offset == 0)
            #expect(again.capacity == 64)
        }

        /// `trimIdle()` frees what stayed idle since the last call (the fewest idle meanwhile).
        @Test func trimmingFreesWhatStayedIdle() {
            let pool = ContextPool(bufferSize: 0, preallocate: 8)
            let taken = (0..<3).map { _ in pool.take() }
            taken.forEach(pool.recycle)
            #expect(pool.idleCount == 8)
            // 5 stayed idle the whole time; the 3 in use are kept.
            #expect(pool.trimIdle() == 5)
            #expect(pool.idleCount == 3)
            // Unused since: freed by the next call.
            #expect(pool.trimIdle() == 3)
            #expect(pool.idleCount == 0)
        }

        /// A thread's cache takes half its limit from the pool when empty (one pass through the
        /// pool's lock for several sends), keeps what is recycled, and gives half back when full.
        @Test func aCacheMovesContextsInBatchesOfHalfItsLimit() {
            let pool = ContextPool(bufferSize: 0, preallocate: 10)
            var cache = ContextCache(limit: 8)
            let first = cache.take(from: pool)
            #expect(pool.idleCount == 6)  // 4 taken, 1 of them handed out
            #expect(cache.count == 3)
            var taken = [first]
            for _ in 0..<3 { taken.append(cache.take(from: pool)) }
            #expect(cache.count == 0 && pool.idleCount == 6)
            taken.append(cache.take(from: pool))  // empty again: the next batch
            #expect(cache.count == 3 && pool.idleCount == 2)
            for context in taken {
                context.userValue = 7
                context.attachment = pool
            }
            // 3 kept + 5 recycled: full at 8, nothing back yet.
            taken.forEach { cache.recycle($0, to: pool) }
            #expect(cache.count == 8 && pool.idleCount == 2)
            let extra = pool.take()
            cache.recycle(extra, to: pool)  // full: half goes back first
            #expect(cache.count == 5 && pool.idleCount == 1 + 4)
            let reused = cache.take(from: pool)
            #expect(reused.userValue == 0 && reused.attachment == nil)
        }

        /// An empty pool gives an empty cache one new context; a batch given back beyond the
        /// pool's `maximumIdle` is freed.
        @Test func aCacheOverAnEmptyOrFullPool() {
            let pool = ContextPool(bufferSize: 16, maximumIdle: 1)
            var cache = ContextCache(limit: 4)
            let contexts = (0..<5).map { _ in cache.take(from: pool) }
            #expect(contexts.allSatisfy { $0.capacity == 16 })
            #expect(Set(contexts.map(ObjectIdentifier.init)).count == 5)
            #expect(cache.count == 0 && pool.idleCount == 0)
            contexts.forEach { cache.recycle($0, to: pool) }
            // The 5th recycle found the cache full: 2 went back, 1 of them kept by the pool.
            #expect(cache.count == 3)
            #expect(pool.idleCount == 1)
        }
    }
}
