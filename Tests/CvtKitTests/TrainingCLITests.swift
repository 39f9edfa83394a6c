import CvtKit
import Foundation
import XCTest

/// `cvt gradients`, `cvt train` and `cvt bench --mode train` as a user runs them, bad input included.
final class TrainingCLITests: XCTestCase {
    let tmp = FileManager.default.temporaryDirectory

    func scratch(_ name: String) -> URL { tmp.appendingPathComponent("cvt-\(name)-\(UUID().uuidString)") }

    /// Writes a training file with `pixel_values` and `labels` (int64 when `classes`, else float32).
    func writeData(_ url: URL, pixels: [Float], shape: [Int], labels: [Int64]? = nil, floatLabels: [Float]? = nil, labelShape: [Int]) throws {
        var w = SafetensorsWriter(metadata: [:])
        try w.add("pixel_values", floats: pixels, shape: shape)
        if let labels { try w.add("labels", int64s: labels, shape: labelShape) }
        if let floatLabels { try w.add("labels", floats: floatLabels, shape: labelShape) }
        try w.write(to: url)
    }

    func testGradientsCommandMatchesPyTorch() throws {
        let dir = fixturesRoot.appendingPathComponent("training/gradients/tiny_ce")
        let out = scratch("grads").appendingPathExtension("safetensors")
        defer { try? FileManager.default.removeItem(at: out) }
        let r = try runCvt(["gradients", "--model", dir.path, "--input", dir.appendingPathComponent("input.safetensors").path,
                             "--output", out.path, "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let got = try SafetensorsFile(url: out), expected = try SafetensorsFile(url: dir.appendingPathComponent("expected.safetensors"))
        let names = expected.tensorNames.filter { $0.hasPrefix("grad.") }
        XCTAssertEqual(Set(got.tensorNames), Set(names + ["loss"]))
        XCTAssertEqual(try got.info("loss")?.shape, [])
        XCTAssertEqual(try got.floats("loss")[0], try expected.floats("loss")[0], accuracy: 1e-5)
        for name in names { assertGradientClose(name, try got.tensor(name), try expected.tensor(name)) }
    }

    /// A few steps from the Trainer fixture: the saved checkpoint loads strictly and equals PyTorch's.
    func testTrainWritesATransformersCheckpoint() throws {
        let dir = fixturesRoot.appendingPathComponent("training/trainer/adamw_constant")
        let out = scratch("train")
        defer { try? FileManager.default.removeItem(at: out) }
        let r = try runCvt(["train", "--model", dir.path, "--train-data", dir.appendingPathComponent("data.safetensors").path,
                             "--output-dir", out.path, "--max-steps", "3", "--per-device-train-batch-size", "4",
                             "--learning-rate", "1e-3", "--weight-decay", "0.05", "--lr-scheduler-type", "constant",
                             "--max-grad-norm", "1e9", "--no-shuffle", "--threads", "1", "--logging-steps", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.components(separatedBy: "'loss'").count - 1, 3, r.stdout)
        let trained = try CvtForImageClassification(pretrained: out)
        let state = try trained.stateDict().tensors
        let expected = try SafetensorsFile(url: dir.appendingPathComponent("expected.safetensors"))
        // The first step's weights are PyTorch's: compare one decayed and one non-decayed tensor, and a counter.
        for key in ["classifier.weight", "cvt.encoder.stages.2.layers.0.layernorm_before.weight", "cvt.encoder.stages.2.cls_token"] {
            assertGradientClose(key, try XCTUnwrap(state[key]), try expected.tensor(key))
        }
        let file = try SafetensorsFile(url: out.appendingPathComponent("model.safetensors"))
        let counter = "cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_key.convolution_projection.normalization.num_batches_tracked"
        XCTAssertEqual(try file.int64s(counter), [3])
        let log = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("trainer_state.json"))) as? [String: Any]
        // Three training-loss logs (logging_steps 1), then the end-of-training summary.
        let history = try XCTUnwrap(log?["log_history"] as? [[String: Any]])
        XCTAssertEqual(history.map { $0["step"] as? Int }, [1, 2, 3, 3])
        XCTAssertEqual(history.filter { $0["loss"] != nil }.count, 3)
        XCTAssertNotNil(history.last?["train_runtime"])
    }

    /// The output classifies images as the source did: its preprocessor config is copied.
    func testTrainKeepsTheSourcePreprocessorConfig() throws {
        let model = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models/cvt-fashion-mnist")
        let data = scratch("fm").appendingPathExtension("safetensors"), out = scratch("fm-out")
        defer { try? FileManager.default.removeItem(at: data); try? FileManager.default.removeItem(at: out) }
        try writeData(data, pixels: (0..<(2 * 3 * 28 * 28)).map { Float($0 % 17) / 17 }, shape: [2, 3, 28, 28], labels: [4, 9], labelShape: [2])
        let r = try runCvt(["train", "--model", model.path, "--train-data", data.path, "--output-dir", out.path,
                            "--max-steps", "1", "--per-device-train-batch-size", "2", "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try Data(contentsOf: out.appendingPathComponent("preprocessor_config.json")),
                       try Data(contentsOf: model.appendingPathComponent("preprocessor_config.json")))
    }

    func testTrainRejectsBadInputWithClearErrors() throws {
        let dir = fixturesRoot.appendingPathComponent("training/trainer/adamw_constant")  // 10 labels, 3 channels
        let pixels = [Float](repeating: 0.1, count: 2 * 3 * 32 * 32)
        func train(_ data: URL, _ extra: [String] = [], out: URL? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
            try runCvt(["train", "--model", dir.path, "--train-data", data.path, "--output-dir", (out ?? scratch("out")).path,
                         "--max-steps", "1", "--per-device-train-batch-size", "2", "--threads", "1"] + extra)
        }
        let data = scratch("data").appendingPathExtension("safetensors")
        defer { try? FileManager.default.removeItem(at: data) }

        try writeData(data, pixels: pixels, shape: [2, 3, 32, 32], labels: [3, 10], labelShape: [2])
        var r = try train(data)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("label 10 of image 1") && r.stderr.contains("0..<10"), r.stderr)

        try writeData(data, pixels: pixels, shape: [2, 3, 32, 32], floatLabels: [1, 0, 1], labelShape: [3])
        r = try train(data)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("labels"), r.stderr)

        try writeData(data, pixels: pixels, shape: [2, 3, 32, 32], floatLabels: [1, 0, 1, 0], labelShape: [2, 2])
        r = try train(data)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("multi-label") && r.stderr.contains("[2, 10]"), r.stderr)

        var bad = pixels
        bad[5000] = .nan
        try writeData(data, pixels: bad, shape: [2, 3, 32, 32], labels: [1, 2], labelShape: [2])
        r = try train(data)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("pixel_values") && r.stderr.contains("nan") && r.stderr.contains("image 1"), r.stderr)

        // An output folder that cannot be written fails before any step.
        try writeData(data, pixels: pixels, shape: [2, 3, 32, 32], labels: [1, 2], labelShape: [2])
        let blocker = scratch("file")
        try Data("x".utf8).write(to: blocker)
        defer { try? FileManager.default.removeItem(at: blocker) }
        r = try train(data, out: blocker.appendingPathComponent("sub"))
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("cannot be written"), r.stderr)
        XCTAssertFalse(r.stdout.contains("'loss'"), r.stdout)
    }

    /// A learning rate that blows the weights up: the run stops at the first non-finite loss,
    /// names the step, exits non-zero, and saves the weights from before that step (finite).
    func testDivergingRunStopsAndKeepsTheLastGoodWeights() throws {
        let dir = fixturesRoot.appendingPathComponent("training/trainer/adamw_constant")
        let out = scratch("diverge")
        defer { try? FileManager.default.removeItem(at: out) }
        let r = try runCvt(["train", "--model", dir.path, "--train-data", dir.appendingPathComponent("data.safetensors").path,
                             "--output-dir", out.path, "--max-steps", "30", "--per-device-train-batch-size", "4",
                             "--learning-rate", "1e38", "--lr-scheduler-type", "constant", "--max-grad-norm", "0", "--threads", "1"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("optimizer step") && r.stderr.contains("saved that model"), r.stderr)
        let saved = try CvtForImageClassification(pretrained: out)
        let state = try saved.stateDict().tensors
        for (key, t) in state {
            XCTAssertTrue(t.scalars.allSatisfy { $0.isFinite }, "\(key) holds non-finite values")
        }
    }

    func testBenchTrainJSON() throws {
        let r = try runCvt(["bench", "--mode", "train", "--model", fixturesRoot.appendingPathComponent("training/trainer/adamw_constant").path,
                             "--image-size", "32", "--batch-size", "2", "--iterations", "2", "--threads", "1", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        for key in ["median_ms", "images_per_second", "peak_rss_mb"] {
            XCTAssertGreaterThan((obj?[key] as? Double) ?? 0, 0, key)
        }
        XCTAssertEqual(obj?["mode"] as? String, "train")
    }
}
