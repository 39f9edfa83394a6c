import CvtVision
import Foundation
import XCTest

/// Paths of the fixtures written by `Scripts/make_image_fixtures.py`.
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")
    static let images = root.appendingPathComponent("images")
    static let preprocess = root.appendingPathComponent("preprocess")

    static func image(_ name: String) -> URL { images.appendingPathComponent(name) }

    static func json(_ url: URL) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url))
        guard let dict = object as? [String: Any] else { throw FixtureError("\(url.path): not a JSON object") }
        return dict
    }
}

struct FixtureError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// zlib's CRC-32 (as Python's `zlib.crc32`).
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}

/// A minimal reader of `.safetensors` files (F32 and U8 tensors).
struct SafetensorsFile {
    struct Entry {
        let dtype: String
        let shape: [Int]
        let bytes: Data
    }

    let entries: [String: Entry]

    init(contentsOf url: URL) throws {
        let data = try Data(contentsOf: url)
        guard data.count >= 8 else { throw FixtureError("\(url.path): too short") }
        let headerLength = data.prefix(8).enumerated().reduce(0) { $0 | (Int($1.element) << (8 * $1.offset)) }
        let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + headerLength))) as? [String: Any] ?? [:]
        var entries: [String: Entry] = [:]
        for (key, value) in header where key != "__metadata__" {
            guard let v = value as? [String: Any], let dtype = v["dtype"] as? String, let shape = v["shape"] as? [Int],
                  let offsets = v["data_offsets"] as? [Int], offsets.count == 2 else {
                throw FixtureError("\(url.path): bad entry \(key)")
            }
            let start = 8 + headerLength + offsets[0], end = 8 + headerLength + offsets[1]
            entries[key] = Entry(dtype: dtype, shape: shape, bytes: data.subdata(in: start..<end))
        }
        self.entries = entries
    }

    func floats(_ key: String) throws -> (shape: [Int], values: [Float]) {
        guard let e = entries[key], e.dtype == "F32" else { throw FixtureError("no F32 tensor \(key)") }
        let values = e.bytes.withUnsafeBytes { raw in
            (0..<(e.bytes.count / 4)).map { Float(bitPattern: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self).littleEndian) }
        }
        return (e.shape, values)
    }
}

/// The formula image: 640 wide × 480 high, R = (7x + 3y) mod 256, G = (x² + y) mod 256,
/// B = (x XOR y) & 255.
func formulaImage(width: Int = 640, height: Int = 480) -> RGBImage {
    RGBImage(width: width, height: height) { x, y in
        (UInt8((7 * x + 3 * y) % 256), UInt8((x * x + y) % 256), UInt8((x ^ y) & 255))
    }
}

func sum(_ bytes: [UInt8]) -> Int { bytes.reduce(0) { $0 + Int($1) } }

/// A seeded generator (SplitMix64) so the fuzz tests are reproducible.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
