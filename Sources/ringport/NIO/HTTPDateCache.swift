import Glibc
import NIOCore
import NIOHTTP1
import RingPort
import RingPortHTTP

/// The `Date` header of the current second and the response headers built around it, one cache
/// per event loop.
///
/// Formatting a date for every response would cost more than the rest of the response; instead
/// a timer on the event loop rebuilds the headers just after each wall-clock second begins. The
/// cache is confined to its event loop: it is created there and read only by handlers of channels
/// on that loop, so it needs no locking.
final class HTTPDateCache {
    private let eventLoop: any EventLoop

    /// The current second as an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    private(set) var date = ""

    /// The headers of `200 OK` to `GET /plaintext`, in the order RingPort sends them.
    private(set) var plaintextHeaders = HTTPHeaders()

    /// Creates the cache and starts its timer; call on `eventLoop`.
    init(eventLoop: any EventLoop) {
        eventLoop.preconditionInEventLoop()
        self.eventLoop = eventLoop
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        update(now)
        scheduleUpdate(after: now)
    }

    /// `Server`, `Date`, `Content-Type` and `Content-Length` for a `text/plain` body.
    func headers(contentLength: Int) -> HTTPHeaders {
        HTTPHeaders([
            ("Server", "RingPort"),
            ("Date", date),
            ("Content-Type", "text/plain"),
            ("Content-Length", String(contentLength)),
        ])
    }

    private func update(_ now: timespec) {
        date = String(decoding: HTTPDate.format(now.tv_sec), as: UTF8.self)
        plaintextHeaders = headers(contentLength: PlaintextPipelineHandler.helloWorld.readableBytes)
    }

    /// Re-arms the timer for just after the next wall-clock second begins. Scheduling each tick
    /// from the wall clock (rather than a fixed repeat interval) keeps the header from drifting
    /// behind the real second. The task is cancelled when the event loop shuts down.
    private func scheduleUpdate(after now: timespec) {
        let untilNextSecond = TimeAmount.nanoseconds(1_000_000_000 - Int64(now.tv_nsec))
        eventLoop.assumeIsolated().scheduleTask(in: untilNextSecond + .microseconds(100)) {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            self.update(now)
            self.scheduleUpdate(after: now)
        }
    }
}

/// One ``HTTPDateCache`` per event loop, each made on (and bound to) its own loop, keyed by the
/// loop's identity.
///
/// Thread-safety: ``make(on:)`` on the loop, before any connection; ``cache(of:)`` on that loop.
final class HTTPDateCaches: Sendable {
    private let caches = LockedValue<[ObjectIdentifier: NIOLoopBound<HTTPDateCache>]>([:])

    /// Makes the cache of `loop`; call on `loop`.
    func make(on loop: any EventLoop) {
        let cache = NIOLoopBound(HTTPDateCache(eventLoop: loop), eventLoop: loop)
        caches.withLock { $0[ObjectIdentifier(loop)] = cache }
    }

    /// The cache of `loop`; call on `loop`.
    func cache(of loop: any EventLoop) -> HTTPDateCache {
        caches.withLock { $0[ObjectIdentifier(loop)]! }.value
    }
}
