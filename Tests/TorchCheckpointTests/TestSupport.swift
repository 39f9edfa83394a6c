import Foundation
import TorchCheckpoint
import XCTest

let torchFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures").appendingPathComponent("torch")

func fixture(_ name: String) -> URL { torchFixtures.appendingPathComponent(name) }

/// Asserts that `body` throws a TorchCheckpointError whose description contains every fragment.
func assertThrows<T>(_ fragments: [String], file: StaticString = #filePath, line: UInt = #line,
                     _ body: () throws -> T) {
    do {
        _ = try body()
        XCTFail("expected an error containing \(fragments)", file: file, line: line)
    } catch let error as TorchCheckpointError {
        for fragment in fragments where !error.description.contains(fragment) {
            XCTFail("error does not contain \"\(fragment)\": \(error.description)", file: file, line: line)
        }
    } catch {
        XCTFail("unexpected error type \(type(of: error)): \(error)", file: file, line: line)
    }
}

// MARK: CRC-32 and a minimal zip writer (independent of the library's zlib use)

let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
    var c = UInt32(n)
    for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    return c
}

func crc32(_ bytes: [UInt8]) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
    return c ^ 0xFFFF_FFFF
}

extension Array where Element == UInt8 {
    mutating func le16(_ v: Int) { append(UInt8(v & 0xFF)); append(UInt8((v >> 8) & 0xFF)) }
    mutating func le32(_ v: UInt32) { for i in 0..<4 { append(UInt8((v >> (8 * UInt32(i))) & 0xFF)) } }
    mutating func le64(_ v: UInt64) { for i in 0..<8 { append(UInt8((v >> (8 * UInt64(i))) & 0xFF)) } }
}

struct ZipItem {
    var name: String
    var data: [UInt8]
    /// 0 = stored; 8 = deflate using one stored DEFLATE block (valid, uncompressed).
    var method: UInt16 = 0
    var flags: UInt16 = 0
    /// Overrides for corrupt archives.
    var crcOverride: UInt32?
    var sizeOverride: UInt32?
    var payloadOverride: [UInt8]?
}

/// A raw DEFLATE stream made of one final stored block.
func deflateStored(_ data: [UInt8]) -> [UInt8] {
    precondition(data.count <= 0xFFFF)
    var out: [UInt8] = [0x01]
    out.le16(data.count)
    out.le16(~data.count & 0xFFFF)
    return out + data
}

func makeZip(_ items: [ZipItem], comment: [UInt8] = []) -> [UInt8] {
    var out: [UInt8] = []
    var central: [UInt8] = []
    for item in items {
        let name = Array(item.name.utf8)
        let payload = item.payloadOverride ?? (item.method == 8 ? deflateStored(item.data) : item.data)
        let crc = item.crcOverride ?? crc32(item.data)
        let size = item.sizeOverride ?? UInt32(item.data.count)
        let offset = UInt32(out.count)
        out.le32(0x0403_4B50); out.le16(20); out.le16(Int(item.flags)); out.le16(Int(item.method))
        out.le16(0); out.le16(0x21); out.le32(crc); out.le32(UInt32(payload.count)); out.le32(size)
        out.le16(name.count); out.le16(0)
        out += name + payload
        central.le32(0x0201_4B50); central.le16(0x031E); central.le16(20); central.le16(Int(item.flags))
        central.le16(Int(item.method)); central.le16(0); central.le16(0x21); central.le32(crc)
        central.le32(UInt32(payload.count)); central.le32(size); central.le16(name.count)
        central.le16(0); central.le16(0); central.le16(0); central.le16(0); central.le32(0); central.le32(offset)
        central += name
    }
    let cdOffset = UInt32(out.count)
    out += central
    out.le32(0x0605_4B50); out.le16(0); out.le16(0); out.le16(items.count); out.le16(items.count)
    out.le32(UInt32(central.count)); out.le32(cdOffset); out.le16(comment.count)
    return out + comment
}

/// A torch-style archive: <prefix>/data.pkl, byteorder, data/<key>..., version.
func makeCheckpoint(pickle: [UInt8], storages: [(String, [UInt8])] = [], prefix: String = "archive",
                    byteorder: String = "little") -> Data {
    var items = [ZipItem(name: "\(prefix)/data.pkl", data: pickle),
                 ZipItem(name: "\(prefix)/byteorder", data: Array(byteorder.utf8))]
    items += storages.map { ZipItem(name: "\(prefix)/data/\($0.0)", data: $0.1) }
    items.append(ZipItem(name: "\(prefix)/version", data: Array("3\n".utf8)))
    return Data(makeZip(items))
}

func float32Bytes(_ values: [Float]) -> [UInt8] {
    var out: [UInt8] = []
    for v in values { out.le32(v.bitPattern) }
    return out
}

func int64Bytes(_ values: [Int64]) -> [UInt8] {
    var out: [UInt8] = []
    for v in values { out.le64(UInt64(bitPattern: v)) }
    return out
}

// MARK: A pickle writer for crafted data.pkl files

struct PickleWriter {
    var bytes: [UInt8]

    init(protocol version: UInt8 = 2) { bytes = [0x80, version] }

    mutating func op(_ code: UInt8) { bytes.append(code) }
    mutating func raw(_ b: [UInt8]) { bytes += b }

    mutating func string(_ s: String) {
        let u = Array(s.utf8)
        op(0x58); bytes.le32(UInt32(u.count)); bytes += u
    }

    mutating func shortString(_ s: String) {
        let u = Array(s.utf8)
        op(0x8C); bytes.append(UInt8(u.count)); bytes += u
    }

    mutating func int(_ v: Int) {
        if (0..<256).contains(v) { op(0x4B); bytes.append(UInt8(v)) }
        else if let i = Int32(exactly: v) { op(0x4A); bytes.le32(UInt32(bitPattern: i)) }
        else { long1(Int64(v)) }
    }

    mutating func long1(_ v: Int64) {
        op(0x8A); bytes.append(8); bytes.le64(UInt64(bitPattern: v))
    }

    mutating func global(_ module: String, _ name: String) {
        op(0x63); bytes += Array("\(module)\n\(name)\n".utf8)
    }

    mutating func stackGlobal(_ module: String, _ name: String) {
        shortString(module); shortString(name); op(0x93)
    }

    mutating func mark() { op(0x28) }
    mutating func tuple() { op(0x74) }
    mutating func emptyDict() { op(0x7D) }
    mutating func setItems() { op(0x75) }
    mutating func stop() { op(0x2E) }

    mutating func intTuple(_ values: [Int]) {
        mark(); for v in values { int(v) }; tuple()
    }

    /// _rebuild_tensor_v2(('storage', torch.<cls>, key, 'cpu', numel), offset, size, stride, False, OrderedDict())
    mutating func tensor(storageClass: String = "FloatStorage", key: String, numel: Int, offset: Int = 0,
                         shape: [Int], stride: [Int]) {
        global("torch._utils", "_rebuild_tensor_v2")
        mark()
        mark(); string("storage"); global("torch", storageClass); string(key); string("cpu"); int(numel); tuple()
        op(0x51)  // BINPERSID
        int(offset)
        intTuple(shape)
        intTuple(stride)
        op(0x89)  // NEWFALSE
        global("collections", "OrderedDict"); op(0x29); op(0x52)
        tuple()
        op(0x52)  // REDUCE
    }

    /// {name: tensor, ...} with SETITEMS, then STOP.
    static func stateDict(_ entries: [(String, (inout PickleWriter) -> Void)]) -> [UInt8] {
        var p = PickleWriter()
        p.emptyDict()
        p.mark()
        for (name, value) in entries { p.string(name); value(&p) }
        p.setItems()
        p.stop()
        return p.bytes
    }
}

/// A deterministic generator for the fuzz tests.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// Reads a safetensors file (independently of the Safetensors module, which this target does
/// not depend on): name → (dtype, shape, bytes).
func readSafetensors(_ url: URL) throws -> [String: (dtype: String, shape: [Int], bytes: [UInt8])] {
    let data = [UInt8](try Data(contentsOf: url))
    var n = 0
    for i in 0..<8 { n |= Int(data[i]) << (8 * i) }
    let header = try JSONSerialization.jsonObject(with: Data(data[8..<(8 + n)])) as! [String: Any]
    var out: [String: (dtype: String, shape: [Int], bytes: [UInt8])] = [:]
    for (name, value) in header where name != "__metadata__" {
        let info = value as! [String: Any]
        let offsets = (info["data_offsets"] as! [NSNumber]).map { $0.intValue }
        let shape = (info["shape"] as! [NSNumber]).map { $0.intValue }
        out[name] = (info["dtype"] as! String, shape, Array(data[(8 + n + offsets[0])..<(8 + n + offsets[1])]))
    }
    return out
}

/// binary16 → Float via ldexp (a different route from the library's bit manipulation).
func halfToFloatReference(_ h: UInt16) -> Float {
    let sign: Float = h & 0x8000 != 0 ? -1 : 1
    let e = Int((h >> 10) & 0x1F)
    let m = Float(h & 0x3FF)
    if e == 0x1F { return m == 0 ? sign * .infinity : .nan }
    if e == 0 { return sign * Float(sign: .plus, exponent: -24, significand: m) }
    return sign * Float(sign: .plus, exponent: e - 25, significand: m + 1024)
}
