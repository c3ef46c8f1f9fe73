/// Where a RingPortNIO channel is in its life, with the one transition function that moves it
/// and says which pipeline events to fire (in the spirit of NIOPosix's lifecycle manager).
///
/// `fresh` → `registered` (`channelRegistered`) → `active` (`channelActive`) → `closed`
/// (`channelInactive` if it was active, then `channelUnregistered` if it was registered).
struct ChannelLifecycle {
    /// The states.
    enum State: Equatable {
        /// Made, not registered on its loop.
        case fresh
        /// Registered on its loop, not yet bound (listener) or connected.
        case registered
        /// Bound and listening, or connected.
        case active
        /// Closed (from any state).
        case closed
    }

    /// What happened.
    enum Event {
        case register
        case activate
        case close
    }

    /// The pipeline events a transition calls for, in order.
    struct Callouts: OptionSet {
        let rawValue: UInt8
        static let registered = Callouts(rawValue: 1)
        static let active = Callouts(rawValue: 2)
        static let inactive = Callouts(rawValue: 4)
        static let unregistered = Callouts(rawValue: 8)
    }

    private(set) var state = State.fresh

    /// Moves to the state `event` leads to and returns the events to fire, or nil when the
    /// event is not allowed now (registering twice, activating a closed channel, closing twice).
    mutating func handle(_ event: Event) -> Callouts? {
        switch (state, event) {
        case (.fresh, .register):
            state = .registered
            return .registered
        case (.registered, .activate):
            state = .active
            return .active
        case (.fresh, .close):
            state = .closed
            return []
        case (.registered, .close):
            state = .closed
            return .unregistered
        case (.active, .close):
            state = .closed
            return [.inactive, .unregistered]
        default:
            return nil
        }
    }

    /// Registered (and maybe active), not closed.
    var isRegistered: Bool { state == .registered || state == .active }
    /// Bound or connected, not closed.
    var isActive: Bool { state == .active }
    /// Not closed.
    var isOpen: Bool { state != .closed }
}
