import Testing

@testable import RingPortServer

extension RingPortServerTests {
    /// The connection's lifecycle, as a value: what each event does to it and asks of the
    /// connection.
    @Suite struct ConnectionStateTests {
        /// A close asked for before the connection's *open* command ran (a shutdown posted to
        /// every connection just after an accept) does nothing: the open runs next and closes
        /// the connection itself. Before, the connection went straight to closed and finished,
        /// the handler heard of a close without an open, and the open then recycled its
        /// contexts a second time.
        @Test func aCloseAskedForBeforeTheOpenWaitsForIt() {
            var state = ConnectionState(multishotReceive: true, lingers: true)
            #expect(state.apply(.closeGracefully(.serverShutdown), writeQueueIsEmpty: true) == [])
            #expect(state.apply(.closeNow(.serverShutdown), writeQueueIsEmpty: true) == [])
            #expect(state.phase == .unopened)
            #expect(state.finishIfDone() == nil)
            #expect(state.exchangesData)

            #expect(state.apply(.opened, writeQueueIsEmpty: true) == .postReceive)
            #expect(state.phase == .open)
            #expect(state.apply(.receivePosted, writeQueueIsEmpty: true) == [])
            #expect(state.apply(.closeGracefully(.serverShutdown), writeQueueIsEmpty: true) == .cancelReceive)
            #expect(state.phase == .draining(.serverShutdown))
            #expect(state.apply(.receiveFinished(.cancelled), writeQueueIsEmpty: true) == .closeDescriptor)
            #expect(state.finishIfDone() == .serverShutdown)
        }

        /// An open connection whose receive is in flight, as the server has it between messages.
        private func openConnection(lingers: Bool = true) -> ConnectionState {
            var state = ConnectionState(multishotReceive: true, lingers: lingers)
            _ = state.apply(.opened, writeQueueIsEmpty: true)
            _ = state.apply(.receivePosted, writeQueueIsEmpty: true)
            return state
        }

        /// The handler closes: once everything is sent, the connection lingers (write side shut,
        /// a receive posted to drop what arrives, the timer) until the peer's end of stream, and
        /// finishes when the cancelled timer is back.
        @Test func aConnectionTheHandlerClosesLingersUntilThePeersEndOfStream() {
            var state = openConnection()
            #expect(state.apply(.closeGracefully(.closedByHandler), writeQueueIsEmpty: false) == .cancelReceive)
            #expect(state.apply(.receiveFinished(.cancelled), writeQueueIsEmpty: false) == [])
            #expect(state.phase == .draining(.closedByHandler))
            #expect(state.exchangesData)
            // The last send completed: the queue is empty.
            _ = state.apply(.sendPosted, writeQueueIsEmpty: false)
            #expect(state.apply(.sendFinished(.sent), writeQueueIsEmpty: true) == [.beginLingering, .postReceive])
            #expect(state.phase == .lingering(.closedByHandler))
            #expect(!state.exchangesData && !state.canSend && state.isLingering && state.closeReason != nil)
            #expect(state.apply(.receivePosted, writeQueueIsEmpty: true) == [])
            #expect(state.apply(.lingerTimerPosted, writeQueueIsEmpty: true) == [])
            // What arrives is dropped by the connection; the receive goes on.
            #expect(state.apply(.receiveFinished(.bytes), writeQueueIsEmpty: true) == .postReceive)
            _ = state.apply(.receivePosted, writeQueueIsEmpty: true)
            // A graceful shutdown does not cut the linger short.
            #expect(state.apply(.closeGracefully(.serverShutdown), writeQueueIsEmpty: true) == [])
            #expect(state.apply(.receiveFinished(.endOfStream), writeQueueIsEmpty: true) == .closeDescriptor)
            #expect(state.phase == .closed(.closedByHandler))
            #expect(state.finishIfDone() == nil, "the timer is still in flight")
            #expect(state.apply(.lingerTimerFinished, writeQueueIsEmpty: true) == [])
            #expect(state.finishIfDone() == .closedByHandler)
        }

        /// A peer that keeps sending is cut off when the linger timer fires.
        @Test func aLingeringConnectionClosesWhenItsTimerFires() {
            var state = openConnection()
            _ = state.apply(.closeGracefully(.closedByHandler), writeQueueIsEmpty: true)
            #expect(
                state.apply(.receiveFinished(.cancelled), writeQueueIsEmpty: true) == [.beginLingering, .postReceive])
            _ = state.apply(.receivePosted, writeQueueIsEmpty: true)
            _ = state.apply(.lingerTimerPosted, writeQueueIsEmpty: true)
            #expect(state.apply(.lingerTimerFinished, writeQueueIsEmpty: true) == .closeDescriptor)
            #expect(state.phase == .closed(.closedByHandler))
            #expect(state.finishIfDone() == nil, "the receive is still in flight")
            #expect(state.apply(.receiveFinished(.cancelled), writeQueueIsEmpty: true) == [])
            #expect(state.finishIfDone() == .closedByHandler)
        }

        /// No linger when the peer has ended its side already, when the server closes (shutdown,
        /// idle timeout), or when the server has no linger timeout.
        @Test func closesThatDoNotLinger() {
            var peerDone = openConnection()
            #expect(peerDone.apply(.receiveFinished(.endOfStream), writeQueueIsEmpty: false) == [])
            #expect(peerDone.phase == .draining(.peerClosed))
            _ = peerDone.apply(.closeGracefully(.closedByHandler), writeQueueIsEmpty: false)
            _ = peerDone.apply(.sendPosted, writeQueueIsEmpty: false)
            #expect(peerDone.apply(.sendFinished(.sent), writeQueueIsEmpty: true) == .closeDescriptor)

            var shutdown = openConnection()
            _ = shutdown.apply(.closeGracefully(.serverShutdown), writeQueueIsEmpty: true)
            #expect(shutdown.apply(.receiveFinished(.cancelled), writeQueueIsEmpty: true) == .closeDescriptor)

            var noLinger = openConnection(lingers: false)
            _ = noLinger.apply(.closeGracefully(.closedByHandler), writeQueueIsEmpty: true)
            #expect(noLinger.apply(.receiveFinished(.cancelled), writeQueueIsEmpty: true) == .closeDescriptor)
            #expect(noLinger.finishIfDone() == .closedByHandler)
        }

        /// A linger timer the port cancelled without being asked (its submitting thread exited)
        /// closes the connection too: lingering on without it would have no bound. Before, only
        /// an expired timer closed. And a receive out of buffers while draining does not leave
        /// the lingering connection waiting for buffers it is not listed for.
        @Test func aLingeringConnectionWhoseTimerIsCancelledCloses() {
            var state = openConnection()
            #expect(state.apply(.receiveFinished(.noBuffers), writeQueueIsEmpty: false) == [])
            #expect(state.waitsForBuffers)
            _ = state.apply(.closeGracefully(.closedByHandler), writeQueueIsEmpty: false)
            #expect(!state.waitsForBuffers, "a draining connection does not read")
            _ = state.apply(.sendPosted, writeQueueIsEmpty: false)
            #expect(state.apply(.sendFinished(.sent), writeQueueIsEmpty: true) == [.beginLingering, .postReceive])
            _ = state.apply(.receivePosted, writeQueueIsEmpty: true)
            _ = state.apply(.lingerTimerPosted, writeQueueIsEmpty: true)
            #expect(state.apply(.lingerTimerFinished, writeQueueIsEmpty: true) == .closeDescriptor)
            #expect(state.phase == .closed(.closedByHandler))
        }

        /// A reset (or any failed receive) while lingering closes at once.
        @Test func aResetWhileLingeringClosesAtOnce() {
            var state = openConnection()
            _ = state.apply(.closeGracefully(.closedByHandler), writeQueueIsEmpty: true)
            _ = state.apply(.receiveFinished(.cancelled), writeQueueIsEmpty: true)
            _ = state.apply(.receivePosted, writeQueueIsEmpty: true)
            _ = state.apply(.lingerTimerPosted, writeQueueIsEmpty: true)
            #expect(
                state.apply(.receiveFinished(.failed(.connectionReset)), writeQueueIsEmpty: true) == .closeDescriptor)
            #expect(state.phase == .closed(.closedByHandler))
            _ = state.apply(.lingerTimerFinished, writeQueueIsEmpty: true)
            #expect(state.finishIfDone() == .closedByHandler)
        }
    }
}
