import Glibc
import RingPort
import RingPortAsync
import RingPortTestSupport
import Testing

/// `AsyncPort.Resumption.portWorkersAsGlobalExecutor`: while the port runs, its workers run
/// Swift's global executor (plain tasks, without a preference, run there); one port at a time;
/// after the shutdown Swift's own threads run it again.
extension RingPortAsyncTests {
    @Suite(.serialized) struct GlobalExecutorTests {
        @Test(.timeLimit(.minutes(1))) func thePortsWorkersRunPlainTasksUntilTheShutdown() async throws {
            let descriptorsBefore = DescriptorSnapshot()
            let io = try makeAsyncPort(.portWorkersAsGlobalExecutor)
            #expect(io.preferredExecutor == nil)
            let during = await Task.detached { currentThreadName() }.value
            #expect(during.hasPrefix("ringport-async-"), "a plain task ran on \(during)")

            // A second port cannot take the global executor over while the first runs, and
            // leaves nothing open behind it.
            #expect {
                _ = try makeAsyncPort(.portWorkersAsGlobalExecutor)
            } throws: { error in
                (error as? RingPortError)?.code == .invalidArgument
            }

            // A task resumed by I/O on the port runs on a worker too.
            let (connection, client) = try await connectedPair(on: io)
            let reading = Task.detached { () async throws -> (ByteBuffer?, String) in
                let bytes = try await connection.read()
                return (bytes, currentThreadName())
            }
            try client.send(Array("ping".utf8))
            let (bytes, resumedOn) = try await reading.value
            #expect(bytes.bytes == Array("ping".utf8))
            #expect(resumedOn.hasPrefix("ringport-async-"), "resumed on \(resumedOn)")
            client.close()
            connection.close()
            await expectCleanShutdown(io, descriptorsBefore: descriptorsBefore)

            let after = await Task.detached { currentThreadName() }.value
            #expect(!after.hasPrefix("ringport-async-"), "after the shutdown a plain task ran on \(after)")

            // Given back, the global executor can be taken over again.
            let next = try makeAsyncPort(.portWorkersAsGlobalExecutor)
            let again = await Task.detached { currentThreadName() }.value
            #expect(again.hasPrefix("ringport-async-"), "a plain task ran on \(again)")
            await next.shutdown()
        }

        /// Giving the global executor back lets go of the port: nothing keeps its rings (and
        /// their provided buffers) once the application drops it.
        @Test(.timeLimit(.minutes(1))) func theShutdownLetsGoOfThePort() async throws {
            weak var port: CompletionPort?
            do {
                let io = try makeAsyncPort(.portWorkersAsGlobalExecutor)
                port = io.port
                #expect(await Task.detached { currentThreadName() }.value.hasPrefix("ringport-async-"))
                await io.shutdown()
            }
            #expect(await eventuallyAsync { port == nil }, "the port outlived its AsyncPort")
        }
    }
}
