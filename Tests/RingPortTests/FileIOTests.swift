import Foundation
import Glibc
import RingPort
import RingPortTestSupport
import SystemPackage
import Testing

extension RingPortTests {
    /// Positioned file I/O through the port over real files in the temporary directory.
    @Suite struct FileIOTests {
        /// Chunks of random lengths written at their offsets, all in flight at once and posted
        /// out of order, make up the file byte for byte; positioned reads give it back; a write
        /// past the end extends the file with zeros.
        @Test func writesAtOffsetsThenReadsTheSameBytesBack() throws {
            let file = TemporaryFile()
            defer { file.remove() }
            var random = SeededGenerator(state: 11)
            let content = random.bytes(count: 300_000)
            var cuts = Set((0..<23).map { _ in Int.random(in: 1..<content.count, using: &random) })
            cuts.formUnion([0, content.count])
            let bounds = cuts.sorted()
            let chunks = zip(bounds, bounds.dropFirst()).map { $0..<$1 }.shuffled(using: &random)

            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let handle = try port.openFile(atPath: file.path, access: .readWrite, options: [.create, .exclusive])
            var written: [Int: Int] = [:]
            for (index, chunk) in chunks.enumerated() {
                let context = IOContext(capacity: chunk.count)
                context.copyBytes(from: content[chunk])
                context.userValue = UInt64(index)
                try port.write(handle, from: context, range: 0..<chunk.count, atOffset: Int64(chunk.lowerBound))
            }
            for _ in chunks {
                let completion = try #require(try worker.dequeue(timeout: .seconds(10)))
                #expect(completion.operation == .write)
                #expect(completion.error == nil)
                let index = Int(try #require(completion.context).userValue)
                written[index] = completion.bytesTransferred
            }
            #expect(
                written == Dictionary(uniqueKeysWithValues: chunks.enumerated().map { ($0.offset, $0.element.count) }))
            #expect(try RegularFile.size(of: handle.descriptor) == Int64(content.count))
            let onDisk = try #require(FileManager.default.contents(atPath: file.path))
            #expect(onDisk.count == content.count)
            #expect(firstDifference(onDisk, content) == nil)

            // Read it back through the port in 64 KiB steps.
            let context = IOContext(capacity: 65536)
            var readBack: [UInt8] = []
            while readBack.count < content.count {
                try port.read(handle, into: context, atOffset: Int64(readBack.count))
                let completion = try #require(try worker.dequeue(timeout: .seconds(10)))
                #expect(completion.operation == .read)
                try #require(completion.error == nil && completion.bytesTransferred > 0)
                readBack += context.bytes(in: 0..<completion.bytesTransferred)
            }
            #expect(firstDifference(readBack, content) == nil)

            // A write beyond the end leaves a hole that reads as zeros.
            context.copyBytes(from: [1, 2, 3, 4])
            try port.write(handle, from: context, range: 0..<4, atOffset: Int64(content.count + 1000))
            #expect(try worker.dequeue(timeout: .seconds(10))?.bytesTransferred == 4)
            #expect(try RegularFile.size(of: handle.descriptor) == Int64(content.count + 1004))
            try port.read(handle, into: context, range: 0..<2000, atOffset: Int64(content.count - 10))
            #expect(try worker.dequeue(timeout: .seconds(10))?.bytesTransferred == 1014)
            #expect(
                firstDifference(
                    context.bytes(in: 0..<1014), content.suffix(10) + [UInt8](repeating: 0, count: 1000) + [1, 2, 3, 4])
                    == nil)
            port.close(handle)
            worker.detach()
            port.close()
        }

        /// A read that crosses the end returns the bytes up to it; at or past the end, 0. The
        /// bytes land in the range asked for and nowhere else in the buffer.
        @Test func readsAtTheEndAreShortAndPastItEmpty() throws {
            let file = TemporaryFile()
            defer { file.remove() }
            var random = SeededGenerator(state: 12)
            let content = random.bytes(count: 1000)
            try Data(content).write(to: URL(fileURLWithPath: file.path))
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let handle = try port.openFile(atPath: file.path, access: .readOnly)
            let context = IOContext(capacity: 4096)
            let filler = [UInt8](repeating: 0xAB, count: 4096)

            func read(at offset: Int64, range: Range<Int>? = nil) throws -> Completion {
                context.copyBytes(from: filler)
                try port.read(handle, into: context, range: range, atOffset: offset)
                return try #require(try worker.dequeue(timeout: .seconds(10)))
            }

            let crossing = try read(at: 900)
            #expect(crossing.error == nil)
            #expect(crossing.bytesTransferred == 100)
            #expect(context.bytes(in: 0..<100) == Array(content[900...]))
            #expect(firstDifference(context.bytes(in: 100..<4096), filler[100...]) == nil)

            let inside = try read(at: 5, range: 10..<20)
            #expect(inside.bytesTransferred == 10)
            #expect(context.bytes(in: 0..<10) == Array(filler[0..<10]))
            #expect(context.bytes(in: 10..<20) == Array(content[5..<15]))
            #expect(firstDifference(context.bytes(in: 20..<4096), filler[20...]) == nil)

            for offset: Int64 in [1000, 1001, 1 << 40] {
                let beyond = try read(at: offset)
                #expect(beyond.error == nil, "at \(offset)")
                #expect(beyond.result == 0, "at \(offset)")
                #expect(firstDifference(context.bytes(in: 0..<4096), filler) == nil, "at \(offset)")
            }
            port.close(handle)
            worker.detach()
            port.close()
        }

        /// 256 positioned reads of random offsets and lengths (some crossing the end) in flight
        /// at once, more than the submission queue holds, on one file handle: each gets exactly
        /// its slice of the file.
        @Test func manyConcurrentPositionedReadsEachGetTheirSlice() throws {
            let file = TemporaryFile()
            defer { file.remove() }
            var random = SeededGenerator(state: 13)
            let content = random.bytes(count: 1 << 20)
            try Data(content).write(to: URL(fileURLWithPath: file.path))
            let port = try makeSingleRingPort(entries: 32)
            let worker = port.makeWorker()
            let handle = try port.openFile(atPath: file.path, access: .readOnly)
            let reads = (0..<256).map { _ in
                (
                    offset: Int.random(in: 0..<(content.count + 4096), using: &random),
                    length: Int.random(in: 1...16384, using: &random)
                )
            }
            for (index, read) in reads.enumerated() {
                let context = IOContext(capacity: read.length)
                context.userValue = UInt64(index)
                try port.read(handle, into: context, atOffset: Int64(read.offset))
            }
            var seen = Set<Int>()
            var mismatches: [Int] = []
            for _ in reads {
                let completion = try #require(try worker.dequeue(timeout: .seconds(10)))
                let context = try #require(completion.context)
                let index = Int(context.userValue)
                let read = reads[index]
                let expected = content[min(read.offset, content.count)..<min(read.offset + read.length, content.count)]
                seen.insert(index)
                if completion.error != nil || completion.bytesTransferred != expected.count
                    || firstDifference(context.bytes(in: 0..<completion.bytesTransferred), expected) != nil
                {
                    mismatches.append(index)
                }
            }
            #expect(seen.count == reads.count)
            #expect(mismatches == [])
            #expect(reads.contains { $0.offset + $0.length > content.count && $0.offset < content.count })
            #expect(port.statistics.operationsInFlight == 0)
            port.close(handle)
            worker.detach()
            port.close()
        }

        /// On the epoll backend two threads perform file reads and writes, each job on a
        /// duplicate of the file's descriptor (closing the handle must never let a job touch a
        /// reused number). The jobs queued at once on one descriptor share one duplicate: with
        /// both threads held inside a read (their buffers' pages trapped), 64 more queued reads
        /// of the file hold one extra descriptor, not 64, and it closes with the last of them.
        /// Every read still gets its own bytes.
        @Test(.enabled(if: PageFaultTrap.isAvailable, "needs /dev/userfaultfd to hold the pool's threads"))
        func queuedFileJobsOfOneDescriptorShareOneDuplicate() throws {
            let file = TemporaryFile()
            defer { file.remove() }
            var random = SeededGenerator(state: 17)
            let content = random.bytes(count: 65536)
            try Data(content).write(to: URL(fileURLWithPath: file.path))
            let port = try makeSingleRingPort(entries: 128, backend: .epoll)
            let worker = port.makeWorker()
            let before = DescriptorSnapshot()
            let handle = try port.openFile(atPath: file.path, access: .readOnly)
            let name = URL(fileURLWithPath: file.path).lastPathComponent
            func descriptorsOfTheFile() -> Int { before.openedSince.filter { $0.hasSuffix(name) }.count }

            // Two reads into trapped pages hold the pool's two threads inside `pread`.
            var traps: [PageFaultTrap] = []
            var blocked: [(context: IOContext, range: Range<Int>)] = []
            for index in 0..<2 {
                let context = IOContext(capacity: 1 << 20)
                let trap = try context.withUnsafeMutableBytes { bytes throws(PageFaultTrap.Failure) in
                    try PageFaultTrap(bytes)
                }
                let range = trap.trappedRange.lowerBound..<(trap.trappedRange.lowerBound + 4096)
                context.userValue = UInt64(1000 + index)
                try port.read(handle, into: context, range: range, atOffset: 0)
                traps.append(trap)
                blocked.append((context, range))
            }
            // A dequeue that does not wait submits what was posted.
            #expect(try worker.dequeue(timeout: .zero) == nil)
            for trap in traps {
                try #require(trap.waitForBlockedTouches(1, timeout: .seconds(10)))
            }

            // 64 reads queue behind them.
            let reads = (0..<64).map { index in (offset: index * 1000, context: IOContext(capacity: 512)) }
            for (index, read) in reads.enumerated() {
                read.context.userValue = UInt64(index)
                try port.read(handle, into: read.context, atOffset: Int64(read.offset))
            }
            #expect(try worker.dequeue(timeout: .zero) == nil)
            // The handle's descriptor and one duplicate (there were 64 + 2 duplicates).
            #expect(descriptorsOfTheFile() == 2)

            for trap in traps { trap.release() }
            var done = Set<UInt64>()
            for _ in 0..<(reads.count + blocked.count) {
                let completion = try #require(try worker.dequeue(timeout: .seconds(10)))
                let context = try #require(completion.context)
                done.insert(context.userValue)
                #expect(completion.error == nil)
                if context.userValue >= 1000 {
                    let range = blocked[Int(context.userValue - 1000)].range
                    #expect(completion.bytesTransferred == 4096)
                    #expect(firstDifference(context.bytes(in: range), content[0..<4096]) == nil)
                } else {
                    let offset = reads[Int(context.userValue)].offset
                    #expect(completion.bytesTransferred == 512)
                    #expect(firstDifference(context.bytes(in: 0..<512), content[offset..<(offset + 512)]) == nil)
                }
            }
            #expect(done.count == reads.count + blocked.count)
            // The last job closed the duplicate before its completion was posted.
            #expect(descriptorsOfTheFile() == 1)
            port.close(handle)
            worker.detach()
            port.close()
            #expect(descriptorsOfTheFile() == 0)
        }

        /// On the epoll backend, a file read that never returns (held inside `pread` by a
        /// trapped page, as a read on a hung mount is) does not hang the port's close: the close
        /// waits for the port's drain deadline, then returns with the read's context kept alive.
        /// When the read returns later, its thread posts nothing and ends.
        @Test(.enabled(if: PageFaultTrap.isAvailable, "needs /dev/userfaultfd to hold a pool thread"))
        func aFileReadThatNeverReturnsDoesNotHangThePortsClose() throws {
            let file = TemporaryFile()
            defer { file.remove() }
            var random = SeededGenerator(state: 19)
            try Data(random.bytes(count: 8192)).write(to: URL(fileURLWithPath: file.path))
            let fileThreadsBefore = threadCount(named: "ringport-file")
            let port = try makeSingleRingPort(backend: .epoll)
            let worker = port.makeWorker()
            let handle = try port.openFile(atPath: file.path, access: .readOnly)
            let context = IOContext(capacity: 1 << 20)
            // The port keeps the context and the handle of a read that did not complete at its
            // close, for good: a global keeps them reachable, so that the leak checker does not
            // report them.
            objectsKeptByClosedPorts.withLock { $0 += [context, handle] }
            let trap = try context.withUnsafeMutableBytes { bytes throws(PageFaultTrap.Failure) in
                try PageFaultTrap(bytes)
            }
            try port.read(
                handle, into: context, range: trap.trappedRange.lowerBound..<(trap.trappedRange.lowerBound + 4096),
                atOffset: 0)
            #expect(try worker.dequeue(timeout: .zero) == nil)
            try #require(trap.waitForBlockedTouches(1, timeout: .seconds(10)))
            worker.detach()

            let closed = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                port.close()
                closed.signal()
            }
            // The drain deadline is 10 s; the pool's threads get 1 s more.
            let closedInTime = closed.wait(timeout: .now() + 60) == .success
            trap.release()
            #expect(closedInTime, "the port's close waited for a read that never returns")
            if !closedInTime { closed.wait() }
            #expect(context.isInFlight)
            // The released read's thread ends without posting (the ring is gone).
            #expect(eventually { threadCount(named: "ringport-file") <= fileThreadsBefore })
        }

        /// What the kernel refuses comes back as its errno: reading a write-only descriptor or
        /// writing a read-only one is `EBADF`; opening fails with the `open(2)` errno; a negative
        /// offset is refused before anything is queued. Handles close their descriptors.
        @Test func refusedFileOperationsReportTheirErrno() throws {
            let descriptorsBefore = DescriptorSnapshot()
            let file = TemporaryFile()
            defer { file.remove() }
            let port = try makeSingleRingPort()
            let worker = port.makeWorker()
            let context = IOContext(capacity: 64)
            context.copyBytes(from: Array("sixteen bytes ok".utf8))

            let writeOnly = try port.openFile(
                atPath: file.path, access: .writeOnly, options: [.create, .exclusive], permissions: 0o600)
            try port.write(writeOnly, from: context, range: 0..<16, atOffset: 0)
            #expect(try worker.dequeue(timeout: .seconds(10))?.bytesTransferred == 16)
            try port.read(writeOnly, into: context, atOffset: 0)
            let badRead = try #require(try worker.dequeue(timeout: .seconds(10)))
            #expect(badRead.operation == .read)
            #expect(badRead.error == .badFileDescriptor)

            let readOnly = try port.openFile(atPath: file.path, access: .readOnly)
            try port.write(readOnly, from: context, range: 0..<16, atOffset: 0)
            let badWrite = try #require(try worker.dequeue(timeout: .seconds(10)))
            #expect(badWrite.operation == .write)
            #expect(badWrite.error == .badFileDescriptor)

            do {
                try port.read(readOnly, into: context, atOffset: -1)
                Issue.record("a negative offset must be refused")
            } catch {
                #expect(error.code == .invalidArgument)
            }
            #expect(!context.isInFlight)

            do {
                _ = try port.openFile(atPath: file.path, access: .readWrite, options: [.create, .exclusive])
                Issue.record("an exclusive create of an existing file must fail")
            } catch {
                #expect(error.code == .systemCallFailed)
                #expect(error.errno == .fileExists)
            }
            do {
                _ = try port.openFile(atPath: file.path + ".missing", access: .readOnly)
                Issue.record("opening a missing file must fail")
            } catch {
                #expect(error.errno == .noSuchFileOrDirectory)
            }
            let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int
            #expect(mode == 0o600)

            port.close(writeOnly)
            port.close(readOnly)
            worker.detach()
            port.close()
            #expect(descriptorsBefore.allClosedAgain, "still open: \(descriptorsBefore.openedSince)")
        }
    }
}

/// A path in the temporary directory that no file has yet; `remove()` deletes what was created.
private struct TemporaryFile {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("ringport-file-io-\(UUID().uuidString)").path

    func remove() {
        unlink(path)
    }
}

/// Contexts and handles that a closed port keeps on purpose (their operations never completed).
private let objectsKeptByClosedPorts = LockedBox<[AnyObject]>([])
