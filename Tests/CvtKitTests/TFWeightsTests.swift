import CvtKit
import Foundation
import XCTest

/// Checkpoint folders holding only tf_model.h5 (TFCvtForImageClassification, transformers 4.x).
final class TFWeightsTests: XCTestCase {
    func testTFOnlyFolderGivesThePyTorchLogits() throws {
        let source = fixturesRoot.appendingPathComponent("tf/cvt_tiny")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-tf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for f in ["config.json", "tf_model.h5"] {
            try FileManager.default.copyItem(at: source.appendingPathComponent(f), to: dir.appendingPathComponent(f))
        }
        let x = try SafetensorsFile(url: source.appendingPathComponent("input.safetensors")).tensor("pixel_values")
        let logits = try CvtForImageClassification(pretrained: dir)(x).logits
        let expected = try SafetensorsFile(url: source.appendingPathComponent("expected.safetensors"))
        assertTensorClose("logits from tf_model.h5 vs PyTorch", logits, try expected.tensor("logits_pt"), tol: 1e-4)
        assertTensorClose("logits from tf_model.h5 vs TF", logits, try expected.tensor("logits_tf"), tol: 1e-4)
    }
}
