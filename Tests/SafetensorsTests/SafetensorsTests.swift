import Foundation
import XCTest
@testable import Safetensors

final class SafetensorsTests: XCTestCase {
    private var tempDir: URL?

    override func setUpWithError() throws {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("SafetensorsTests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        tempDir = dir
    }

    override func tearDownWithError() throws {
        if let dir = tempDir { try? FileManager.default.removeItem(at: dir) }
    }

    private func tempURL(_ name: String) throws -> URL {
        let dir = try XCTUnwrap(tempDir)
        return dir.appendingPathComponent(name)
    }

    // MARK: - Hand-built files (no writer involved)

    private func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    private func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    private func le16(_ v: UInt16) -> [UInt8] { [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8)] }

    /// 8-byte length + header bytes + data bytes, built by hand.
    private func rawFile(header: [UInt8], data: [UInt8] = [], declaredLength: UInt64? = nil) -> Data {
        Data(le64(declaredLength ?? UInt64(header.count)) + header + data)
    }

    private func rawFile(_ header: String, data: [UInt8] = []) -> Data {
        rawFile(header: Array(header.utf8), data: data)
    }

    func testHandBuiltFileIsReadCorrectly() throws {
        // Header keys in a different order than the data; unaligned offsets; space padding.
        var data: [UInt8] = []
        data += [0x01, 0xFF, 0x7F]                                       // i8 "a" [0,3): 1, -1, 127
        data += le32(Float(1.5).bitPattern) + le32(Float(-2).bitPattern) // f32 "b" [3,11) unaligned
        data += le16(0x3C00) + le16(0xC100)                               // f16 "c" [11,15): 1, -2.5
        data += le16(0x3F80) + le16(0xC020) + le16(0x4049)                // bf16 "d" [15,21)
        data += le64(Double(0.25).bitPattern)                             // f64 "e" [21,29)
        data += le64(UInt64(bitPattern: -5)) + le64(1 << 40)              // i64 "f" [29,45)
        data += le32(UInt32(bitPattern: -70000))                          // i32 "g" [45,49)
        data += le16(UInt16(bitPattern: -300))                            // i16 "h" [49,51)
        data += [200, 0]                                                  // u8 "i" [51,53)
        data += [1, 0, 1]                                                 // bool "j" [53,56)
        let header = """
        {"j":{"dtype":"BOOL","shape":[3],"data_offsets":[53,56]},
         "__metadata__":{"format":"pt","note":"h\\u00e9\\"x\\""},
         "b":{"dtype":"F32","shape":[2,1],"data_offsets":[3,11]},
         "a":{"dtype":"I8","shape":[3],"data_offsets":[0,3]},
         "d":{"dtype":"BF16","shape":[3],"data_offsets":[15,21]},
         "c":{"dtype":"F16","shape":[2],"data_offsets":[11,15]},
         "e":{"dtype":"F64","shape":[],"data_offsets":[21,29]},
         "f":{"dtype":"I64","shape":[1,2],"data_offsets":[29,45]},
         "g":{"dtype":"I32","shape":[1],"data_offsets":[45,49]},
         "h":{"dtype":"I16","shape":[1],"data_offsets":[49,51]},
         "i":{"dtype":"U8","shape":[2],"data_offsets":[51,53]},
         "z":{"dtype":"F32","shape":[0,4],"data_offsets":[56,56]}}
        """ + String(repeating: " ", count: 13)
        let file = try SafetensorsFile(data: rawFile(header, data: data), name: "hand.safetensors")

        XCTAssertEqual(file.tensorNames, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "z"])
        XCTAssertEqual(file.metadata, ["format": "pt", "note": "hé\"x\""])
        XCTAssertEqual(try file.int64s("a"), [1, -1, 127])
        XCTAssertEqual(try file.floats("b"), [1.5, -2])
        XCTAssertEqual(try file.floats("c"), [1, -2.5])
        XCTAssertEqual(try file.floats("d"), [1, -2.5, 3.140625])
        XCTAssertEqual(try file.floats("e"), [0.25])
        XCTAssertEqual(try file.int64s("f"), [-5, 1 << 40])
        XCTAssertEqual(try file.int64s("g"), [-70000])
        XCTAssertEqual(try file.int64s("h"), [-300])
        XCTAssertEqual(try file.int64s("i"), [200, 0])
        XCTAssertEqual(try file.int64s("j"), [1, 0, 1])
        XCTAssertEqual(try file.floats("z"), [])

        let headerLength = Array(header.utf8).count
        let b = try XCTUnwrap(file.info("b"))
        XCTAssertEqual(b.dtype, .f32)
        XCTAssertEqual(b.shape, [2, 1])
        XCTAssertEqual(b.elementCount, 2)
        XCTAssertEqual(b.byteRange, (8 + headerLength + 3)..<(8 + headerLength + 11))
        XCTAssertEqual(file.info("e")?.elementCount, 1)
        XCTAssertEqual(file.info("z")?.elementCount, 0)
        XCTAssertNil(file.info("nope"))
        XCTAssertEqual(try file.withRawBytes("i") { Array($0) }, [200, 0])
        XCTAssertEqual(try file.withRawBytes("z") { $0.count }, 0)
    }

    func testDataSliceWithNonZeroStartIndex() throws {
        var w = SafetensorsWriter()
        try w.add("x", floats: [1, 2, 3], shape: [3])
        let bytes = try w.data()
        let padded = Data([9, 9, 9]) + bytes + Data([7])
        let slice = padded[3..<(3 + bytes.count)]
        XCTAssertEqual(slice.startIndex, 3)
        let file = try SafetensorsFile(data: slice, name: "slice")
        XCTAssertEqual(try file.floats("x"), [1, 2, 3])
    }

    // MARK: - Round trips

    func testRoundTripF32() throws {
        let values: [Float] = [0, -0.0, 1, -2.5, 3.14159, .greatestFiniteMagnitude, .leastNonzeroMagnitude, .infinity, -.infinity]
        var w = SafetensorsWriter()
        try w.add("w", floats: values, shape: [3, 3])
        let file = try SafetensorsFile(data: try w.data(), name: "f32")
        let back = try file.floats("w")
        XCTAssertEqual(back.map(\.bitPattern), values.map(\.bitPattern))
        XCTAssertEqual(file.info("w")?.shape, [3, 3])
        XCTAssertEqual(file.info("w")?.dtype, .f32)

        var n = SafetensorsWriter()
        try n.add("nan", floats: [.nan], shape: [1])
        XCTAssertTrue(try SafetensorsFile(data: n.data()).floats("nan")[0].isNaN)
    }

    func testRoundTripBF16ExactBits() throws {
        let values: [Float] = [
            1.0, -2.5, 3.14159, 0,
            Float(bitPattern: 0x3F80_8000),  // tie, even below -> stays 0x3F80
            Float(bitPattern: 0x3F81_8000),  // tie, odd below -> rounds up to 0x3F82
            Float(bitPattern: 0x3F80_8001),  // above half -> 0x3F81
            Float(bitPattern: 0x3F80_7FFF),  // below half -> 0x3F80
            .greatestFiniteMagnitude,        // rounds to +inf
            -.infinity,
        ]
        let expectedBits: [UInt16] = [0x3F80, 0xC020, 0x4049, 0x0000, 0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80, 0xFF80]
        var w = SafetensorsWriter()
        try w.add("b", floats: values, shape: [values.count], as: .bf16)
        try w.add("nan", floats: [.nan], shape: [], as: .bf16)
        let file = try SafetensorsFile(data: try w.data(), name: "bf16")
        let bits = try file.withRawBytes("b") { raw in
            (0..<values.count).map { UInt16(raw[2 * $0]) | UInt16(raw[2 * $0 + 1]) << 8 }
        }
        XCTAssertEqual(bits, expectedBits)
        let back = try file.floats("b")
        XCTAssertEqual(back[0], 1.0)
        XCTAssertEqual(back[1], -2.5)
        XCTAssertEqual(back[2], 3.140625)
        XCTAssertEqual(back[5], Float(bitPattern: 0x3F82_0000))
        XCTAssertEqual(back[8], .infinity)
        let nanBits = try file.withRawBytes("nan") { UInt16($0[0]) | UInt16($0[1]) << 8 }
        XCTAssertEqual(nanBits & 0x7F80, 0x7F80)
        XCTAssertNotEqual(nanBits & 0x007F, 0)
        XCTAssertTrue(try file.floats("nan")[0].isNaN)
    }

    func testRoundTripF16Rounding() throws {
        let values: [Float] = [
            1.0, -2.5, 0.1, 65504, 65520, 1e-8,
            1 + 0x1p-11,      // tie between 1 and 1+2^-10 -> even (1.0)
            1 + 3 * 0x1p-11,  // tie between 1+2^-10 and 1+2^-9 -> even (1+2^-9)
            0x1p-24,          // smallest subnormal
        ]
        let expectedBits: [UInt16] = [0x3C00, 0xC100, 0x2E66, 0x7BFF, 0x7C00, 0x0000, 0x3C00, 0x3C02, 0x0001]
        var w = SafetensorsWriter()
        try w.add("h", floats: values, shape: [values.count], as: .f16)
        let file = try SafetensorsFile(data: try w.data(), name: "f16")
        let bits = try file.withRawBytes("h") { raw in
            (0..<values.count).map { UInt16(raw[2 * $0]) | UInt16(raw[2 * $0 + 1]) << 8 }
        }
        XCTAssertEqual(bits, expectedBits)
        let back = try file.floats("h")
        XCTAssertEqual(back[0], 1)
        XCTAssertEqual(back[1], -2.5)
        XCTAssertEqual(back[2], 0.099975586)
        XCTAssertEqual(back[3], 65504)
        XCTAssertEqual(back[4], .infinity)
        XCTAssertEqual(back[7], 1 + 0x1p-9)
        XCTAssertEqual(back[8], 0x1p-24)
    }

    func testRoundTripI64AndNarrowIntegers() throws {
        let values: [Int64] = [0, -1, .max, .min, 42, 1 << 40]
        var w = SafetensorsWriter()
        try w.add("ids", int64s: values, shape: [2, 3])
        try w.add("i32", int64s: [-70000, 5], shape: [2], as: .i32)
        try w.add("u8", int64s: [0, 255], shape: [2], as: .u8)
        try w.add("mask", int64s: [1, 0, 1], shape: [3], as: .bool)
        try w.add("f64", floats: [0.5, -1], shape: [2], as: .f64)
        let file = try SafetensorsFile(data: try w.data(), name: "ints")
        XCTAssertEqual(try file.int64s("ids"), values)
        XCTAssertEqual(file.info("ids")?.dtype, .i64)
        XCTAssertEqual(file.info("ids")?.shape, [2, 3])
        XCTAssertEqual(try file.int64s("i32"), [-70000, 5])
        XCTAssertEqual(try file.int64s("u8"), [0, 255])
        XCTAssertEqual(try file.int64s("mask"), [1, 0, 1])
        XCTAssertEqual(try file.floats("f64"), [0.5, -1])
    }

    func testMetadataRoundTripAndHeaderLayout() throws {
        let meta = ["format": "pt", "quote\"back\\slash": "line\nbreak\t\u{01}", "unicode": "π≈3.14 🚀"]
        var w = SafetensorsWriter(metadata: meta)
        try w.add("zeta", floats: [1], shape: [1])
        try w.add("alpha", floats: [2, 3], shape: [2])
        try w.add("Mid", int64s: [7], shape: [])
        let bytes = try w.data()
        let file = try SafetensorsFile(data: bytes, name: "meta")
        XCTAssertEqual(file.metadata, meta)
        // Keys sorted by bytes ("M" < "a" < "z"), data in that order.
        XCTAssertEqual(file.tensorNames, ["Mid", "alpha", "zeta"])
        XCTAssertEqual(file.info("Mid")?.dataOffsets, 0..<8)
        XCTAssertEqual(file.info("alpha")?.dataOffsets, 8..<16)
        XCTAssertEqual(file.info("zeta")?.dataOffsets, 16..<20)
        XCTAssertEqual(try file.int64s("Mid"), [7])
        XCTAssertEqual(try file.floats("alpha"), [2, 3])
        // Data section contiguous and the file ends with the last tensor.
        XCTAssertEqual(file.info("zeta")?.byteRange.upperBound, bytes.count)

        let headerLength = Int(bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        let header = String(decoding: bytes[8..<(8 + headerLength)], as: UTF8.self)
        XCTAssertTrue(header.hasPrefix("{\"__metadata__\":{"))
        let trimmed = header.trimmingCharacters(in: .whitespaces)
        XCTAssertTrue(trimmed.hasSuffix("}"))
        let alpha = try XCTUnwrap(header.range(of: "\"alpha\""))
        let zeta = try XCTUnwrap(header.range(of: "\"zeta\""))
        let mid = try XCTUnwrap(header.range(of: "\"Mid\""))
        XCTAssertLessThan(mid.lowerBound, alpha.lowerBound)
        XCTAssertLessThan(alpha.lowerBound, zeta.lowerBound)
    }

    func testWrittenHeaderIsAligned() throws {
        for nameLength in 1...20 {
            var w = SafetensorsWriter(metadata: nameLength % 3 == 0 ? ["k": String(repeating: "v", count: nameLength)] : [:])
            try w.add(String(repeating: "n", count: nameLength), floats: [1, 2], shape: [2], as: .bf16)
            let bytes = try w.data()
            let headerLength = Int(bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
            XCTAssertEqual((8 + headerLength) % 8, 0, "name length \(nameLength)")
            let header = Array(bytes[8..<(8 + headerLength)])
            let lastBrace = try XCTUnwrap(header.lastIndex(of: UInt8(ascii: "}")))
            XCTAssertTrue(header[(lastBrace + 1)...].allSatisfy { $0 == 0x20 }, "padding must be spaces")
            XCTAssertLessThan(header.count - lastBrace - 1, 8)
            let file = try SafetensorsFile(data: bytes, name: "aligned")
            XCTAssertEqual(file.dataSectionOffset % 8, 0)
            XCTAssertEqual(try file.floats(String(repeating: "n", count: nameLength)), [1, 2])
        }
        // Empty writer still produces a valid file.
        let empty = try SafetensorsWriter().data()
        XCTAssertEqual(empty.count, 16)
        XCTAssertEqual(try SafetensorsFile(data: empty).tensorNames, [])
    }

    // MARK: - Writer errors

    func testWriterErrors() throws {
        var w = SafetensorsWriter()
        try w.add("ok", floats: [1], shape: [1])
        func expectError(_ contains: String, _ body: () throws -> Void, line: UInt = #line) {
            XCTAssertThrowsError(try body(), line: line) { error in
                XCTAssertTrue(error is SafetensorsError, line: line)
                XCTAssertTrue("\(error)".contains(contains), "\(error)", line: line)
            }
        }
        expectError("'ok'") { try w.add("ok", floats: [1], shape: [1]) }
        expectError("empty") { try w.add("", floats: [1], shape: [1]) }
        expectError("__x") { try w.add("__x", floats: [1], shape: [1]) }
        expectError("__metadata__") { try w.add("__metadata__", int64s: [1], shape: [1]) }
        expectError("'m'") { try w.add("m", floats: [1, 2, 3], shape: [2, 2]) }
        expectError("'m'") { try w.add("m", int64s: [1, 2, 3], shape: [2]) }
        expectError("'m'") { try w.add("m", floats: [], shape: [-1]) }
        expectError("'m'") { try w.add("m", floats: [1], shape: [Int.max, 2]) }
        expectError("I32") { try w.add("m", floats: [1], shape: [1], as: .i32) }
        expectError("F32") { try w.add("m", int64s: [1], shape: [1], as: .f32) }
        expectError("300") { try w.add("m", int64s: [1, 300], shape: [2], as: .u8) }
        expectError("2") { try w.add("m", int64s: [2], shape: [1], as: .bool) }
        expectError("'m'") { try w.add("m", rawBytes: [1, 2, 3], dtype: .f16, shape: [2]) }
        XCTAssertEqual(w.tensorNames, ["ok"])
    }

    // MARK: - Corruption

    private let corruptName = "corrupt-model.safetensors"

    /// Asserts that `bytes` fail to load, both in memory and from disk via mmap, with an error
    /// whose description names the file and contains every string in `mentions`.
    private func assertRejects(_ bytes: Data, mentions: [String], line: UInt = #line) throws {
        XCTAssertThrowsError(try SafetensorsFile(data: bytes, name: corruptName), line: line) { error in
            guard let e = error as? SafetensorsError else {
                return XCTFail("unexpected error type \(error)", line: line)
            }
            let text = e.description
            XCTAssertEqual(e.file, self.corruptName, line: line)
            XCTAssertTrue(text.contains(self.corruptName), text, line: line)
            for m in mentions { XCTAssertTrue(text.contains(m), "missing \(m) in: \(text)", line: line) }
        }
        let url = try tempURL(corruptName)
        try bytes.write(to: url)
        XCTAssertThrowsError(try SafetensorsFile(url: url), line: line) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(url.path), text, line: line)
            for m in mentions { XCTAssertTrue(text.contains(m), "missing \(m) in: \(text)", line: line) }
        }
    }

    private func entry(_ key: String = "w", dtype: String = "\"F32\"", shape: String = "[2]", offsets: String = "[0,8]") -> String {
        "\"\(key)\":{\"dtype\":\(dtype),\"shape\":\(shape),\"data_offsets\":\(offsets)}"
    }

    func testFileTooShort() throws {
        for n in 0..<8 {
            try assertRejects(Data(repeating: 0, count: n), mentions: ["\(n) bytes", "shorter"])
        }
    }

    func testHeaderLengthLargerThanFile() throws {
        let header = Array("{}".utf8)
        try assertRejects(rawFile(header: header, declaredLength: 3), mentions: ["header length 3", "larger"])
        try assertRejects(rawFile(header: header, declaredLength: 99_999_999), mentions: ["99999999"])
    }

    func testHeaderLengthOver100MB() throws {
        try assertRejects(rawFile(header: Array("{}".utf8), declaredLength: 100_000_001), mentions: ["100000001", "100 MB"])
        try assertRejects(rawFile(header: Array("{}".utf8), declaredLength: .max), mentions: ["\(UInt64.max)"])
    }

    func testHeaderNotUTF8() throws {
        var header = Array("{\"w\":{}}".utf8)
        header[2] = 0xFF
        try assertRejects(rawFile(header: header), mentions: ["UTF-8"])
        try assertRejects(rawFile(header: Array("{\"a\":1}".utf8) + [0xC3]), mentions: ["UTF-8"])
    }

    func testHeaderNotJSONObject() throws {
        try assertRejects(rawFile("hello world"), mentions: ["not valid JSON"])
        try assertRejects(rawFile(""), mentions: ["not valid JSON"])
        try assertRejects(rawFile("[1,2]"), mentions: ["array", "not an object"])
        try assertRejects(rawFile("\"str\""), mentions: ["string", "not an object"])
        try assertRejects(rawFile("{\"w\":1,}"), mentions: ["not valid JSON"])
        try assertRejects(rawFile("{\"w\":1} x"), mentions: ["not valid JSON"])
        try assertRejects(rawFile("{\"w\":\"a\\qb\"}"), mentions: ["escape"])
        try assertRejects(rawFile("{\"w\":\"\\ud800\"}"), mentions: ["surrogate"])
        try assertRejects(rawFile("{\"w\":\"unterminated}"), mentions: ["unterminated"])
        try assertRejects(rawFile("{\"w\":01}"), mentions: ["not valid JSON"])
        try assertRejects(rawFile("{\"w\":tru}"), mentions: ["literal"])
        try assertRejects(rawFile(String(repeating: "[", count: 100_000)), mentions: ["nesting"])
        try assertRejects(rawFile("{\"w\":{\"x\":" + String(repeating: "{\"a\":", count: 5000)), mentions: ["nesting"])
        try assertRejects(rawFile("{\"w\":" + String(repeating: "0,", count: 70_000) + "0]}"), mentions: ["not valid JSON"])
        try assertRejects(rawFile("{\"w\":[" + String(repeating: "0,", count: 70_000) + "0]}"), mentions: ["array longer"])
    }

    func testDuplicateKeys() throws {
        try assertRejects(rawFile("{" + entry() + "," + entry() + "}", data: Array(repeating: 0, count: 8)),
                          mentions: ["duplicate key", "\"w\""])
    }

    func testEntryNotObject() throws {
        try assertRejects(rawFile("{\"w\":5}"), mentions: ["'w'", "object", "5"])
        try assertRejects(rawFile("{\"w\":[1,2]}"), mentions: ["'w'", "[1,2]"])
        try assertRejects(rawFile("{\"w\":null}"), mentions: ["'w'", "null"])
    }

    func testMissingFields() throws {
        try assertRejects(rawFile("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", data: [0, 0, 0, 0]), mentions: ["'w'", "dtype"])
        try assertRejects(rawFile("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", data: [0, 0, 0, 0]), mentions: ["'w'", "shape"])
        try assertRejects(rawFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", data: [0, 0, 0, 0]), mentions: ["'w'", "data_offsets"])
    }

    func testUnknownDType() throws {
        let data = [UInt8](repeating: 0, count: 8)
        try assertRejects(rawFile("{" + entry(dtype: "\"F8_E4M3\"") + "}", data: data), mentions: ["'w'", "F8_E4M3"])
        try assertRejects(rawFile("{" + entry(dtype: "\"f32\"") + "}", data: data), mentions: ["'w'", "f32"])
        try assertRejects(rawFile("{" + entry(dtype: "4") + "}", data: data), mentions: ["'w'", "dtype", "4"])
    }

    func testBadShapes() throws {
        let data = [UInt8](repeating: 0, count: 8)
        for shape in ["3", "\"2\"", "[-2]", "[2.0]", "[1e1]", "[\"2\"]", "[null]", "[true]", "[[2]]", "{}",
                      "[99999999999999999999999]"] {
            try assertRejects(rawFile("{" + entry(shape: shape) + "}", data: data), mentions: ["'w'", "shape", shape])
        }
    }

    func testElementCountOverflow() throws {
        let data = [UInt8](repeating: 0, count: 8)
        try assertRejects(rawFile("{" + entry(shape: "[4294967296,4294967296]") + "}", data: data),
                          mentions: ["'w'", "overflow", "4294967296"])
        // Elements fit in Int but bytes (× 4) do not.
        try assertRejects(rawFile("{" + entry(shape: "[2305843009213693952,2]") + "}", data: data),
                          mentions: ["'w'", "overflow"])
        // Zero anywhere makes the product 0 even with huge other dims: valid empty tensor.
        let ok = try SafetensorsFile(data: rawFile("{" + entry(shape: "[9223372036854775807,0]", offsets: "[0,0]") + "}"))
        XCTAssertEqual(ok.info("w")?.elementCount, 0)
    }

    func testBadDataOffsets() throws {
        let data = [UInt8](repeating: 0, count: 8)
        for offsets in ["[0]", "[0,8,9]", "[\"0\",8]", "[0,8.5]", "[-1,8]", "8", "[]", "[0,null]"] {
            try assertRejects(rawFile("{" + entry(offsets: offsets) + "}", data: data),
                              mentions: ["'w'", "data_offsets", offsets])
        }
        try assertRejects(rawFile("{" + entry(offsets: "[8,0]") + "}", data: data), mentions: ["'w'", "[8, 0]", "begin > end"])
        try assertRejects(rawFile("{" + entry(offsets: "[8,16]") + "}", data: data), mentions: ["'w'", "[8, 16]", "beyond"])
        try assertRejects(rawFile("{" + entry(offsets: "[0,9223372036854775807]") + "}", data: data),
                          mentions: ["'w'", "9223372036854775807", "beyond"])
    }

    func testByteLengthMismatch() throws {
        try assertRejects(rawFile("{" + entry(offsets: "[0,4]") + "}", data: [0, 0, 0, 0]), mentions: ["'w'", "[0, 4]", "8"])
        try assertRejects(rawFile("{" + entry(dtype: "\"BF16\"", offsets: "[0,8]") + "}", data: Array(repeating: 0, count: 8)),
                          mentions: ["'w'", "BF16"])
    }

    func testOverlappingTensors() throws {
        let data = [UInt8](repeating: 0, count: 12)
        try assertRejects(rawFile("{" + entry("a", offsets: "[0,8]") + "," + entry("b", offsets: "[4,12]") + "}", data: data),
                          mentions: ["'a'", "'b'", "overlap"])
        // Overlap with a non-neighbour: c lies inside a big tensor that starts first.
        let big = [UInt8](repeating: 0, count: 32)
        try assertRejects(rawFile("{" + entry("big", shape: "[8]", offsets: "[0,32]") + "," + entry("x", offsets: "[24,32]") + ","
                                  + entry("c", shape: "[1]", offsets: "[8,12]") + "}", data: big),
                          mentions: ["'big'", "overlap"])
        // Identical ranges.
        try assertRejects(rawFile("{" + entry("a") + "," + entry("b") + "}", data: Array(repeating: 0, count: 8)),
                          mentions: ["'a'", "'b'", "overlap"])
        // Empty tensors next to others are fine.
        let ok = try SafetensorsFile(data: rawFile("{" + entry("a") + "," + entry("e", shape: "[0]", offsets: "[8,8]") + ","
                                                   + entry("b", offsets: "[8,16]") + "}", data: Array(repeating: 0, count: 16)))
        XCTAssertEqual(ok.tensorNames, ["a", "e", "b"])
    }

    /// The data section must be covered exactly, as the Rust `safetensors` crate requires: no gap,
    /// no start past 0, no bytes after the last tensor.
    func testDataMustBeCoveredExactly() throws {
        try assertRejects(rawFile("{" + entry("a") + "," + entry("b", offsets: "[12,20]") + "}", data: Array(repeating: 0, count: 20)),
                          mentions: ["'a'", "'b'", "gap of 4 bytes"])
        try assertRejects(rawFile("{" + entry("a", offsets: "[4,12]") + "}", data: Array(repeating: 0, count: 12)),
                          mentions: ["'a'", "begin at 0"])
        try assertRejects(rawFile("{" + entry("a") + "}", data: Array(repeating: 0, count: 9)),
                          mentions: ["cover 8 bytes", "has 9"])
        try assertRejects(rawFile("{}", data: [0]), mentions: ["cover 0 bytes", "has 1"])
    }

    /// A header-length field 1 or 2 bytes short: the JSON still parses (its space padding is cut),
    /// but every tensor would be read shifted. Refused.
    func testHeaderLengthShortByAByteOrTwo() throws {
        var w = SafetensorsWriter(metadata: ["format": "pt"])
        try w.add("w", floats: [1, 2, 3], shape: [3])
        let good = try w.data()
        XCTAssertNoThrow(try SafetensorsFile(data: good))
        var header = [UInt8](good.prefix(8))
        let n = header.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        let paddingEnd = Int(8 + n)
        let padding = good[(paddingEnd - 2)..<paddingEnd]
        guard padding.allSatisfy({ $0 == 0x20 }) else { throw XCTSkip("the writer's header has no padding to cut") }
        for short in [1, 2] {
            header = le64(n - UInt64(short))
            var bad = Data(header)
            bad.append(good.dropFirst(8))
            try assertRejects(bad, mentions: ["12 bytes", "has \(12 + short)"])
        }
    }

    func testBadMetadata() throws {
        try assertRejects(rawFile("{\"__metadata__\":{\"k\":1}}"), mentions: ["__metadata__", "'k'", "1"])
        try assertRejects(rawFile("{\"__metadata__\":{\"k\":[\"v\"]}}"), mentions: ["__metadata__", "'k'"])
        try assertRejects(rawFile("{\"__metadata__\":\"x\"}"), mentions: ["__metadata__", "\"x\""])
        try assertRejects(rawFile("{\"__metadata__\":null}"), mentions: ["__metadata__", "null"])
    }

    func testTypeMismatchOnAccess() throws {
        var w = SafetensorsWriter()
        try w.add("ints", int64s: [1], shape: [1], as: .i32)
        try w.add("flts", floats: [1], shape: [1], as: .bf16)
        let file = try SafetensorsFile(data: try w.data(), name: "access.safetensors")
        XCTAssertThrowsError(try file.floats("ints")) { e in
            XCTAssertTrue("\(e)".contains("'ints'") && "\(e)".contains("I32") && "\(e)".contains("access.safetensors"), "\(e)")
        }
        XCTAssertThrowsError(try file.int64s("flts")) { e in
            XCTAssertTrue("\(e)".contains("'flts'") && "\(e)".contains("BF16"), "\(e)")
        }
        XCTAssertThrowsError(try file.floats("missing")) { e in XCTAssertTrue("\(e)".contains("'missing'"), "\(e)") }
        XCTAssertThrowsError(try file.withRawBytes("missing") { _ in 0 }) { e in XCTAssertTrue("\(e)".contains("'missing'")) }
    }

    func testEveryTruncationFails() throws {
        var w = SafetensorsWriter(metadata: ["a": "b"])
        try w.add("x", floats: [1, 2, 3], shape: [3], as: .f16)
        try w.add("y", int64s: [5, 6], shape: [2])
        try w.add("z", floats: [4], shape: [1])
        let full = try w.data()
        for length in 0..<full.count {
            XCTAssertThrowsError(try SafetensorsFile(data: full.prefix(length), name: "trunc-\(length)"), "length \(length)") { e in
                XCTAssertTrue("\(e)".contains("trunc-\(length)"))
            }
        }
        let file = try SafetensorsFile(data: full.prefix(full.count), name: "full")
        XCTAssertEqual(try file.floats("x"), [1, 2, 3])
        XCTAssertEqual(try file.int64s("y"), [5, 6])
        XCTAssertEqual(try file.floats("z"), [4])

        // Same through mmap for a sample of lengths.
        let url = try tempURL("trunc.safetensors")
        for length in [0, 1, 7, 8, 9, 15, 16, full.count / 2, full.count - 1] {
            try full.prefix(length).write(to: url)
            XCTAssertThrowsError(try SafetensorsFile(url: url), "length \(length)")
        }
    }

    func testNonSafetensorsInputs() throws {
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52,
                            0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1F, 0x15, 0xC4, 0x89]
        try assertRejects(Data(png), mentions: ["header length"])
        try assertRejects(Data("This is just some text, not a tensor file at all.\n".utf8), mentions: ["header length"])
        try assertRejects(Data("{\"w\": 1}".utf8), mentions: ["header length"])
        // Small declared length pointing at garbage.
        try assertRejects(Data(le64(4) + Array("\u{1}\u{2}xy".utf8)), mentions: ["JSON"])
        // Random bytes never crash.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let n = Int.random(in: 0..<64, using: &rng)
            var bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if n >= 8 { bytes.replaceSubrange(0..<8, with: le64(UInt64.random(in: 0...UInt64(n - 8), using: &rng))) }
            _ = try? SafetensorsFile(data: Data(bytes), name: "random")
        }
    }

    // MARK: - Disk

    func testMmapFromDiskAndAtomicWrite() throws {
        let url = try tempURL("model.safetensors")
        let values = (0..<1000).map { Float($0) * 0.5 - 100 }
        var w = SafetensorsWriter(metadata: ["format": "pt"])
        try w.add("layer.weight", floats: values, shape: [10, 100])
        try w.add("layer.bias", floats: Array(values.prefix(10)), shape: [10], as: .bf16)
        try w.add("steps", int64s: [123], shape: [])
        try w.write(to: url)
        // Overwrite in place (atomic rename over an existing file), leaving no temporaries.
        try w.write(to: url)
        let dir = try XCTUnwrap(tempDir)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["model.safetensors"])
        XCTAssertEqual(try Data(contentsOf: url), try w.data())

        let file = try SafetensorsFile(url: url)
        XCTAssertEqual(file.url, url)
        XCTAssertEqual(file.metadata, ["format": "pt"])
        XCTAssertEqual(file.tensorNames, ["layer.bias", "layer.weight", "steps"])
        XCTAssertEqual(try file.floats("layer.weight"), values)
        XCTAssertEqual(try file.floats("layer.bias"), Array(values.prefix(10)))  // these values are exact in bf16
        XCTAssertEqual(try file.int64s("steps"), [123])
        XCTAssertEqual(file.info("steps")?.shape, [])

        // Errors from disk name the path.
        let missing = try tempURL("missing.safetensors")
        XCTAssertThrowsError(try SafetensorsFile(url: missing)) { e in XCTAssertTrue("\(e)".contains("missing.safetensors")) }
        XCTAssertThrowsError(try SafetensorsFile(url: dir)) { e in XCTAssertTrue("\(e)".contains("regular file"), "\(e)") }
        let empty = try tempURL("empty.safetensors")
        try Data().write(to: empty)
        XCTAssertThrowsError(try SafetensorsFile(url: empty)) { e in XCTAssertTrue("\(e)".contains("empty.safetensors")) }
        XCTAssertThrowsError(try w.write(to: dir.appendingPathComponent("no/such/dir/x.safetensors")))
    }

    func testLargeConversionsAreCorrect() throws {
        let n = 1 << 20
        let values = (0..<n).map { Float($0 % 256) - 128 }  // exact in f16 and bf16
        var w = SafetensorsWriter()
        try w.add("f16", floats: values, shape: [n], as: .f16)
        try w.add("bf16", floats: values, shape: [1024, 1024], as: .bf16)
        let url = try tempURL("large.safetensors")
        try w.write(to: url)
        let file = try SafetensorsFile(url: url)
        XCTAssertEqual(try file.floats("f16"), values)
        XCTAssertEqual(try file.floats("bf16"), values)
    }
}
