import CvtKit
import Foundation
import XCTest

/// bf16 matmul mode: its own tolerance against the float32 reference outputs.
final class BFloat16Tests: XCTestCase {
    /// Max |logit error| allowed in bf16 mode, for logits of magnitude ~1–4 (measured: see README).
    static let logitTolerance: Float = 0.05

    func testFixturesWithinBF16Tolerance() throws {
        let engine = try Engine()
        engine.precision = .bfloat16
        var worst: Float = 0
        for name in ["tiny", "nonsquare_batch", "kv_stride1_qpad", "proj_avg_linear", "cls_every_stage"] {
            let dir = fixturesRoot.appendingPathComponent("parity/\(name)")
            let model = try CvtForImageClassification(pretrained: dir, engine: engine)
            let input = try SafetensorsFile(url: dir.appendingPathComponent("input.safetensors"))
            let expected = try SafetensorsFile(url: dir.appendingPathComponent("expected.safetensors")).tensor("logits")
            let logits = try model(input.tensor("pixel_values")).logits
            let err = logits.maxAbsDifference(expected)
            print("bf16 \(name): max |logits error| = \(err)")
            worst = max(worst, err)
            assertTensorClose("\(name)/logits (bf16)", logits, expected, tol: Self.logitTolerance)
            XCTAssertGreaterThan(err, 1e-6, "\(name): bf16 mode should differ from float32 (is it really on?)")
        }
        print("bf16 worst max |logits error| over fixtures: \(worst)")
    }

    func testPrecisionIsPerEngine() throws {
        let a = try Engine(), b = try Engine()
        a.precision = .bfloat16
        XCTAssertEqual(b.precision, .float32)
    }
}
