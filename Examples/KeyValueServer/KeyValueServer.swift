// KeyValueServer: a line-based key-value store on TCPServer, run by a swift-service-lifecycle
// ServiceGroup that shuts it down gracefully on SIGTERM or SIGINT.
// Usage: KeyValueServer [port] (or PORT=...; default 7878; LOG_LEVEL=debug for more logs).
// Protocol: see Command.swift. Try: printf 'SET a 1\nGET a\n' | nc 127.0.0.1 7878
import Glibc
import Logging
import RingPort
import RingPortServer
import ServiceLifecycle

@main
struct KeyValueServer {
    static func main() async throws {
        let level = getenv("LOG_LEVEL").flatMap { Logger.Level(rawValue: String(cString: $0)) } ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "kv")
        let portArgument = CommandLine.arguments.dropFirst().first ?? getenv("PORT").map { String(cString: $0) }
        guard let port = UInt16(portArgument ?? "7878") else {
            logger.critical("not a port number: \(portArgument ?? "")")
            exit(2)
        }

        var configuration = TCPServer.Configuration(address: try SocketAddress(host: "127.0.0.1", port: port))
        configuration.label = "kv"
        configuration.logger = Logger(label: "kv.server")
        configuration.idleTimeout = .seconds(300)
        configuration.gracefulShutdownPeriod = .seconds(5)  // for the connections to finish
        let store = KeyValueStore()
        let handler = KeyValueHandler(store: store, maximumLineLength: 1024, logger: logger)
        let server = try TCPServer(configuration: configuration, handler: handler)

        // The server starts in its run(); the banner is printed once the group has taken over
        // SIGTERM and SIGINT (it does so before starting any service).
        let banner = ClosureService {
            print("KeyValueServer listening on \(server.localAddress)")
            fflush(nil)
        }
        var groupConfiguration = ServiceGroupConfiguration(
            services: [.init(service: server), .init(service: banner, successTerminationBehavior: .ignore)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        // Should the graceful shutdown take longer, the group cancels: the server closes every
        // connection at once.
        groupConfiguration.maximumGracefulShutdownDuration = .seconds(10)
        try await ServiceGroup(configuration: groupConfiguration).run()

        let statistics = server.statistics
        print(
            """
            KeyValueServer stopped: \(statistics.accepted) connections served, \(statistics.protocolErrors) bad \
            requests, \(store.count) keys, \(server.portStatistics.operationsInFlight) operations in flight
            """
        )
    }
}
