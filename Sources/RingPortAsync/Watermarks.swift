/// When a stream stops and goes on: at ``high`` bytes it stops (receiving, or queuing writes), and
/// it goes on once they are below ``low``, half of it, so that it does not flip at every byte.
struct Watermarks: Sendable {
    let high: Int
    let low: Int

    /// `high` bytes (at least 1), and half of them.
    init(high: Int) {
        self.high = max(high, 1)
        low = max(high / 2, 1)
    }
}
