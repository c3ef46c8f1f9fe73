import ArgumentParser
import Glibc
import Logging
import NIOCore
import NIOPosix
import RingPort
import RingPortNIO
import ServiceLifecycle

/// Which SwiftNIO transport a `nio-*` command runs its pipeline on.
enum NIOTransport: String, ExpressibleByArgument, CaseIterable {
    /// RingPortNIO: the completion port's rings as event loops.
    case ringport
    /// NIOPosix: SwiftNIO's own event loop threads (epoll).
    case posix
}

/// What `ringport nio-echo` and `ringport nio-http` share: where to listen and the completion
/// port's shape (``ListenOptions``, used by `--transport ringport`), the transport, and the life
/// cycle (serve until SIGINT or SIGTERM, then close every connection).
struct NIOServerOptions: ParsableArguments {
    @OptionGroup var listen: ListenOptions

    @Option(help: "Where the pipeline runs: ringport (RingPortNIO on the completion port) or posix (NIOPosix).")
    var transport: NIOTransport = .ringport

    @Option(help: "--transport posix: event loop threads.")
    var threads = 1

    func validate() throws {
        if threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    /// Binds a server whose connections get `initializer` on the chosen transport (with
    /// `SO_REUSEADDR`, a backlog of `SOMAXCONN`, `TCP_NODELAY`, and `allowRemoteHalfClosure` when
    /// `halfClosure`), prints where
    /// it listens, serves until SIGINT or SIGTERM, then closes the listener and shuts the group
    /// down (which closes every connection). `prepare` runs once per event loop, on it, before
    /// the bind (e.g. to make per-loop state the initializer uses).
    func runServer(
        name: String,
        halfClosure: Bool = false,
        prepare: @escaping @Sendable (any EventLoop) -> Void = { _ in },
        initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) async throws {
        bootstrapLogging(level: listen.logLevel)
        let runner = await ServiceRunner()
        let group: any EventLoopGroup
        let shape: String
        do {
            switch transport {
            case .ringport:
                var configuration = RingPortEventLoopGroup.Configuration()
                listen.configure(&configuration.port)
                let ringGroup = try RingPortEventLoopGroup(configuration: configuration)
                group = ringGroup
                let rings = ringGroup.port.ringCount
                shape = """
                    RingPortNIO, \(ringGroup.port.backend), \(configuration.port.workerCount) workers, \
                    \(rings) \(rings == 1 ? "ring" : "rings")
                    """
            case .posix:
                group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
                shape = "NIOPosix, \(threads) event loop \(threads == 1 ? "thread" : "threads")"
            }
        } catch {
            StandardError.write("error: \(error)")
            throw ExitCode.failure
        }
        let server: Channel
        do {
            for loop in group.makeIterator() { try await loop.submit { prepare(loop) }.get() }
            server = try await bind(group: group, halfClosure: halfClosure, initializer: initializer).get()
        } catch {
            try? await group.shutdownGracefully()
            StandardError.write("error: \(name): \(error)")
            throw ExitCode.failure
        }
        let (host, port) = (listen.host, Int(listen.port))
        let address = server.localAddress.map { "\($0.ipAddress ?? host):\($0.port ?? port)" } ?? "\(host):\(port)"
        print("ringport \(name) listening on \(address) (\(shape))")
        fflush(nil)
        let service = NIOServerService(server: server, group: group)
        try await runner.run([service], logger: Logger(label: "ringport.\(name)")) { signal, first in
            if first {
                print("received \(signal.name), shutting down")
                fflush(nil)
            }
        }
        if let ringGroup = group as? RingPortEventLoopGroup {
            let statistics = ringGroup.port.statistics
            print(
                """
                stopped: \(ringGroup.port.backend) backend, \(statistics.completions) completions, \
                \(statistics.leaderTakeovers) leader takeovers, \
                \(statistics.staleCompletions + statistics.droppedCompletions) lost
                """
            )
        } else {
            print("stopped: NIOPosix transport")
        }
    }

    private func bind(
        group: any EventLoopGroup, halfClosure: Bool,
        initializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
    ) -> EventLoopFuture<Channel> {
        // The same options on both transports (those of the SwiftNIO baselines).
        if let group = group as? RingPortEventLoopGroup {
            return RingPortServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: Int32(SOMAXCONN))
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.allowRemoteHalfClosure, value: halfClosure)
                .childChannelInitializer(initializer)
                .bind(host: listen.host, port: Int(listen.port))
        }
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: Int32(SOMAXCONN))
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: halfClosure)
            .childChannelInitializer(initializer)
            .bind(host: listen.host, port: Int(listen.port))
    }
}

/// A `nio-*` server as a service: serves until its group shuts down, then closes the listener
/// and shuts the event loop group down, which closes every connection.
///
/// Thread-safety: immutable; `run()` is called once, by the service group.
final class NIOServerService: Service {
    let server: Channel
    let group: any EventLoopGroup

    init(server: Channel, group: any EventLoopGroup) {
        self.server = server
        self.group = group
    }

    func run() async throws {
        // Until the group shuts down; a cancellation (second signal) ends the wait too.
        try? await gracefulShutdown()
        try? await server.close()
        try? await group.shutdownGracefully()
    }
}
