import NIOCore
import RingPortTestSupport
import Testing

@testable import RingPortAsync

/// The worker threads' byte buffer caches and the depot between them: buffers a thread
/// recycles are what another thread takes, without allocating.
extension RingPortAsyncTests {
    @Suite struct ByteBufferCacheTests {
        /// The address of a buffer's storage.
        func storageAddress(of buffer: ByteBuffer) -> UInt {
            buffer.withVeryUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
        }

        /// Recycles `count` new buffers of 128 bytes into `cache` and returns their storage
        /// addresses.
        func recycleNewBuffers(_ count: Int, into cache: inout ByteBufferCache) -> Set<UInt> {
            var addresses = Set<UInt>()
            for _ in 0..<count {
                let buffer = ByteBufferAllocator().buffer(capacity: 128)
                addresses.insert(storageAddress(of: buffer))
                cache.recycle(buffer)
            }
            return addresses
        }

        @Test func buffersRecycledOnOneThreadAreTakenOnAnother() {
            let depot = ByteBufferDepot()
            var recycling = ByteBufferCache(depot: depot)
            // 32 fill the cache; the 33rd moves 16 of them to the depot, and so on.
            let recycled = recycleNewBuffers(
                ByteBufferCache.maximumCount + ByteBufferCache.exchangeCount, into: &recycling)
            #expect(depot.count == ByteBufferCache.exchangeCount)

            var taking = ByteBufferCache(depot: depot)
            // Kept alive, like every recycled buffer, so that no new buffer can get one's address.
            var inUse: [ByteBuffer] = []
            for _ in 0..<ByteBufferCache.exchangeCount {
                var buffer = taking.take(capacity: 100)
                #expect(buffer.readableBytes == 0 && buffer.capacity >= 100)
                buffer.writeString("in use")
                inUse.append(buffer)
            }
            let taken = Set(inUse.map(storageAddress(of:)))
            #expect(taken.count == ByteBufferCache.exchangeCount)
            #expect(taken.isSubset(of: recycled), "every take reused a recycled buffer's storage")
            #expect(depot.count == 0)
            // Both empty now: the next take allocates.
            let fresh = taking.take(capacity: 100)
            #expect(!recycled.contains(storageAddress(of: fresh)))
            withExtendedLifetime((recycling, inUse)) {}
        }

        @Test func aTakenBufferIsEmptyWithRoomAndACopyTheApplicationKeptStaysUnchanged() {
            var cache = ByteBufferCache()
            var sent = ByteBufferAllocator().buffer(capacity: 128)
            sent.writeString("sent and kept")
            let kept = sent
            sent.moveReaderIndex(forwardBy: 5)
            cache.recycle(sent)

            var taken = cache.take(capacity: 64)
            #expect(taken.readableBytes == 0 && taken.writableBytes >= 64)
            #expect(storageAddress(of: taken) == storageAddress(of: kept), "the recycled buffer was taken")
            taken.writeString("new bytes")
            #expect(String(buffer: taken) == "new bytes")
            #expect(String(buffer: kept) == "sent and kept", "writing copied the shared storage first")

            // A recycled buffer smaller than asked for grows to the capacity asked for.
            cache.recycle(ByteBufferAllocator().buffer(capacity: 16))
            let grown = cache.take(capacity: 1000)
            #expect(grown.readableBytes == 0 && grown.capacity >= 1000)
        }

        /// A small slice of a large buffer (a body sent in parts) is not kept: it would keep the
        /// whole storage alive. (Before, the slice's own length was checked against the limit.)
        @Test func aSliceOfALargeBufferIsNotKept() {
            var cache = ByteBufferCache()
            var large = ByteBufferAllocator().buffer(capacity: 1 << 20)
            large.writeBytes([UInt8](repeating: 9, count: 1 << 20))
            let slice = large.getSlice(at: 0, length: 4096)!
            let largeStorage = storageAddress(of: large)
            #expect(storageAddress(of: slice) == largeStorage)
            cache.recycle(slice)
            let taken = cache.take(capacity: 128)
            #expect(storageAddress(of: taken) != largeStorage, "the slice of 1 MiB was kept")

            // A buffer of the largest size kept is kept.
            let full = ByteBufferAllocator().buffer(capacity: ByteBufferCache.maximumCapacity)
            let fullStorage = storageAddress(of: full)
            cache.recycle(full)
            #expect(storageAddress(of: cache.take(capacity: 128)) == fullStorage)
        }

        @Test func theDepotKeepsAtMostItsLimitAndTrimsWhatStayedIdle() {
            let depot = ByteBufferDepot()
            var cache = ByteBufferCache(depot: depot)
            _ = recycleNewBuffers(ByteBufferDepot.maximumCount + 64, into: &cache)
            #expect(depot.count == ByteBufferDepot.maximumCount)
            // What the depot held at its fewest since the last trim was never needed: the first
            // trim after the burst measures, the second frees.
            #expect(depot.trimIdle() == 0)
            var other = ByteBufferCache(depot: depot)
            _ = other.take(capacity: 64)
            #expect(depot.count == ByteBufferDepot.maximumCount - ByteBufferCache.exchangeCount)
            #expect(depot.trimIdle() == ByteBufferDepot.maximumCount - ByteBufferCache.exchangeCount)
            #expect(depot.count == 0)
            #expect(depot.trimIdle() == 0)
        }
    }
}
