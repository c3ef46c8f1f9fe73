/// A value behind one pointer, for a field that most instances never set: as `Boxed<Value>?`
/// it costs one word instead of the value's size, and setting it allocates the box.
///
/// A value type: the box is immutable and may be shared between threads like the value.
package indirect enum Boxed<Value> {
    case value(Value)

    /// The value in the box.
    @inlinable
    package var value: Value {
        switch self {
        case .value(let value): value
        }
    }
}

extension Boxed: Sendable where Value: Sendable {}
