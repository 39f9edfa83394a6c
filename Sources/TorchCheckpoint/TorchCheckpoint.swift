import CheckpointSupport
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A PyTorch checkpoint (`pytorch_model.bin` as written by `torch.save(state_dict)`), read
/// without executing anything.
///
/// The file is memory-mapped; the zip central directory is parsed and every offset checked
/// against the file size; `<archive>/data.pkl` is CRC-checked and run through a restricted
/// unpickler that only builds data (dicts, OrderedDicts, tuples, numbers, strings, storages and
/// tensors) and refuses every other global or opcode with an error naming it, the way
/// `torch.load(weights_only=True)` does. Tensor data stays in the mapping until asked for: each
/// storage file is CRC-checked the first time it is read, and strided views (transposes, slices
/// with a storage offset, expanded dimensions, several tensors sharing one storage) are gathered
/// into contiguous row-major arrays.
///
/// Accepted top level: a dict or OrderedDict of tensors; if it holds no tensors itself but has a
/// `"state_dict"` or `"model"` entry that is a dict, that one is used. Non-tensor values in the
/// state dict are ignored.
///
/// Not supported (clear errors): the legacy pre-1.6 non-zip format, TorchScript archives, tensor
/// subclasses / quantized / sparse tensors, storage types other than float32, float16,
/// bfloat16, float64, int64, int32, int16, int8, uint8 and bool, encrypted or multi-volume zips,
/// compression other than STORED and DEFLATE.
///
/// Instances are immutable after `init` (apart from an internal, locked record of which storages
/// have passed their CRC check) and safe to share between threads. As with any `mmap`, do not
/// truncate the file on disk while it is open.
public final class TorchCheckpoint: @unchecked Sendable {
    private enum Memory {
        case mapped(MappedFile)
        case owned(UnsafeMutableRawPointer)
    }

    private struct Parsed {
        let zip: ZipArchive
        let archiveName: String
        let bigEndian: Bool
        let formatVersion: Int?
        let names: [String]
        let tensors: [String: TensorInfo]
        let pickleEntry: Int
    }

    /// The file's URL (nil for `init(data:name:)`).
    public let url: URL?
    /// The path (or the name given to `init(data:name:)`) used in error messages.
    public let fileName: String
    /// The archive's top-level folder, e.g. `"pytorch_model"` or `"archive"`.
    public let archiveName: String
    /// The contents of `<archive>/version` if it is an integer (3 for current PyTorch).
    public let formatVersion: Int?
    /// `"little"` or `"big"`, from `<archive>/byteorder` (little when the record is absent).
    public let byteOrder: String
    /// The state-dict keys whose values are tensors, in pickle (insertion) order.
    public let tensorNames: [String]

    private let memory: Memory
    private let archive: ZipArchive
    private let tensors: [String: TensorInfo]
    private let lock = NSLock()
    private var verifiedEntries = Set<Int>()
    /// Compressed storages, inflated (and CRC-checked) the first time a tensor reads them and
    /// kept: each is inflated once, however many tensors view it.
    private var inflated: [Int: UnsafeMutableRawBufferPointer] = [:]

    /// Memory-maps `url` read-only and parses it. Nothing in the file is executed.
    public init(url: URL) throws {
        let path = url.path
        guard url.isFileURL else {
            throw TorchCheckpointError(file: url.absoluteString, message: "not a file URL")
        }
        let file: MappedFile
        do { file = try MappedFile(path: path) } catch {
            switch error {
            case .system(let what): throw TorchCheckpointError(file: path, message: what)
            case .notARegularFile: throw TorchCheckpointError(file: path, message: "not a regular file")
            case .empty: throw TorchCheckpointError(file: path, message: "file is empty (0 bytes): not a PyTorch checkpoint")
            }
        }
        let parsed = try Self.parse(ByteRange(base: UnsafeRawPointer(file.base), count: file.size), file: path)
        self.url = url
        self.fileName = path
        self.memory = .mapped(file)
        (archive, archiveName, byteOrder, formatVersion, tensorNames, tensors) =
            (parsed.zip, parsed.archiveName, parsed.bigEndian ? "big" : "little", parsed.formatVersion, parsed.names, parsed.tensors)
        if parsed.zip.entries[parsed.pickleEntry].method == 0 { verifiedEntries.insert(parsed.pickleEntry) }
    }

    /// Parses a checkpoint held in memory (the bytes are copied). `name` is used in errors.
    public init(data: Data, name: String = "<memory>") throws {
        guard !data.isEmpty else {
            throw TorchCheckpointError(file: name, message: "file is empty (0 bytes): not a PyTorch checkpoint")
        }
        let base = UnsafeMutableRawPointer.allocate(byteCount: data.count, alignment: 64)
        data.copyBytes(to: base.assumingMemoryBound(to: UInt8.self), count: data.count)
        let parsed: Parsed
        do {
            parsed = try Self.parse(ByteRange(base: UnsafeRawPointer(base), count: data.count), file: name)
        } catch {
            base.deallocate()
            throw error
        }
        self.url = nil
        self.fileName = name
        self.memory = .owned(base)
        (archive, archiveName, byteOrder, formatVersion, tensorNames, tensors) =
            (parsed.zip, parsed.archiveName, parsed.bigEndian ? "big" : "little", parsed.formatVersion, parsed.names, parsed.tensors)
        if parsed.zip.entries[parsed.pickleEntry].method == 0 { verifiedEntries.insert(parsed.pickleEntry) }
    }

    deinit {
        // A mapping is released by its MappedFile.
        if case .owned(let base) = memory { base.deallocate() }
        for buffer in inflated.values { buffer.deallocate() }
    }

    // MARK: Public accessors

    /// The tensor's shape (`[]` for a scalar), or nil if there is no tensor of that name.
    public func shape(of name: String) -> [Int]? { tensors[name]?.shape }

    /// `"float32"`, `"float16"`, `"bfloat16"`, `"float64"`, `"int64"`, `"int32"`, `"int16"`,
    /// `"int8"`, `"uint8"` or `"bool"`; nil if there is no tensor of that name.
    public func dtype(of name: String) -> String? { tensors[name]?.dtype.rawValue }

    /// The values of a floating-point tensor (float32, float16, bfloat16 or float64) as Float, in
    /// contiguous row-major order. Integer and bool tensors are an error (use `int64s(_:)`).
    public func floats(_ name: String) throws -> [Float] {
        let t = try info(name)
        guard t.dtype.isFloatingPoint else {
            throw error("tensor \(quoted(name)) has dtype \(t.dtype.rawValue), not a floating-point dtype; read it with int64s(_:)")
        }
        if t.count == 0 { return [] }
        let swap = needsByteSwap
        return try withStorage(name, t) { src in
            [Float](unsafeUninitializedCapacity: t.count) { dst, initialized in
                let out = dst.baseAddress!
                let n = t.count
                switch t.dtype {
                case .float32:
                    gatherRaw(t, src, out)
                    if swap { out.withMemoryRebound(to: UInt32.self, capacity: n) { byteSwap($0, n) } }
                case .float16:
                    withRaw(UInt16.self, t, src, swap) { raw in for i in 0..<n { out[i] = floatFromHalf(raw[i]) } }
                case .bfloat16:
                    withRaw(UInt16.self, t, src, swap) { raw in for i in 0..<n { out[i] = Float(bitPattern: UInt32(raw[i]) << 16) } }
                case .float64:
                    withRaw(UInt64.self, t, src, swap) { raw in for i in 0..<n { out[i] = Float(Double(bitPattern: raw[i])) } }
                default: break
                }
                initialized = n
            }
        }
    }

    /// The values of an integer or bool tensor (int64, int32, int16, int8, uint8, bool → 0/1) as
    /// Int64, in contiguous row-major order. Floating-point tensors are an error.
    public func int64s(_ name: String) throws -> [Int64] {
        let t = try info(name)
        guard !t.dtype.isFloatingPoint else {
            throw error("tensor \(quoted(name)) has dtype \(t.dtype.rawValue), not an integer dtype; read it with floats(_:)")
        }
        if t.count == 0 { return [] }
        let swap = needsByteSwap
        return try withStorage(name, t) { src in
            [Int64](unsafeUninitializedCapacity: t.count) { dst, initialized in
                let out = dst.baseAddress!
                let n = t.count
                switch t.dtype {
                case .int64:
                    gatherRaw(t, src, out)
                    if swap { out.withMemoryRebound(to: UInt64.self, capacity: n) { byteSwap($0, n) } }
                case .int32:
                    withRaw(UInt32.self, t, src, swap) { raw in for i in 0..<n { out[i] = Int64(Int32(bitPattern: raw[i])) } }
                case .int16:
                    withRaw(UInt16.self, t, src, swap) { raw in for i in 0..<n { out[i] = Int64(Int16(bitPattern: raw[i])) } }
                case .int8:
                    withRaw(UInt8.self, t, src, false) { raw in for i in 0..<n { out[i] = Int64(Int8(bitPattern: raw[i])) } }
                case .uint8:
                    withRaw(UInt8.self, t, src, false) { raw in for i in 0..<n { out[i] = Int64(raw[i]) } }
                case .bool:
                    withRaw(UInt8.self, t, src, false) { raw in for i in 0..<n { out[i] = raw[i] != 0 ? 1 : 0 } }
                default: break
                }
                initialized = n
            }
        }
    }

    /// Reads every entry of the archive and checks its CRC-32 (tensor storages are otherwise
    /// checked lazily, the first time a tensor reads them).
    public func verifyChecksums() throws {
        for (i, entry) in archive.entries.enumerated() {
            do {
                try archive.withBytes(entry, verify: true) { _ in }
            } catch let e as FormatError {
                throw error(e.message)
            }
            lock.lock(); verifiedEntries.insert(i); lock.unlock()
        }
    }

    // MARK: Internals

    /// Whether the file's byte order differs from the host's.
    private var needsByteSwap: Bool { (byteOrder == "big") == (1.littleEndian == 1) }

    private func error(_ message: String) -> TorchCheckpointError {
        TorchCheckpointError(file: fileName, message: message)
    }

    private func info(_ name: String) throws -> TensorInfo {
        guard let t = tensors[name] else { throw error("no tensor named \(quoted(name)) in the checkpoint") }
        return t
    }

    /// Runs `body` on the bytes of the tensor's storage (from the mapping for STORED entries),
    /// checking the storage's CRC-32 the first time it is read.
    private func withStorage<R>(_ name: String, _ t: TensorInfo, _ body: (UnsafeRawPointer) throws -> R) throws -> R {
        let entry = archive.entries[t.entryIndex]
        if entry.method != 0 {
            lock.lock()
            defer { lock.unlock() }
            do {
                if inflated[t.entryIndex] == nil { inflated[t.entryIndex] = try archive.inflated(entry) }
            } catch let e as FormatError {
                throw error("tensor \(quoted(name)): \(e.message)")
            }
            return try body(UnsafeRawPointer(inflated[t.entryIndex]!.baseAddress!))
        }
        lock.lock()
        let verified = verifiedEntries.contains(t.entryIndex)
        lock.unlock()
        do {
            return try archive.withBytes(entry, verify: !verified) { raw in
                if !verified && entry.method == 0 {
                    lock.lock(); verifiedEntries.insert(t.entryIndex); lock.unlock()
                }
                return try body(raw.baseAddress!)
            }
        } catch let e as FormatError {
            throw error("tensor \(quoted(name)): \(e.message)")
        }
    }

    // MARK: Parsing

    private static let legacyMagic: [UInt8] = [0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19]

    private static func parse(_ bytes: ByteRange, file: String) throws -> Parsed {
        do {
            return try parseFormat(bytes)
        } catch let e as FormatError {
            throw TorchCheckpointError(file: file, message: e.message)
        }
    }

    private static func parseFormat(_ bytes: ByteRange) throws -> Parsed {
        let head = Array(UnsafeRawBufferPointer(start: bytes.base, count: min(bytes.count, 16)))
        let isZip = head.count >= 4 && head[0] == 0x50 && head[1] == 0x4B
            && ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6))
        if !isZip {
            if head.starts(with: legacyMagic) {
                throw FormatError("this is the legacy (pre-PyTorch-1.6, non-zip) torch.save format, which is not supported; re-save it with a current PyTorch (torch.save(torch.load(path, weights_only=True), path))")
            }
            if head.first == 0x80 {
                throw FormatError("this is a bare pickle, not a zip-format PyTorch checkpoint (possibly the legacy torch.save format), which is not supported")
            }
            if head.count >= 9, head[8] == UInt8(ascii: "{") {
                throw FormatError("not a zip archive: this looks like a safetensors file, not a PyTorch checkpoint")
            }
            let shown = head.prefix(8).map { b -> String in let h = String(b, radix: 16); return h.count < 2 ? "0" + h : h }
            throw FormatError("not a zip archive (starts with bytes \(shown.joined(separator: " "))): not a PyTorch zip checkpoint")
        }

        let archive = try ZipArchive(bytes)

        // <archive>/data.pkl, with an arbitrary archive name.
        let candidates = archive.entries.indices.filter { i in
            let parts = archive.entries[i].name.split(separator: "/", omittingEmptySubsequences: false)
            return parts.last == "data.pkl" && parts.count <= 2
        }
        guard let pickleEntry = candidates.first else {
            let names = archive.entries.prefix(5).map { quoted($0.name) }.joined(separator: ", ")
            throw FormatError("no <archive>/data.pkl in the zip archive (\(archive.entries.count) entries\(names.isEmpty ? "" : ": " + names)\(archive.entries.count > 5 ? ", …" : "")): not a PyTorch checkpoint")
        }
        guard candidates.count == 1 else {
            throw FormatError("the zip archive holds several data.pkl records (\(candidates.map { quoted(archive.entries[$0].name) }.joined(separator: ", ")))")
        }
        let pickleName = archive.entries[pickleEntry].name
        let prefix = String(pickleName.dropLast("data.pkl".count))
        let archiveName = prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix

        var bigEndian = false
        if let entry = archive[prefix + "byteorder"] {
            let text = try smallText(archive, entry)
            switch text {
            case "little": bigEndian = false
            case "big": bigEndian = true
            default: throw FormatError("unknown byte order \(quoted(text)) in \(quoted(entry.name)); expected 'little' or 'big'")
            }
        }
        let formatVersion = try archive[prefix + "version"].flatMap { Int(try smallText(archive, $0)) }

        // Unpickle (CRC-checked first). A compressed pickle is inflated in memory: bounded.
        let pickleRecord = archive.entries[pickleEntry]
        if pickleRecord.method != 0 && pickleRecord.uncompressedSize > maxCompressedPickle {
            throw FormatError("data.pkl is compressed and inflates to \(pickleRecord.uncompressedSize) bytes; at most \(maxCompressedPickle) are accepted")
        }
        let unpickler: RestrictedUnpickler
        let root: PickleValue
        do {
            (unpickler, root) = try archive.withBytes(archive.entries[pickleEntry], verify: true) { raw in
                guard let base = raw.baseAddress, raw.count > 0 else { throw FormatError("data.pkl is empty") }
                var u = RestrictedUnpickler(ByteRange(base: base, count: raw.count))
                let v = try u.load()
                return (u, v)
            }
        } catch let e as FormatError {
            if archive[prefix + "constants.pkl"] != nil || archive.entries.contains(where: { $0.name.hasPrefix(prefix + "code/") }) {
                throw FormatError(e.message + " (this looks like a TorchScript archive from torch.jit.save, which is not supported; save its state_dict() with torch.save instead)")
            }
            throw e
        }

        // The state dict (optionally wrapped as {"state_dict": …} or {"model": …}).
        guard case .dict(var dict) = root else {
            throw FormatError("data.pkl holds a \(root.typeName), not a dict: not a state dict")
        }
        func holdsTensors(_ d: Int) -> Bool {
            unpickler.dicts[d].values.contains { if case .tensor = $0 { return true } else { return false } }
        }
        if !holdsTensors(dict) {
            for wrapper in ["state_dict", "model"] {
                if case .dict(let inner)? = unpickler.lookup(dict, wrapper), holdsTensors(inner) {
                    dict = inner
                    break
                }
            }
        }

        var names: [String] = []
        var tensors: [String: TensorInfo] = [:]
        var viewed: [Int: Int] = [:]  // entry → bytes its tensors reach into
        let d = unpickler.dicts[dict]
        for (k, v) in Swift.zip(d.keys, d.values) {
            guard case .tensor(let ti) = v else { continue }
            guard case .string(let name) = k else {
                throw FormatError("the state dict has a tensor under a \(k.typeName) key; keys must be strings")
            }
            let record = unpickler.tensors[ti]
            let storage = unpickler.storages[record.storage]
            let entryName = prefix + "data/" + storage.key
            guard let entryIndex = archive.index[entryName] else {
                throw FormatError("tensor \(quoted(name)): its storage \(quoted(storage.key)) (\(quoted(entryName))) is missing from the archive")
            }
            let entry = archive.entries[entryIndex]
            let needed = storage.numel.multipliedReportingOverflow(by: storage.dtype.itemSize)
            guard !needed.overflow, needed.partialValue <= entry.uncompressedSize else {
                throw FormatError("tensor \(quoted(name)): storage \(quoted(storage.key)) declares \(storage.numel) \(storage.dtype.rawValue) elements but \(quoted(entryName)) holds only \(entry.uncompressedSize) bytes")
            }
            let layout = try checkExtent(name: name, record, storage)
            viewed[entryIndex] = max(viewed[entryIndex] ?? 0, layout.extent * storage.dtype.itemSize)
            names.append(name)
            tensors[name] = TensorInfo(dtype: storage.dtype, shape: record.shape, strides: record.strides,
                                       offset: record.offset, count: layout.count, isContiguous: layout.contiguous,
                                       entryIndex: entryIndex)
        }
        // A DEFLATE-compressed storage is inflated into memory (once, then kept): only what its
        // tensors view justifies that memory. PyTorch writes storages STORED (mapped, never
        // copied); a compressed storage that holds far more than its tensors view is refused.
        var inflatedTotal = 0, viewedTotal = 0
        for (entry, bytes) in viewed where archive.entries[entry].method != 0 {
            inflatedTotal += archive.entries[entry].uncompressedSize
            viewedTotal += bytes
        }
        if inflatedTotal > 2 * viewedTotal + compressedSlack {
            throw FormatError("the compressed storages inflate to \(inflatedTotal) bytes but their tensors view only \(viewedTotal); refused (at most twice the viewed bytes + \(compressedSlack) are inflated)")
        }
        return Parsed(zip: archive, archiveName: archiveName, bigEndian: bigEndian, formatVersion: formatVersion,
                      names: names, tensors: tensors, pickleEntry: pickleEntry)
    }

    /// The largest compressed data.pkl inflated (a state dict's pickle is well below 1 MB per
    /// thousand tensors).
    static let maxCompressedPickle = 64 << 20
    /// Compressed storages may inflate to twice what their tensors view plus this.
    static let compressedSlack = 1 << 20

    /// Checks that every element the view addresses lies inside its storage.
    private static func checkExtent(name: String, _ t: TensorRecord, _ s: StorageRecord) throws -> (count: Int, contiguous: Bool, extent: Int) {
        func overflow() -> FormatError {
            FormatError("tensor \(quoted(name)): size \(t.shape) with stride \(t.strides) overflows")
        }
        var count = 1
        var lastIndex = t.offset
        for (size, stride) in Swift.zip(t.shape, t.strides) {
            let c = count.multipliedReportingOverflow(by: size)
            guard !c.overflow else { throw overflow() }
            count = c.partialValue
            if size > 0 {
                let step = (size - 1).multipliedReportingOverflow(by: stride)
                guard !step.overflow else { throw overflow() }
                let sum = lastIndex.addingReportingOverflow(step.partialValue)
                guard !sum.overflow else { throw overflow() }
                lastIndex = sum.partialValue
            }
        }
        if count > 0 && lastIndex >= s.numel {
            throw FormatError("tensor \(quoted(name)): storage offset \(t.offset) with size \(t.shape) and stride \(t.strides) reaches element \(lastIndex), past the end of storage \(quoted(s.key)) (\(s.numel) \(s.dtype.rawValue) elements)")
        }
        // Broadcast (stride-0) views may address more elements than their storage holds; refuse
        // absurd element counts instead of trying to allocate them.
        guard count <= max(s.numel, 1 << 28) else {
            throw FormatError("tensor \(quoted(name)): size \(t.shape) (\(count) elements) is implausibly large for storage \(quoted(s.key)) of \(s.numel) elements")
        }
        var contiguous = true
        var expected = 1
        for (size, stride) in Swift.zip(t.shape, t.strides).reversed() where size != 1 {
            if stride != expected { contiguous = false; break }
            expected *= size
        }
        return (count, contiguous, count > 0 ? lastIndex + 1 : 0)
    }

    private static func smallText(_ zip: ZipArchive, _ entry: ZipEntry) throws -> String {
        guard entry.uncompressedSize <= 256 else {
            throw FormatError("zip entry \(quoted(entry.name)) is unexpectedly large (\(entry.uncompressedSize) bytes)")
        }
        return try zip.withBytes(entry, verify: true) { raw in
            String(decoding: raw, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }
}

// MARK: Element conversion

/// Where a tensor's elements are: a strided view into the storage file `entryIndex`.
struct TensorInfo {
    let dtype: TorchDType
    let shape: [Int]
    let strides: [Int]
    let offset: Int
    let count: Int
    let isContiguous: Bool
    let entryIndex: Int
}

/// Copies the raw bytes of the elements a strided view addresses into `dst`, in row-major
/// order: one memcpy for a contiguous tensor, one per row when the last dimension is dense.
func gatherRaw(_ t: TensorInfo, _ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer) {
    let item = t.dtype.itemSize
    let n = t.count
    if n == 0 { return }
    if t.isContiguous {
        memcpy(dst, src + t.offset * item, n * item)
        return
    }
    let rank = t.shape.count  // >= 1: scalars are contiguous
    let inner = t.shape[rank - 1]
    let innerStride = t.strides[rank - 1]
    let rowBytes = inner * item
    var index = [Int](repeating: 0, count: rank)
    var base = t.offset
    var out = dst
    var done = 0
    while done < n {
        if innerStride == 1 {
            memcpy(out, src + base * item, rowBytes)
        } else {
            var s = src + base * item
            let step = innerStride * item
            switch item {
            case 8: for k in 0..<inner { out.storeBytes(of: s.loadUnaligned(as: UInt64.self), toByteOffset: k * 8, as: UInt64.self); s += step }
            case 4: for k in 0..<inner { out.storeBytes(of: s.loadUnaligned(as: UInt32.self), toByteOffset: k * 4, as: UInt32.self); s += step }
            case 2: for k in 0..<inner { out.storeBytes(of: s.loadUnaligned(as: UInt16.self), toByteOffset: k * 2, as: UInt16.self); s += step }
            default: for k in 0..<inner { out.storeBytes(of: s.load(as: UInt8.self), toByteOffset: k, as: UInt8.self); s += step }
            }
        }
        out += rowBytes
        done += inner
        var d = rank - 2
        while d >= 0 {
            index[d] += 1
            base += t.strides[d]
            if index[d] < t.shape[d] { break }
            base -= t.strides[d] * t.shape[d]
            index[d] = 0
            d -= 1
        }
    }
}

/// Gathers the tensor's elements as `Raw` words in host byte order into a temporary buffer.
func withRaw<Raw: FixedWidthInteger>(_: Raw.Type, _ t: TensorInfo, _ src: UnsafeRawPointer, _ swap: Bool,
                                    _ body: (UnsafePointer<Raw>) -> Void) {
    let buffer = UnsafeMutablePointer<Raw>.allocate(capacity: max(t.count, 1))
    defer { buffer.deallocate() }
    gatherRaw(t, src, UnsafeMutableRawPointer(buffer))
    if swap { byteSwap(buffer, t.count) }
    body(buffer)
}

func byteSwap<Raw: FixedWidthInteger>(_ p: UnsafeMutablePointer<Raw>, _ n: Int) {
    for i in 0..<n { p[i] = p[i].byteSwapped }
}

/// IEEE 754 binary16 → binary32 (exact; keeps signed zeros, subnormals, infinities and NaNs).
@inline(__always)
func floatFromHalf(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = UInt32(h >> 10) & 0x1F
    let mantissa = UInt32(h & 0x3FF)
    if exponent == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13)) }
    if exponent == 0 {
        let magnitude = Float(mantissa) * (1.0 / 16_777_216.0)  // mantissa × 2^-24
        return sign != 0 ? -magnitude : magnitude
    }
    return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
}
