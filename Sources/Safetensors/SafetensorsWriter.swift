import CheckpointSupport
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Builds a safetensors file in memory.
///
/// Layout: the header JSON lists `__metadata__` first (when non-empty), then the tensors with
/// keys sorted by UTF-8 bytes; the data section holds the tensors contiguously in that order.
/// The header is padded with spaces so the data section starts at an 8-byte-aligned offset.
public struct SafetensorsWriter: Sendable {
    private struct Entry: Sendable {
        let dtype: SafetensorsDType
        let shape: [Int]
        let bytes: [UInt8]
    }

    /// The header's `__metadata__` string map, written first when non-empty (e.g. `["format": "pt"]`).
    public var metadata: [String: String]
    private var entries: [String: Entry] = [:]
    private static let file = "<writer>"

    /// Creates an empty writer with the given `__metadata__`.
    public init(metadata: [String: String] = [:]) {
        self.metadata = metadata
    }

    /// Names added so far, in the order they will be written.
    public var tensorNames: [String] { entries.keys.sorted(by: Self.byteOrder) }

    /// Adds a floating-point tensor stored as `dtype` (F32, F16, BF16 or F64). F16 uses Swift's
    /// `Float16` conversion and BF16 rounds to nearest even; both round to nearest even.
    public mutating func add(_ name: String, floats: [Float], shape: [Int], as dtype: SafetensorsDType = .f32) throws {
        try checkName(name)
        try checkShape(name, shape, count: floats.count)
        let n = floats.count
        let bytes: [UInt8]
        switch dtype {
        case .f32:
            bytes = floats.withUnsafeBytes { [UInt8]($0) }
        case .f16:
            bytes = Self.encode(n, dtype.byteSize) { dst in
                for i in 0..<n {
                    dst.storeBytes(of: Float16(floats[i]).bitPattern.littleEndian, toByteOffset: i &* 2, as: UInt16.self)
                }
            }
        case .bf16:
            bytes = Self.encode(n, dtype.byteSize) { dst in
                for i in 0..<n {
                    dst.storeBytes(of: Conversions.bf16Bits(floats[i]).littleEndian, toByteOffset: i &* 2, as: UInt16.self)
                }
            }
        case .f64:
            bytes = Self.encode(n, dtype.byteSize) { dst in
                for i in 0..<n {
                    dst.storeBytes(of: Double(floats[i]).bitPattern.littleEndian, toByteOffset: i &* 8, as: UInt64.self)
                }
            }
        case .i64, .i32, .i16, .i8, .u8, .bool:
            throw SafetensorsError(file: Self.file, message:
                "tensor \(quoted(name)): cannot store floats as \(dtype.rawValue) (use F32, F16, BF16 or F64)")
        }
        entries[name] = Entry(dtype: dtype, shape: shape, bytes: bytes)
    }

    /// Adds an integer tensor stored as `dtype` (I64 by default; I32, I16, I8, U8 and BOOL are
    /// range-checked, BOOL accepting only 0 and 1).
    public mutating func add(_ name: String, int64s: [Int64], shape: [Int], as dtype: SafetensorsDType = .i64) throws {
        try checkName(name)
        try checkShape(name, shape, count: int64s.count)
        let n = int64s.count
        func narrow<T: FixedWidthInteger>(_ type: T.Type, _ valid: (Int64) -> Bool = { T(exactly: $0) != nil }) throws -> [UInt8] {
            if let bad = int64s.firstIndex(where: { !valid($0) }) {
                throw SafetensorsError(file: Self.file, message:
                    "tensor \(quoted(name)): value \(int64s[bad]) at index \(bad) does not fit in \(dtype.rawValue)")
            }
            return Self.encode(n, MemoryLayout<T>.size) { dst in
                for i in 0..<n {
                    dst.storeBytes(of: T(truncatingIfNeeded: int64s[i]).littleEndian,
                                   toByteOffset: i &* MemoryLayout<T>.size, as: T.self)
                }
            }
        }
        let bytes: [UInt8]
        switch dtype {
        case .i64: bytes = int64s.withUnsafeBytes { [UInt8]($0) }
        case .i32: bytes = try narrow(Int32.self)
        case .i16: bytes = try narrow(Int16.self)
        case .i8: bytes = try narrow(Int8.self)
        case .u8: bytes = try narrow(UInt8.self)
        case .bool: bytes = try narrow(UInt8.self) { $0 == 0 || $0 == 1 }
        case .f64, .f32, .f16, .bf16:
            throw SafetensorsError(file: Self.file, message:
                "tensor \(quoted(name)): cannot store int64s as \(dtype.rawValue) (use I64, I32, I16, I8, U8 or BOOL)")
        }
        entries[name] = Entry(dtype: dtype, shape: shape, bytes: bytes)
    }

    /// Adds a tensor from raw little-endian bytes; `bytes.count` must equal
    /// `elementCount(shape) * dtype.byteSize`.
    public mutating func add(_ name: String, rawBytes: [UInt8], dtype: SafetensorsDType, shape: [Int]) throws {
        try checkName(name)
        guard let (_, byteCount) = checkedElementCount(shape, byteSize: dtype.byteSize) else {
            throw SafetensorsError(file: Self.file, message: "tensor \(quoted(name)): invalid shape \(shape)")
        }
        guard byteCount == rawBytes.count else {
            throw SafetensorsError(file: Self.file, message:
                "tensor \(quoted(name)): \(rawBytes.count) bytes given but \(dtype.rawValue) shape \(shape) needs \(byteCount)")
        }
        entries[name] = Entry(dtype: dtype, shape: shape, bytes: rawBytes)
    }

    /// The complete file contents.
    public func data() throws -> Data {
        let names = tensorNames
        var json = "{"
        var first = true
        if !metadata.isEmpty {
            json += "\"__metadata__\":{"
            json += metadata.keys.sorted(by: Self.byteOrder).map { key in
                JSONWriter.quoted(key) + ":" + JSONWriter.quoted(metadata[key] ?? "")
            }.joined(separator: ",")
            json += "}"
            first = false
        }
        var offset = 0
        for name in names {
            guard let e = entries[name] else { continue }
            let end = offset + e.bytes.count
            if !first { json += "," }
            first = false
            json += JSONWriter.quoted(name)
            json += ":{\"dtype\":\"\(e.dtype.rawValue)\",\"shape\":["
            json += e.shape.map(String.init).joined(separator: ",")
            json += "],\"data_offsets\":[\(offset),\(end)]}"
            offset = end
        }
        json += "}"
        var header = Array(json.utf8)
        let padding = (8 - header.count % 8) % 8
        header.append(contentsOf: repeatElement(UInt8(ascii: " "), count: padding))
        guard header.count <= SafetensorsFile.maxHeaderLength else {
            throw SafetensorsError(file: Self.file, message:
                "header is \(header.count) bytes, over the \(SafetensorsFile.maxHeaderLength)-byte limit readers accept")
        }

        var out = Data()
        out.reserveCapacity(8 + header.count + offset)
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: header)
        for name in names {
            if let e = entries[name] { out.append(contentsOf: e.bytes) }
        }
        return out
    }

    /// Writes the file atomically: a temporary file in the same directory is written, fsynced
    /// and renamed over `url`.
    public func write(to url: URL) throws {
        let bytes = try data()
        let path = url.path
        guard url.isFileURL else {
            throw SafetensorsError(file: url.absoluteString, message: "not a file URL")
        }
        func fail(_ what: String) -> SafetensorsError {
            let code = errno
            return SafetensorsError(file: path, message: "\(what): \(String(cString: strerror(code))) (errno \(code))")
        }
        // The rename below would replace whatever is there: a device node, a FIFO or a symlink
        // is refused instead (it is not an earlier output).
        var existing = stat()
        if lstat(path, &existing) == 0 && (existing.st_mode & S_IFMT) != S_IFREG {
            throw SafetensorsError(file: path, message: "exists and is not a regular file (a device, FIFO, folder or symlink); refusing to replace it")
        }
        let tmp = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UUID().uuidString)").path
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw fail("cannot create temporary file \(tmp)") }
        var ok = false
        defer { if !ok { unlink(tmp) } }
        do {
            defer { close(fd) }
            try bytes.withUnsafeBytes { (buf: UnsafeRawBufferPointer) in
                var done = 0
                while done < buf.count {
                    guard let base = buf.baseAddress else { break }
                    let n = systemWrite(fd, base + done, buf.count - done)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw fail("write to temporary file \(tmp) failed")
                    }
                    done += n
                }
            }
            guard fsync(fd) == 0 else { throw fail("fsync of temporary file \(tmp) failed") }
        }
        guard rename(tmp, path) == 0 else { throw fail("cannot rename \(tmp) to the destination") }
        ok = true
    }

    // MARK: - Helpers

    private static func byteOrder(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }

    private static func encode(_ n: Int, _ size: Int, _ fill: (UnsafeMutableRawPointer) -> Void) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: n * size) { buf, initialized in
            if let base = buf.baseAddress, n > 0 { fill(UnsafeMutableRawPointer(base)) }
            initialized = n * size
        }
    }

    private func checkName(_ name: String) throws {
        guard !name.isEmpty else {
            throw SafetensorsError(file: Self.file, message: "tensor name must not be empty")
        }
        guard !name.hasPrefix("__") else {
            throw SafetensorsError(file: Self.file, message: "tensor name \(quoted(name)) must not start with \"__\" (reserved)")
        }
        guard entries[name] == nil else {
            throw SafetensorsError(file: Self.file, message: "duplicate tensor name \(quoted(name))")
        }
    }

    private func checkShape(_ name: String, _ shape: [Int], count: Int) throws {
        guard let (elements, _) = checkedElementCount(shape) else {
            throw SafetensorsError(file: Self.file, message:
                "tensor \(quoted(name)): shape \(shape) has a negative dimension or its element count overflows")
        }
        guard elements == count else {
            throw SafetensorsError(file: Self.file, message:
                "tensor \(quoted(name)): shape \(shape) has \(elements) elements but \(count) values were given")
        }
    }
}

@inline(__always)
private func systemWrite(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, buf, count)
    #else
    return Darwin.write(fd, buf, count)
    #endif
}
