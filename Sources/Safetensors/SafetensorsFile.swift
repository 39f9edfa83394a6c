import CheckpointSupport
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A validated, read-only safetensors file.
///
/// `init(url:)` memory-maps the file (`mmap`, `PROT_READ`, `MAP_PRIVATE`) and unmaps it in
/// `deinit`; `init(data:name:)` reads from an in-memory buffer. Both validate the whole header
/// and every tensor's byte range up front, so the accessors never read out of bounds.
/// Instances are immutable and safe to share between threads. (As with any `mmap`, truncating
/// the file on disk while it is mapped makes later accesses fault; do not do that.)
///
/// As the reference implementation (the Rust `safetensors` crate, `Metadata::validate` and
/// `SafeTensors::read_metadata` in safetensors/src/tensor.rs), the tensors' byte ranges, sorted by
/// offset, must cover the data section exactly: the first begins at 0, each begins where the
/// previous ends, the last ends at the end of the file. So a header-length field that is off by a
/// byte (the JSON still parses, its padding cut) is an error, not tensors read shifted. Unknown
/// extra fields in a tensor entry are tolerated.
public final class SafetensorsFile: @unchecked Sendable {
    /// Largest header accepted, as in the Rust `safetensors` crate.
    public static let maxHeaderLength = 100_000_000

    private enum Storage {
        case mapped(MappedFile)
        case memory(Data)
    }

    /// The file's URL, or nil for a reader made with `init(data:name:)`.
    public let url: URL?
    /// The path (or the name given to `init(data:name:)`) used in error messages.
    public let fileName: String
    /// The header's `__metadata__` string map (empty when absent), e.g. `["format": "pt"]`.
    public let metadata: [String: String]
    /// Tensors sorted by their data offsets (file order).
    public let tensors: [TensorInfo]
    /// Absolute offset of the data section (8 + header length).
    public let dataSectionOffset: Int
    private let storage: Storage
    private let index: [String: Int]

    /// Tensor names in file order of their data offsets.
    public var tensorNames: [String] { tensors.map(\.name) }

    /// Memory-maps `url` read-only and validates it.
    public init(url: URL) throws {
        let path = url.path
        guard url.isFileURL else {
            throw SafetensorsError(file: url.absoluteString, message: "not a file URL")
        }
        let file: MappedFile
        do { file = try MappedFile(path: path) } catch {
            switch error {
            case .system(let what): throw SafetensorsError(file: path, message: what)
            case .notARegularFile: throw SafetensorsError(file: path, message: "not a regular file")
            case .empty: throw Self.tooShort(0, file: path)
            }
        }
        guard file.size >= 8 else { throw Self.tooShort(file.size, file: path) }
        let header = try Self.parse(file.bytes, file: path)
        self.url = url
        self.fileName = path
        self.storage = .mapped(file)
        self.metadata = header.metadata
        self.tensors = header.tensors
        self.index = header.index
        self.dataSectionOffset = header.dataOffset
    }

    /// Validates the safetensors bytes in `data`; `name` appears in error messages.
    public init(data: Data, name: String = "<memory>") throws {
        let header = try data.withUnsafeBytes { try Self.parse($0, file: name) }
        self.url = nil
        self.fileName = name
        self.storage = .memory(data)
        self.metadata = header.metadata
        self.tensors = header.tensors
        self.index = header.index
        self.dataSectionOffset = header.dataOffset
    }

    // MARK: - Access

    /// The validated header entry of tensor `name`, or nil when the file has no such tensor.
    public func info(_ name: String) -> TensorInfo? {
        guard let i = index[name] else { return nil }
        return tensors[i]
    }

    /// The raw little-endian bytes of tensor `name`; the buffer is only valid inside `body`.
    public func withRawBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let t = try tensor(name)
        return try withBytes(of: t, body)
    }

    /// Tensor `name` as `Float`s: F32 copied, F16 via `Float16`, BF16 by `bits << 16`, F64
    /// rounded. Integer and BOOL tensors are an error.
    public func floats(_ name: String) throws -> [Float] {
        let t = try tensor(name)
        guard t.dtype.isFloatingPoint else {
            throw SafetensorsError(file: fileName, message:
                "tensor \(quoted(name)) has dtype \(t.dtype.rawValue); floats() needs F32, F16, BF16 or F64")
        }
        return withBytes(of: t) { Conversions.floats(from: $0, dtype: t.dtype, count: t.elementCount) }
    }

    /// Tensor `name` as `Int64`s: I64, I32, I16, I8 and U8 widened, BOOL as 0/1. Floating-point
    /// tensors are an error.
    public func int64s(_ name: String) throws -> [Int64] {
        let t = try tensor(name)
        guard !t.dtype.isFloatingPoint else {
            throw SafetensorsError(file: fileName, message:
                "tensor \(quoted(name)) has dtype \(t.dtype.rawValue); int64s() needs I64, I32, I16, I8, U8 or BOOL")
        }
        return withBytes(of: t) { Conversions.int64s(from: $0, dtype: t.dtype, count: t.elementCount) }
    }

    private func tensor(_ name: String) throws -> TensorInfo {
        guard let t = info(name) else {
            throw SafetensorsError(file: fileName, message: "no tensor named \(quoted(name))")
        }
        return t
    }

    private func withBytes<R>(of t: TensorInfo, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch storage {
        case .mapped(let file):
            return try body(UnsafeRawBufferPointer(rebasing: file.bytes[t.byteRange]))
        case .memory(let data):
            return try data.withUnsafeBytes { all in
                try body(UnsafeRawBufferPointer(rebasing: all[t.byteRange]))
            }
        }
    }

    // MARK: - Validation

    private struct ParsedHeader {
        var metadata: [String: String]
        var tensors: [TensorInfo]
        var index: [String: Int]
        var dataOffset: Int
    }

    private static func tooShort(_ size: Int, file: String) -> SafetensorsError {
        SafetensorsError(file: file, message:
            "file is \(size) bytes, shorter than the 8-byte header length; not a safetensors file")
    }

    private static func parse(_ bytes: UnsafeRawBufferPointer, file: String) throws -> ParsedHeader {
        func fail(_ message: String) -> SafetensorsError { SafetensorsError(file: file, message: message) }

        guard bytes.count >= 8 else { throw tooShort(bytes.count, file: file) }
        let rawLength = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        guard rawLength <= UInt64(maxHeaderLength) else {
            throw fail("header length \(rawLength) exceeds the \(maxHeaderLength)-byte (100 MB) limit; not a safetensors file?")
        }
        let headerLength = Int(rawLength)  // <= 100_000_000, fits
        guard headerLength <= bytes.count - 8 else {
            throw fail("header length \(headerLength) is larger than the \(bytes.count - 8) bytes after the length field (file size \(bytes.count))")
        }
        let dataOffset = 8 + headerLength
        let dataLength = bytes.count - dataOffset
        let headerBytes = UnsafeRawBufferPointer(rebasing: bytes[8..<dataOffset])

        guard String(validating: headerBytes, as: UTF8.self) != nil else {
            throw fail("header (\(headerLength) bytes) is not valid UTF-8")
        }
        let root: JSONValue
        do {
            root = try JSONParser.parse(headerBytes)
        } catch let e as JSONParseError {
            throw fail("header is not valid JSON: \(e.message) at header byte \(e.offset)")
        }
        guard case .object(let members) = root else {
            throw fail("header is a JSON \(root.typeName), not an object")
        }

        var metadata: [String: String] = [:]
        var tensors: [TensorInfo] = []
        tensors.reserveCapacity(members.count)
        for (key, value) in members {
            if key == "__metadata__" {
                guard case .object(let entries) = value else {
                    throw fail("'__metadata__' must be an object of strings, got \(value.typeName) \(value.rendered())")
                }
                for (k, v) in entries {
                    guard case .string(let s) = v else {
                        throw fail("'__metadata__' key \(quoted(k)) must map to a string, got \(v.typeName) \(v.rendered())")
                    }
                    metadata[k] = s
                }
                continue
            }
            tensors.append(try parseEntry(key: key, value: value, dataLength: dataLength,
                                          dataOffset: dataOffset, file: file))
        }

        tensors.sort { a, b in
            if a.dataOffsets.lowerBound != b.dataOffsets.lowerBound {
                return a.dataOffsets.lowerBound < b.dataOffsets.lowerBound
            }
            if a.dataOffsets.upperBound != b.dataOffsets.upperBound {
                return a.dataOffsets.upperBound < b.dataOffsets.upperBound
            }
            return a.name < b.name
        }
        // Contiguous from 0, in offset order (safetensors' `Metadata::validate`).
        var end = 0
        var previous: TensorInfo?
        for t in tensors {
            if t.dataOffsets.lowerBound != end {
                let ranges = previous.map { p in "\(quoted(p.name)) data_offsets [\(p.dataOffsets.lowerBound), \(p.dataOffsets.upperBound)] and " } ?? ""
                let what = t.dataOffsets.lowerBound < end ? "overlap" : "leave a gap of \(t.dataOffsets.lowerBound - end) bytes"
                throw fail("tensors \(ranges)\(quoted(t.name)) data_offsets [\(t.dataOffsets.lowerBound), \(t.dataOffsets.upperBound)] \(what)\(previous == nil ? " (the first tensor must begin at 0)" : ""); the data must be covered exactly, as the safetensors format requires")
            }
            end = t.dataOffsets.upperBound
            previous = t
        }
        // …and to the end of the buffer (safetensors' `read_metadata`: MetadataIncompleteBuffer).
        if end != dataLength {
            throw fail("the tensors cover \(end) bytes but the data section after the \(headerLength)-byte header has \(dataLength); the header length field or the file is wrong (the data must be covered exactly, as the safetensors format requires)")
        }
        var index: [String: Int] = [:]
        index.reserveCapacity(tensors.count)
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        return ParsedHeader(metadata: metadata, tensors: tensors, index: index, dataOffset: dataOffset)
    }

    private static func parseEntry(key: String, value: JSONValue, dataLength: Int, dataOffset: Int,
                                   file: String) throws -> TensorInfo {
        func fail(_ message: String) -> SafetensorsError {
            SafetensorsError(file: file, message: "tensor \(quoted(key)): \(message)")
        }
        guard case .object(let fields) = value else {
            throw fail("entry must be an object, got \(value.typeName) \(value.rendered())")
        }
        func field(_ name: String) throws -> JSONValue {
            guard let v = fields.first(where: { $0.key == name })?.value else {
                throw fail("missing \"\(name)\"")
            }
            return v
        }

        let dtypeValue = try field("dtype")
        guard case .string(let dtypeName) = dtypeValue else {
            throw fail("dtype must be a string, got \(dtypeValue.rendered())")
        }
        guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
            throw fail("unknown dtype \(quoted(dtypeName)) (supported: \(SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", ")))")
        }

        let shapeValue = try field("shape")
        guard case .array(let dims) = shapeValue else {
            throw fail("shape must be an array of non-negative integers, got \(shapeValue.rendered())")
        }
        var shape: [Int] = []
        shape.reserveCapacity(dims.count)
        for d in dims {
            guard let n = d.nonNegativeInt else {
                throw fail("shape must be an array of non-negative integers, got \(shapeValue.rendered()) (bad dimension \(d.rendered()))")
            }
            shape.append(n)
        }
        guard let (elements, byteCount) = checkedElementCount(shape, byteSize: dtype.byteSize) else {
            throw fail("element count of shape \(shapeValue.rendered()) × \(dtype.byteSize) bytes overflows")
        }

        let offsetsValue = try field("data_offsets")
        guard case .array(let offs) = offsetsValue, offs.count == 2,
              let begin = offs[0].nonNegativeInt, let end = offs[1].nonNegativeInt else {
            throw fail("data_offsets must be two non-negative integers [begin, end], got \(offsetsValue.rendered())")
        }
        guard begin <= end else {
            throw fail("data_offsets [\(begin), \(end)]: begin > end")
        }
        guard end <= dataLength else {
            throw fail("data_offsets [\(begin), \(end)]: end is beyond the data section (\(dataLength) bytes)")
        }
        guard end - begin == byteCount else {
            throw fail("data_offsets [\(begin), \(end)] span \(end - begin) bytes but \(dtype.rawValue) shape \(shape) needs \(elements) × \(dtype.byteSize) = \(byteCount)")
        }
        return TensorInfo(name: key, dtype: dtype, shape: shape,
                          byteRange: (dataOffset + begin)..<(dataOffset + end),
                          dataOffsets: begin..<end, elementCount: elements)
    }
}
