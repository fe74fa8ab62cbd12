/// Strings a peer chose (names, reasons) on their way into a log line: escaped, so a newline or an escape sequence
/// cannot forge a line of its own, and cut to a length that keeps a log readable.
public enum LogText {
    public static func escape(_ s: String, limit: Int = 200) -> String {
        var out = ""
        for u in s.unicodeScalars.prefix(limit) {
            switch u {
            case "\\": out += "\\\\"
            case " "..."~": out.unicodeScalars.append(u)
            default: out += u.value < 0x100 ? "\\x" + hex(u.value, 2) : "\\u{" + hex(u.value, 1) + "}"
            }
        }
        return s.unicodeScalars.count > limit ? out + "..." : out
    }

    static func hex(_ v: UInt32, _ width: Int) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }

    /// A routing identity as printable text.
    public static func peer(_ id: PeerID) -> String {
        id.prefix(16).map { hex(UInt32($0), 2) }.joined()
    }
}
