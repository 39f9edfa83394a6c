import Foundation

/// Element types of the safetensors format that this module understands.
public enum SafetensorsDType: String, Sendable, CaseIterable, Equatable, Hashable {
    case f64 = "F64"
    case f32 = "F32"
    case f16 = "F16"
    case bf16 = "BF16"
    case i64 = "I64"
    case i32 = "I32"
    case i16 = "I16"
    case i8 = "I8"
    case u8 = "U8"
    case bool = "BOOL"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8, .u8, .bool: return 1
        }
    }

    /// True for F64, F32, F16 and BF16.
    public var isFloatingPoint: Bool {
        switch self {
        case .f64, .f32, .f16, .bf16: return true
        case .i64, .i32, .i16, .i8, .u8, .bool: return false
        }
    }
}

/// Every failure of this module, for reading and for writing.
///
/// `file` is the path (or the name given to `SafetensorsFile(data:name:)`, or `"<writer>"`);
/// `message` names the tensor key and the offending value when there is one.
public struct SafetensorsError: Error, CustomStringConvertible, Equatable, Sendable, LocalizedError {
    /// The path, the name given to `SafetensorsFile(data:name:)`, or `"<writer>"`.
    public let file: String
    /// What is wrong, naming the tensor key and offending value when there is one.
    public let message: String

    /// Creates an error for `file` with `message`.
    public init(file: String, message: String) {
        self.file = file
        self.message = message
    }

    /// `"safetensors '<file>': <message>"`.
    public var description: String { "safetensors '\(file)': \(message)" }
    /// The same text as `description`, for `LocalizedError`.
    public var errorDescription: String? { description }
}

/// One tensor's header entry, validated.
public struct TensorInfo: Sendable, Equatable {
    /// The tensor's key in the header (e.g. `cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight`).
    public let name: String
    /// The stored element type (the header's `dtype`).
    public let dtype: SafetensorsDType
    /// Dimensions as stored (the header's `shape`), outermost first; `[]` for a scalar.
    public let shape: [Int]
    /// Absolute byte offsets in the file (or in the in-memory buffer).
    public let byteRange: Range<Int>
    /// Offsets relative to the start of the data section, as written in the header.
    public let dataOffsets: Range<Int>
    private let count: Int

    init(name: String, dtype: SafetensorsDType, shape: [Int], byteRange: Range<Int>,
         dataOffsets: Range<Int>, elementCount: Int) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.byteRange = byteRange
        self.dataOffsets = dataOffsets
        self.count = elementCount
    }

    /// Product of `shape` (1 for a scalar with shape `[]`); validated not to overflow.
    public var elementCount: Int { count }
    /// `byteRange.count`, equal to `elementCount * dtype.byteSize`.
    public var byteCount: Int { byteRange.count }
}

/// Product of `shape` with overflow and sign checks; nil when a dimension is negative or the
/// product (times `byteSize`) overflows `Int`.
func checkedElementCount(_ shape: [Int], byteSize: Int = 1) -> (elements: Int, bytes: Int)? {
    var n = 1
    for d in shape {
        guard d >= 0 else { return nil }
        let (p, o) = n.multipliedReportingOverflow(by: d)
        guard !o else { return nil }
        n = p
    }
    let (b, o) = n.multipliedReportingOverflow(by: byteSize)
    guard !o else { return nil }
    return (n, b)
}
