import CvtKit
import Foundation
import XCTest

final class LoadingTests: XCTestCase {
    var tmp: URL!
    let tiny = fixturesRoot.appendingPathComponent("parity/nonsquare_batch")

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-loading-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: tmp) }

    /// Copies the fixture checkpoint with its weights rewritten by `edit`.
    func checkpoint(editing edit: (inout [String: (shape: [Int], values: [Float])]) -> Void) throws -> URL {
        let dir = tmp.appendingPathComponent("ckpt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: tiny.appendingPathComponent("config.json"), to: dir.appendingPathComponent("config.json"))
        let src = try SafetensorsFile(url: tiny.appendingPathComponent("model.safetensors"))
        var tensors: [String: (shape: [Int], values: [Float])] = [:]
        for name in src.tensorNames where src.info(name)?.dtype == .f32 {
            tensors[name] = (src.info(name)!.shape, try src.floats(name))
        }
        edit(&tensors)
        var w = SafetensorsWriter()
        for (k, v) in tensors { try w.add(k, floats: v.values, shape: v.shape) }
        try w.write(to: dir.appendingPathComponent("model.safetensors"))
        return dir
    }

    func loadError(_ dir: URL, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            _ = try CvtForImageClassification(pretrained: dir)
            XCTFail("loading \(dir.path) should fail", file: file, line: line)
            return ""
        } catch { return "\(error)" }
    }

    func testLoadsFixtureIgnoringNumBatchesTracked() throws {
        let dir = try checkpoint { _ in }  // num_batches_tracked (I64) dropped: still loads
        XCTAssertNoThrow(try CvtForImageClassification(pretrained: dir))
        XCTAssertNoThrow(try CvtForImageClassification(pretrained: tiny))  // with them
    }

    func testMissingUnexpectedAndMisshapedKeysAreAllNamed() throws {
        let missing = "cvt.encoder.stages.1.layers.0.attention.attention.projection_key.bias"
        let reshaped = "classifier.weight"
        let dir = try checkpoint { t in
            t[missing] = nil
            t["cvt.encoder.stages.9.extra.weight"] = ([2], [1, 2])
            t[reshaped] = ([5, 48], [Float](repeating: 0, count: 240))
        }
        let message = loadError(dir)
        XCTAssertTrue(message.contains("missing keys: \(missing)"), message)
        XCTAssertTrue(message.contains("unexpected keys: cvt.encoder.stages.9.extra.weight"), message)
        XCTAssertTrue(message.contains("\(reshaped) (expected [10, 48], found [5, 48])"), message)
        XCTAssertTrue(message.contains("model.safetensors"), message)
    }

    func testCorruptAndForeignWeightFilesGiveClearErrors() throws {
        let good = try Data(contentsOf: tiny.appendingPathComponent("model.safetensors"))
        let cases: [(String, Data)] = [
            ("truncated", good.prefix(good.count / 2)),
            ("png", Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + [UInt8](repeating: 0, count: 64))),
            ("empty", Data()),
            ("lying header", { var d = good; d[0] = 0xFF; d[1] = 0xFF; d[2] = 0xFF; return d }()),
        ]
        for (name, bytes) in cases {
            let dir = try checkpoint { _ in }
            try bytes.write(to: dir.appendingPathComponent("model.safetensors"))
            let message = loadError(dir)
            XCTAssertTrue(message.contains("model.safetensors"), "\(name): \(message)")
        }
    }

    func testFolderProblemsNameTheFile() throws {
        XCTAssertTrue(loadError(tmp.appendingPathComponent("nope")).contains("nope"))
        let dir = try checkpoint { _ in }
        try Data("{\"depth\": [1, 2]}".utf8).write(to: dir.appendingPathComponent("config.json"))
        let m1 = loadError(dir)
        XCTAssertTrue(m1.contains("config.json") && m1.contains("patch_sizes"), m1)
        try Data("{oops".utf8).write(to: dir.appendingPathComponent("config.json"))
        XCTAssertTrue(loadError(dir).contains("config.json"))
        try FileManager.default.removeItem(at: dir.appendingPathComponent("config.json"))
        XCTAssertTrue(loadError(dir).contains("config.json"))
        let noWeights = try checkpoint { _ in }
        try FileManager.default.removeItem(at: noWeights.appendingPathComponent("model.safetensors"))
        XCTAssertTrue(loadError(noWeights).contains("model.safetensors"))
    }

    /// A model we save loads back with identical outputs; bf16 storage rounds weights only.
    func testSavePretrainedRoundTrip() throws {
        let model = try CvtForImageClassification(pretrained: tiny)
        let x = try SafetensorsFile(url: tiny.appendingPathComponent("input.safetensors")).tensor("pixel_values")
        let reference = try model(x).logits
        let out = tmp.appendingPathComponent("saved")
        try model.savePretrained(to: out)
        let reloaded = try CvtForImageClassification(pretrained: out)
        XCTAssertEqual(reloaded.config, model.config)
        XCTAssertEqual(try reloaded(x).logits.scalars, reference.scalars)
        try model.savePretrained(to: tmp.appendingPathComponent("bf16"), dtype: .bf16)
        let file = try SafetensorsFile(url: tmp.appendingPathComponent("bf16/model.safetensors"))
        XCTAssertEqual(file.info("classifier.weight")?.dtype, .bf16)
        let half = try CvtForImageClassification(pretrained: tmp.appendingPathComponent("bf16"))
        let err = try half(x).logits.maxAbsDifference(reference)
        XCTAssertGreaterThan(err, 0, "bf16 storage must round")
        XCTAssertLessThan(err, 0.1)
    }
}
