/// Every failure of `TFCheckpoint`: the file it concerns and what is wrong, in words that name the
/// offending HDF5 dataset, weight name or HDF5 error.
public struct TFCheckpointError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The path of the `.h5` file.
    public let file: String
    public let message: String

    public init(file: String, message: String) {
        self.file = file
        self.message = message
    }

    public var description: String { "\(file): \(message)" }
}

/// Internal error without the file name; `TFCheckpoint` adds it at the public boundary.
struct FormatError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// Quotes text taken from the file for an error message: printable, at most `limit` characters.
func quoted(_ text: String, limit: Int = 200) -> String {
    var out = ""
    var count = 0
    for scalar in text.unicodeScalars {
        if count >= limit { out += "…"; break }
        switch scalar {
        case "'": out += "\\'"
        case "\\": out += "\\\\"
        case _ where scalar.value < 0x20 || scalar.value == 0x7F || (0x80..<0xA0).contains(scalar.value):
            out += "\\u{\(String(scalar.value, radix: 16))}"
        default: out.unicodeScalars.append(scalar)
        }
        count += 1
    }
    return "'" + out + "'"
}
