import RingPort
import RingPortTestSupport
import Testing

@testable import RingPortServer

extension RingPortServerTests {
    @Suite struct WorkerWriteChunksTests {
        /// On a worker of the server's pool, a chunk comes from the worker's cache (a batch of 4
        /// taken from the pool at once) and goes back to it; on any other thread, both go
        /// straight to the pool, so no chunk is kept by a thread that may outlive the server.
        @Test func chunksAreCachedOnTheServersWorkersOnly() throws {
            let port = try CompletionPort()
            defer { port.close() }
            let chunks = ContextPool(bufferSize: 64, preallocate: 8)
            let borrowed = Unmanaged.passUnretained(port)

            // The test's thread is no worker.
            let elsewhere = WorkerWriteChunks.take(from: chunks, port: borrowed)
            #expect(chunks.idleCount == 7)
            WorkerWriteChunks.recycle(elsewhere, to: chunks, port: borrowed)
            #expect(chunks.idleCount == 8)

            let seen = LockedBox<[Int]>([])
            let workers = WorkerPool(port: port, threadCount: 1) { _ in
                let chunk = WorkerWriteChunks.take(from: chunks, port: borrowed)
                let afterTake = chunks.idleCount
                WorkerWriteChunks.recycle(chunk, to: chunks, port: borrowed)
                seen.withLock { $0 += [afterTake, chunks.idleCount] }
            }
            try workers.start()
            try port.post(value: 1)
            try port.post(value: 2)
            #expect(eventually { seen.withLock { $0.count } == 4 })
            workers.shutdown()
            // The first take moved 4 chunks into the worker's cache; the chunk recycled stayed
            // there, and the second take and recycle did not touch the pool.
            #expect(seen.withLock { $0 } == [4, 4, 4, 4])
        }
    }
}
