import CvtKit
import Foundation
import XCTest

/// Scripts/check_save_pretrained.py loaded what `cvt convert` wrote into transformers; this checks
/// its recorded verdict and that today's writer still produces exactly the files it checked.
final class SavePretrainedTests: XCTestCase {
    struct Check: Decodable {
        struct Case: Decodable {
            var source: String, dtype: String
            var missing_keys: [String], unexpected_keys: [String], mismatched_keys: [[String]], error_msgs: [String]
            var max_abs_logits_diff_transformers_vs_ours: Double
            var max_abs_logits_diff_vs_reference: Double?
            var stored_keys: [String]
        }
        var cases: [Case]
    }

    func testTransformersLoadsWhatWeSave() throws {
        let check = try JSONDecoder().decode(Check.self, from: Data(contentsOf: fixturesRoot.appendingPathComponent("save_pretrained/check.json")))
        XCTAssertEqual(check.cases.count, 6)
        let repo = fixturesRoot.deletingLastPathComponent().deletingLastPathComponent()
        for c in check.cases {
            let what = "\(c.source) as \(c.dtype)"
            XCTAssertEqual(c.missing_keys, [], what); XCTAssertEqual(c.unexpected_keys, [], what)
            XCTAssertEqual(c.mismatched_keys, [], what); XCTAssertEqual(c.error_msgs, [], what)
            XCTAssertLessThanOrEqual(c.max_abs_logits_diff_transformers_vs_ours, 1e-4, what)
            if let r = c.max_abs_logits_diff_vs_reference { XCTAssertLessThanOrEqual(r, 1e-4, what) }
            // Today's save writes the same keys in the same dtype.
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-save-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: out) }
            let dtype: SafetensorsDType = ["float32": .f32, "float16": .f16, "bfloat16": .bf16][c.dtype] ?? .f32
            try CvtForImageClassification(pretrained: repo.appendingPathComponent(c.source)).savePretrained(to: out, dtype: dtype)
            let file = try SafetensorsFile(url: out.appendingPathComponent("model.safetensors"))
            XCTAssertEqual(file.tensorNames.sorted(), c.stored_keys, what)
            XCTAssertEqual(file.info("classifier.weight")?.dtype, dtype, what)
            let config = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("config.json"))) as? [String: Any]
            XCTAssertEqual(config?["model_type"] as? String, "cvt")
            let text = try String(contentsOf: out.appendingPathComponent("config.json"), encoding: .utf8)
            XCTAssertTrue(text.contains("4.0") || text.contains("2.0"), "mlp_ratio must be written as floats: \(text)")
        }
    }
}
