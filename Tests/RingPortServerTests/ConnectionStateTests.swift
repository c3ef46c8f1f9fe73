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
            var state = ConnectionState(multishotReceive: true)
            #expect(state.apply(.closeGracefully(.serverShutdown), writeQueueIsEmpty: true) == [])
            #expect(state.apply(.closeNow(.serverShutdown), writeQueueIsEmpty: true) == [])
            #expect(state.phase == .unopened)
            #expect(state.finishIfDone() == nil)
            #expect(state.descriptorIsOpen)

            #expect(state.apply(.opened, writeQueueIsEmpty: true) == .postReceive)
            #expect(state.phase == .open)
            #expect(state.apply(.receivePosted, writeQueueIsEmpty: true) == [])
            #expect(state.apply(.closeGracefully(.serverShutdown), writeQueueIsEmpty: true) == .cancelReceive)
            #expect(state.phase == .draining(.serverShutdown))
            #expect(state.apply(.receiveFinished(.cancelled), writeQueueIsEmpty: true) == .closeDescriptor)
            #expect(state.finishIfDone() == .serverShutdown)
        }
    }
}
