import Foundation

/// Minimal JSON value: what the safetensors header parser reads and what `config.json` and the
/// header are written from. Object members keep their order; numbers keep their literal text.
package enum JSONValue: Sendable {
    case object([(key: String, value: JSONValue)])
    case array([JSONValue])
    case string(String)
    /// The literal text of the number as it appears in the header (validated JSON grammar).
    case number(String)
    case bool(Bool)
    case null

    /// Non-negative integer value, or nil for anything else (fractions, exponents, negatives,
    /// values beyond `Int`).
    package var nonNegativeInt: Int? {
        guard case .number(let text) = self, let v = Int(text), v >= 0 else { return nil }
        return v
    }

    package var typeName: String {
        switch self {
        case .object: return "object"
        case .array: return "array"
        case .string: return "string"
        case .number: return "number"
        case .bool: return "boolean"
        case .null: return "null"
        }
    }

    /// Compact JSON rendering for error messages, cut to about `limit` characters.
    package func rendered(limit: Int = 80) -> String {
        var out = ""
        render(into: &out, limit: limit)
        if out.count > limit { return String(out.prefix(limit)) + "…" }
        return out
    }

    /// An integer.
    package static func int(_ v: Int) -> JSONValue { .number(String(v)) }

    /// A float, always with a fraction or exponent (`4.0`, not `4`: transformers v5 validates
    /// float fields as floats); the shortest text that reads back the same double; null when not
    /// finite.
    package static func float(_ v: Double) -> JSONValue {
        guard v.isFinite else { return .null }
        let d = "\(v)"
        return .number(d.contains(".") || d.contains("e") ? d : d + ".0")
    }

    /// Indented JSON (two spaces per level, as Python's `json.dumps(indent=2)`).
    package func pretty(indent: Int = 0) -> String {
        let pad = String(repeating: "  ", count: indent + 1), close = String(repeating: "  ", count: indent)
        switch self {
        case .array(let items):
            if items.isEmpty { return "[]" }
            return "[\n" + items.map { pad + $0.pretty(indent: indent + 1) }.joined(separator: ",\n") + "\n" + close + "]"
        case .object(let members):
            if members.isEmpty { return "{}" }
            return "{\n" + members.map { pad + JSONWriter.quoted($0.key) + ": " + $0.value.pretty(indent: indent + 1) }.joined(separator: ",\n")
                + "\n" + close + "}"
        case .string(let s): return JSONWriter.quoted(s)
        case .number(let t): return t
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        }
    }

    private func render(into out: inout String, limit: Int) {
        if out.count > limit { return }
        switch self {
        case .object(let members):
            out += "{"
            for (i, m) in members.enumerated() {
                if i > 0 { out += "," }
                if out.count > limit { return }
                out += JSONWriter.quoted(m.key) + ":"
                m.value.render(into: &out, limit: limit)
            }
            out += "}"
        case .array(let items):
            out += "["
            for (i, v) in items.enumerated() {
                if i > 0 { out += "," }
                if out.count > limit { return }
                v.render(into: &out, limit: limit)
            }
            out += "]"
        case .string(let s): out += JSONWriter.quoted(s.count > limit ? String(s.prefix(limit)) : s)
        case .number(let t): out += t
        case .bool(let b): out += b ? "true" : "false"
        case .null: out += "null"
        }
    }
}

package struct JSONParseError: Error {
    package let message: String
    package let offset: Int
}

/// Strict RFC 8259 parser over raw bytes (the caller has validated UTF-8). Nesting depth and
/// array length are capped so hostile headers cannot exhaust the stack or memory; duplicate
/// object keys are rejected.
package struct JSONParser {
    static let maxDepth = 64
    static let maxArrayLength = 65_536

    private let bytes: UnsafeRawBufferPointer
    private var pos = 0
    private var depth = 0

    private init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    package static func parse(_ bytes: UnsafeRawBufferPointer) throws -> JSONValue {
        var p = JSONParser(bytes: bytes)
        p.skipWhitespace()
        let v = try p.parseValue()
        p.skipWhitespace()
        if p.pos != bytes.count {
            throw p.error("unexpected \(p.describeCurrent()) after the top-level value")
        }
        return v
    }

    private func error(_ message: String) -> JSONParseError {
        JSONParseError(message: message, offset: pos)
    }

    private func describeCurrent() -> String {
        guard pos < bytes.count else { return "end of header" }
        let c = bytes[pos]
        if c >= 0x21 && c < 0x7F { return "character '\(Character(Unicode.Scalar(c)))'" }
        return "byte 0x" + String(c, radix: 16, uppercase: true)
    }

    private mutating func skipWhitespace() {
        while pos < bytes.count {
            switch bytes[pos] {
            case 0x20, 0x09, 0x0A, 0x0D: pos += 1
            default: return
            }
        }
    }

    private mutating func parseValue() throws -> JSONValue {
        guard pos < bytes.count else { throw error("unexpected end of header") }
        switch bytes[pos] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw error("unexpected \(describeCurrent())")
        }
    }

    private mutating func expectLiteral(_ word: StaticString) throws {
        let n = word.utf8CodeUnitCount
        guard bytes.count - pos >= n else { throw error("invalid literal") }
        let ok = word.withUTF8Buffer { w -> Bool in
            for i in 0..<n where bytes[pos + i] != w[i] { return false }
            return true
        }
        guard ok else { throw error("invalid literal") }
        pos += n
    }

    private mutating func enter() throws {
        depth += 1
        if depth > JSONParser.maxDepth { throw error("nesting deeper than \(JSONParser.maxDepth) levels") }
    }

    private mutating func parseObject() throws -> JSONValue {
        try enter()
        defer { depth -= 1 }
        pos += 1  // '{'
        var members: [(key: String, value: JSONValue)] = []
        var seen = Set<String>()
        skipWhitespace()
        if pos < bytes.count && bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(members) }
        while true {
            skipWhitespace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else {
                throw error("expected a string key, found \(describeCurrent())")
            }
            let keyOffset = pos
            let key = try parseString()
            guard seen.insert(key).inserted else {
                throw JSONParseError(message: "duplicate key \(JSONWriter.quoted(key))", offset: keyOffset)
            }
            skipWhitespace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else {
                throw error("expected ':' after key \(JSONWriter.quoted(key)), found \(describeCurrent())")
            }
            pos += 1
            skipWhitespace()
            let value = try parseValue()
            members.append((key, value))
            skipWhitespace()
            guard pos < bytes.count else { throw error("unterminated object") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(members) }
            throw error("expected ',' or '}' in object, found \(describeCurrent())")
        }
    }

    private mutating func parseArray() throws -> JSONValue {
        try enter()
        defer { depth -= 1 }
        pos += 1  // '['
        var items: [JSONValue] = []
        skipWhitespace()
        if pos < bytes.count && bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
        while true {
            skipWhitespace()
            if items.count >= JSONParser.maxArrayLength {
                throw error("array longer than \(JSONParser.maxArrayLength) elements")
            }
            items.append(try parseValue())
            skipWhitespace()
            guard pos < bytes.count else { throw error("unterminated array") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
            throw error("expected ',' or ']' in array, found \(describeCurrent())")
        }
    }

    private static func hexValue(_ c: UInt8) -> UInt32? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(c - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(c - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(c - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }

    private mutating func parseHex4() throws -> UInt32 {
        guard bytes.count - pos >= 4 else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for i in 0..<4 {
            guard let h = JSONParser.hexValue(bytes[pos + i]) else { throw error("invalid \\u escape") }
            v = v << 4 | h
        }
        pos += 4
        return v
    }

    private mutating func parseString() throws -> String {
        pos += 1  // opening quote
        let start = pos
        // Fast path: no escapes.
        while pos < bytes.count {
            let c = bytes[pos]
            if c == UInt8(ascii: "\"") {
                let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
                pos += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw error("unescaped control character in string") }
            pos += 1
        }
        guard pos < bytes.count else { throw error("unterminated string") }
        var out = [UInt8](UnsafeRawBufferPointer(rebasing: bytes[start..<pos]))
        while pos < bytes.count {
            let c = bytes[pos]
            if c == UInt8(ascii: "\"") {
                pos += 1
                return String(decoding: out, as: UTF8.self)
            }
            if c < 0x20 { throw error("unescaped control character in string") }
            if c != UInt8(ascii: "\\") { out.append(c); pos += 1; continue }
            pos += 1
            guard pos < bytes.count else { break }
            let e = bytes[pos]
            pos += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var code = try parseHex4()
                if (0xD800...0xDBFF).contains(code) {
                    guard bytes.count - pos >= 2, bytes[pos] == UInt8(ascii: "\\"),
                          bytes[pos + 1] == UInt8(ascii: "u") else {
                        throw error("unpaired UTF-16 surrogate in \\u escape")
                    }
                    pos += 2
                    let low = try parseHex4()
                    guard (0xDC00...0xDFFF).contains(low) else {
                        throw error("unpaired UTF-16 surrogate in \\u escape")
                    }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(code) {
                    throw error("unpaired UTF-16 surrogate in \\u escape")
                }
                guard let scalar = Unicode.Scalar(code) else { throw error("invalid \\u escape") }
                UTF8.encode(scalar) { out.append($0) }
            default:
                pos -= 1
                throw error("invalid escape sequence")
            }
        }
        throw error("unterminated string")
    }

    private mutating func parseNumber() throws -> String {
        let start = pos
        func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }
        if bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        guard pos < bytes.count, isDigit(bytes[pos]) else { throw error("invalid number") }
        if bytes[pos] == UInt8(ascii: "0") {
            pos += 1
        } else {
            while pos < bytes.count && isDigit(bytes[pos]) { pos += 1 }
        }
        if pos < bytes.count && bytes[pos] == UInt8(ascii: ".") {
            pos += 1
            guard pos < bytes.count, isDigit(bytes[pos]) else { throw error("invalid number") }
            while pos < bytes.count && isDigit(bytes[pos]) { pos += 1 }
        }
        if pos < bytes.count && (bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E")) {
            pos += 1
            if pos < bytes.count && (bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-")) { pos += 1 }
            guard pos < bytes.count, isDigit(bytes[pos]) else { throw error("invalid number") }
            while pos < bytes.count && isDigit(bytes[pos]) { pos += 1 }
        }
        if pos - start > 64 { throw JSONParseError(message: "number literal too long", offset: start) }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
    }
}

package enum JSONWriter {
    /// JSON string literal with the mandatory escapes; non-ASCII is written as UTF-8.
    package static func quoted(_ s: String) -> String {
        var out = "\""
        out.reserveCapacity(s.utf8.count + 2)
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16, uppercase: false)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
        return out
    }
}
