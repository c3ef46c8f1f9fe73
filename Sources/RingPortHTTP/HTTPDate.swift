import Glibc

/// The `Date` header value (IMF-fixdate, RFC 9110 §5.6.7), formatted at most once a second.
///
/// Thread-safety: none; keep one per connection (or per thread). ``format(_:)`` is shared with
/// the tool's SwiftNIO responder (package access).
package struct HTTPDate {
    private var second = -1
    /// `Sun, 06 Nov 1994 08:49:37 GMT`: always 29 bytes.
    private(set) var bytes = [UInt8](repeating: 0x20, count: 29)

    /// Brings ``bytes`` up to the current second.
    mutating func refresh() {
        let now = time(nil)
        guard now != second else { return }
        second = now
        bytes = HTTPDate.format(now)
    }

    /// `seconds` since the epoch as an IMF-fixdate, always in GMT with English names.
    package static func format(_ seconds: time_t) -> [UInt8] {
        var parts = tm()
        var seconds = seconds
        gmtime_r(&seconds, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        var text: [UInt8] = []
        text.reserveCapacity(29)
        func two(_ value: Int32) {
            text.append(UInt8(ascii: "0") + UInt8(value / 10))
            text.append(UInt8(ascii: "0") + UInt8(value % 10))
        }
        text += Array(days[Int(parts.tm_wday)].utf8)
        text += Array(", ".utf8)
        two(parts.tm_mday)
        text.append(0x20)
        text += Array(months[Int(parts.tm_mon)].utf8)
        text.append(0x20)
        let year = parts.tm_year + 1900
        two(year / 100)
        two(year % 100)
        text.append(0x20)
        two(parts.tm_hour)
        text.append(UInt8(ascii: ":"))
        two(parts.tm_min)
        text.append(UInt8(ascii: ":"))
        two(parts.tm_sec)
        text += Array(" GMT".utf8)
        return text
    }
}
