import Foundation
import TorchCheckpoint
import Synchronization
import XCTest

private struct ExpectedFile: Decodable {
    struct Tensor: Decodable {
        let dtype: String
        let shape: [Int]
        /// Float dtypes: the bit patterns of the float32 values.
        let floatBits: [UInt32]?
        /// Integer and bool dtypes.
        let ints: [Int64]?

        enum CodingKeys: String, CodingKey {
            case dtype, shape
            case floatBits = "float32_bits"
            case ints = "values"
        }
    }
    let order: [String]
    let tensors: [String: Tensor]
}

/// Compares every tensor of two checkpoints bit for bit.
private func assertSameTensors(_ a: TorchCheckpoint, _ b: TorchCheckpoint, file: StaticString = #filePath, line: UInt = #line) throws {
    XCTAssertEqual(a.tensorNames, b.tensorNames, file: file, line: line)
    for name in a.tensorNames {
        XCTAssertEqual(a.shape(of: name), b.shape(of: name), name, file: file, line: line)
        XCTAssertEqual(a.dtype(of: name), b.dtype(of: name), name, file: file, line: line)
        if ["float32", "float16", "bfloat16", "float64"].contains(a.dtype(of: name)!) {
            XCTAssertEqual(try a.floats(name).map(\.bitPattern), try b.floats(name).map(\.bitPattern), name, file: file, line: line)
        } else {
            XCTAssertEqual(try a.int64s(name), try b.int64s(name), name, file: file, line: line)
        }
    }
}

final class TorchCheckpointFixtureTests: XCTestCase {
    private func expected() throws -> ExpectedFile {
        try JSONDecoder().decode(ExpectedFile.self, from: Data(contentsOf: fixture("basic_expected.json")))
    }

    /// torch.save of float32/float16/bfloat16/float64/int tensors, views and a Parameter.
    func testBasicMatchesTorch() throws {
        let ckpt = try TorchCheckpoint(url: fixture("basic.bin"))
        let expected = try expected()
        XCTAssertEqual(ckpt.tensorNames, expected.order)
        XCTAssertEqual(ckpt.archiveName, "basic")
        XCTAssertEqual(ckpt.byteOrder, "little")
        XCTAssertEqual(ckpt.formatVersion, 3)
        for name in expected.order {
            let e = expected.tensors[name]!
            XCTAssertEqual(ckpt.dtype(of: name), e.dtype, name)
            XCTAssertEqual(ckpt.shape(of: name), e.shape, name)
            if let bits = e.floatBits {
                XCTAssertEqual(try ckpt.floats(name).map(\.bitPattern), bits, name)
                assertThrows(["'\(name)'", e.dtype, "not an integer dtype"]) { try ckpt.int64s(name) }
            } else {
                XCTAssertEqual(try ckpt.int64s(name), e.ints!, name)
                assertThrows(["'\(name)'", e.dtype, "not a floating-point dtype"]) { try ckpt.floats(name) }
            }
        }
        // Spot checks of the layouts the fixture is about.
        XCTAssertEqual(ckpt.shape(of: "f32_transposed"), [5, 3])
        XCTAssertEqual(ckpt.shape(of: "f32_shared_slice"), [2, 3])
        XCTAssertEqual(ckpt.shape(of: "f32_scalar"), [])
        XCTAssertEqual(try ckpt.floats("f32_scalar"), [2.5])
        XCTAssertEqual(ckpt.shape(of: "f32_empty"), [0, 3])
        XCTAssertEqual(try ckpt.floats("f32_empty"), [])
        XCTAssertEqual(ckpt.dtype(of: "bn.num_batches_tracked"), "int64")
        XCTAssertEqual(try ckpt.int64s("bn.num_batches_tracked"), [42])
        XCTAssertEqual(try ckpt.int64s("i64_big"), [(1 << 62) + 7, Int64.min])
        XCTAssertEqual(try ckpt.int64s("bool"), [1, 0, 1])
        let base = try ckpt.floats("f32_shared_base")  // [4, 6]
        XCTAssertEqual(try ckpt.floats("f32_shared_slice"), [base[8], base[9], base[10], base[14], base[15], base[16]])
        XCTAssertEqual(try ckpt.floats("f32_shared_row"), Array(base[18..<24]))
        let special = try ckpt.floats("f16_special")
        XCTAssertEqual(special[1].sign, .minus)
        XCTAssertEqual(special[2], .infinity)
        XCTAssertEqual(special[3], -.infinity)
        XCTAssertEqual(special[6], 65504)
        XCTAssertEqual(special[5], Float(sign: .plus, exponent: -24, significand: 1))  // smallest subnormal
        XCTAssertNil(ckpt.shape(of: "missing"))
        XCTAssertNil(ckpt.dtype(of: "missing"))
        assertThrows(["no tensor named 'missing'"]) { try ckpt.floats("missing") }
        assertThrows(["no tensor named 'missing'"]) { try ckpt.int64s("missing") }
        XCTAssertNoThrow(try ckpt.verifyChecksums())
    }

    func testDeflateAndZip64VariantsReadTheSame() throws {
        let basic = try TorchCheckpoint(url: fixture("basic.bin"))
        try assertSameTensors(try TorchCheckpoint(url: fixture("basic_deflate.bin")), basic)
        try assertSameTensors(try TorchCheckpoint(url: fixture("basic_zip64.bin")), basic)
        XCTAssertNoThrow(try TorchCheckpoint(url: fixture("basic_deflate.bin")).verifyChecksums())
    }

    func testInMemoryMatchesMapped() throws {
        let url = fixture("basic.bin")
        try assertSameTensors(try TorchCheckpoint(data: Data(contentsOf: url), name: "basic"), try TorchCheckpoint(url: url))
    }

    func testBigEndianByteOrder() throws {
        let big = try TorchCheckpoint(url: fixture("big_endian.bin"))
        XCTAssertEqual(big.byteOrder, "big")
        try assertSameTensors(big, try TorchCheckpoint(url: fixture("small.bin")))
        XCTAssertEqual(try big.floats("w"), [1, -2, 3.5, 0.25, 0, -8])
        XCTAssertEqual(try big.floats("b"), [0.5, -1.5, 2])
        XCTAssertEqual(try big.int64s("steps"), [7])
    }

    func testWrappedStateDict() throws {
        let ckpt = try TorchCheckpoint(url: fixture("wrapped.bin"))
        XCTAssertEqual(ckpt.tensorNames, ["w", "b", "steps"])
        try assertSameTensors(ckpt, try TorchCheckpoint(url: fixture("small.bin")))
    }

    /// A real CvtForImageClassification state dict: every key equals the safetensors copy.
    func testTinyCvtMatchesSafetensors() throws {
        let ckpt = try TorchCheckpoint(url: fixture("cvt_tiny/pytorch_model.bin"))
        let reference = try readSafetensors(fixture("cvt_tiny/model.safetensors"))
        XCTAssertEqual(ckpt.archiveName, "pytorch_model")
        XCTAssertEqual(Set(ckpt.tensorNames), Set(reference.keys))
        XCTAssertEqual(ckpt.tensorNames.count, reference.count)
        XCTAssertGreaterThan(ckpt.tensorNames.count, 200)
        XCTAssertTrue(ckpt.tensorNames.contains("classifier.weight"))
        XCTAssertEqual(ckpt.shape(of: "classifier.weight"), [3, 24])
        var batchCounters = 0
        for name in ckpt.tensorNames {
            let ref = reference[name]!
            XCTAssertEqual(ckpt.shape(of: name), ref.shape, name)
            switch ref.dtype {
            case "F16":
                XCTAssertEqual(ckpt.dtype(of: name), "float16", name)
                let expected: [Float] = stride(from: 0, to: ref.bytes.count, by: 2).map { (i: Int) -> Float in
                    let bits = UInt16(ref.bytes[i]) | (UInt16(ref.bytes[i + 1]) << 8)
                    return halfToFloatReference(bits)
                }
                XCTAssertEqual(try ckpt.floats(name).map(\.bitPattern), expected.map(\.bitPattern), name)
            case "I64":
                XCTAssertEqual(ckpt.dtype(of: name), "int64", name)
                var expected: [Int64] = []
                for i in stride(from: 0, to: ref.bytes.count, by: 8) {
                    var v: UInt64 = 0
                    for j in 0..<8 { v |= UInt64(ref.bytes[i + j]) << UInt64(8 * j) }
                    expected.append(Int64(bitPattern: v))
                }
                XCTAssertEqual(try ckpt.int64s(name), expected, name)
                XCTAssertTrue(name.hasSuffix("num_batches_tracked"), name)
                batchCounters += 1
            default:
                XCTFail("unexpected dtype \(ref.dtype) for \(name)")
            }
        }
        XCTAssertGreaterThan(batchCounters, 0)
    }

    // MARK: Malicious files: refused, naming the global, never executed.

    func testMaliciousOsSystemIsRefused() {
        assertThrows(["os.system", "GLOBAL", "malicious"]) { try TorchCheckpoint(url: fixture("malicious_os_system.bin")) }
    }

    func testMaliciousBuiltinsEvalIsRefused() {
        assertThrows(["builtins.eval", "STACK_GLOBAL"]) { try TorchCheckpoint(url: fixture("malicious_builtins_eval.bin")) }
    }

    func testMaliciousInstIsRefused() {
        assertThrows(["INST", "os.system"]) { try TorchCheckpoint(url: fixture("malicious_inst.bin")) }
    }

    // MARK: Broken files

    func testOutOfBoundsTensorNamesKey() {
        assertThrows(["tensor 'w'", "past the end of storage '0'"]) { try TorchCheckpoint(url: fixture("out_of_bounds.bin")) }
    }

    func testMissingStorageNamesKey() {
        assertThrows(["tensor 'w'", "archive/data/5", "missing"]) { try TorchCheckpoint(url: fixture("missing_storage.bin")) }
    }

    func testTruncatedZip() {
        assertThrows(["truncated", "truncated.bin"]) { try TorchCheckpoint(url: fixture("truncated.bin")) }
    }

    func testCorruptedCRCIsDetectedOnRead() throws {
        let ckpt = try TorchCheckpoint(url: fixture("bad_crc.bin"))  // data.pkl itself is intact
        assertThrows(["tensor 'w'", "CRC-32 mismatch", "small/data/0"]) { try ckpt.floats("w") }
        assertThrows(["CRC-32 mismatch"]) { try ckpt.floats("w") }  // and again: never cached as good
        XCTAssertEqual(try ckpt.floats("b"), [0.5, -1.5, 2])
        assertThrows(["CRC-32 mismatch", "small/data/0"]) { try ckpt.verifyChecksums() }
    }

    func testLegacyFormatIsRejected() {
        assertThrows(["legacy", "non-zip", "not supported"]) { try TorchCheckpoint(url: fixture("legacy.bin")) }
    }

    func testNotAZip() {
        assertThrows(["not a zip archive"]) { try TorchCheckpoint(url: fixture("not_a_zip.bin")) }
        assertThrows(["safetensors"]) { try TorchCheckpoint(url: fixture("cvt_tiny/model.safetensors")) }
        assertThrows(["no <archive>/data.pkl"]) { try TorchCheckpoint(data: Data(makeZip([ZipItem(name: "a.txt", data: [1])]))) }
    }

    func testFileSystemErrors() throws {
        assertThrows(["cannot open file"]) { try TorchCheckpoint(url: fixture("does-not-exist.bin")) }
        assertThrows(["not a regular file"]) { try TorchCheckpoint(url: torchFixtures) }
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("torchcheckpoint-empty-\(getpid()).bin")
        try Data().write(to: empty)
        defer { try? FileManager.default.removeItem(at: empty) }
        assertThrows(["empty"]) { try TorchCheckpoint(url: empty) }
        assertThrows(["empty"]) { try TorchCheckpoint(data: Data()) }
    }

    func testConcurrentReads() throws {
        let ckpt = try TorchCheckpoint(url: fixture("cvt_tiny/pytorch_model.bin"))
        let names = ckpt.tensorNames
        let serial = try names.map { ckpt.dtype(of: $0) == "int64" ? try ckpt.int64s($0).map(Float.init) : try ckpt.floats($0) }
        let fresh = try TorchCheckpoint(url: fixture("cvt_tiny/pytorch_model.bin"))
        let results = Mutex([[Float]?](repeating: nil, count: names.count))
        DispatchQueue.concurrentPerform(iterations: names.count) { i in
            let v = fresh.dtype(of: names[i]) == "int64" ? (try? fresh.int64s(names[i]))?.map(Float.init) : try? fresh.floats(names[i])
            results.withLock { $0[i] = v }
        }
        let read = results.withLock { $0 }
        for i in names.indices { XCTAssertEqual(read[i], serial[i], names[i]) }
    }
}
