import CvtKit
import Foundation
import XCTest

/// A few optimizer steps of our `Trainer` against transformers' `Trainer` on the same model, data
/// and arguments (Fixtures/training/trainer, sequential batches): every logged value per step,
/// then the whole state dict (weights, BatchNorm running statistics, `num_batches_tracked`).
final class TrainerParityTests: XCTestCase {
    static let root = fixturesRoot.appendingPathComponent("training/trainer")

    struct LogLine: Decodable {
        var loss: Double, grad_norm: Double, learning_rate: Double, epoch: Double, step: Int
    }

    func runCase(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let dir = Self.root.appendingPathComponent(name)
        let model = try CvtForImageClassification(pretrained: dir)
        let data = try TrainingTensors(url: dir.appendingPathComponent("data.safetensors"))
        let argsJSON = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("args.json"))) as? [String: Any]
        let given = try JSONSerialization.data(withJSONObject: argsJSON?["given"] ?? [:])
        let args = try JSONDecoder().decode(TrainingArguments.self, from: given)
        let expectedLog = try JSONDecoder().decode([LogLine].self, from: Data(contentsOf: dir.appendingPathComponent("log.json")))

        let decay = try JSONDecoder().decode([String].self, from: Data(contentsOf: dir.appendingPathComponent("decay_parameters.json")))
        XCTAssertEqual(try AdamW.decayParameterNames(model).sorted(), decay, "\(name): weight-decay parameters", file: file, line: line)

        let trainer = try Trainer(model: model, args: args, trainData: data, shuffle: false)
        XCTAssertEqual(trainer.totalSteps, expectedLog.count, "\(name): optimizer steps", file: file, line: line)
        try trainer.train()
        XCTAssertEqual(trainer.logHistory.count, expectedLog.count, "\(name): log entries", file: file, line: line)
        for (ours, ref) in zip(trainer.logHistory, expectedLog) {
            let at = "\(name) step \(ref.step)"
            XCTAssertEqual(ours.step, ref.step, at, file: file, line: line)
            XCTAssertEqual(ours.loss, ref.loss, accuracy: 1e-4 * max(1, abs(ref.loss)), "\(at): loss", file: file, line: line)
            XCTAssertEqual(ours.gradNorm, ref.grad_norm, accuracy: 1e-3 * max(1, ref.grad_norm), "\(at): grad_norm", file: file, line: line)
            XCTAssertEqual(ours.learningRate, ref.learning_rate, accuracy: 1e-12, "\(at): learning_rate", file: file, line: line)
            XCTAssertEqual(ours.epoch, ref.epoch, accuracy: 1e-9, "\(at): epoch", file: file, line: line)
        }
        let expected = try SafetensorsFile(url: dir.appendingPathComponent("expected.safetensors"))
        let state = try model.stateDict().tensors
        // Parameters the loss does not depend on (softmax ignores a constant added to every key;
        // the last layer's patch-token queries are discarded): their gradient is rounding noise,
        // which Adam turns into steps of up to about lr each in either direction, in PyTorch as
        // here. For them both sides must stay within that bound of each other; their (zero)
        // gradients are checked in GradientParityTests.
        let noise = argsJSON?["float64_noise"] as? [String: Any]
        let structurallyZero = Set(noise?["structurally_zero_gradient_parameters"] as? [String] ?? [])
        let adamBound = Float(2 * 3.2 * expectedLog.reduce(0) { $0 + $1.learning_rate })
        var compared = 0
        for key in expected.tensorNames {
            if key.hasSuffix("num_batches_tracked") {
                let bnKey = String(key.dropLast(".num_batches_tracked".count))
                let bn = model.namedBatchNorms.first { $0.key == bnKey }?.module
                XCTAssertEqual(bn.map { Int64($0.numBatchesTracked) }, try expected.int64s(key).first, "\(name): \(key)", file: file, line: line)
            } else if let ours = state[key], structurallyZero.contains(key) {
                let err = ours.maxAbsDifference(try expected.tensor(key))
                XCTAssertLessThanOrEqual(err, adamBound, "\(name) \(key) (no effect on the loss)", file: file, line: line)
            } else if let ours = state[key] {
                assertGradientClose("\(name) \(key)", ours, try expected.tensor(key), file: file, line: line)
            } else {
                XCTFail("\(name): \(key) missing from our state dict", file: file, line: line)
            }
            compared += 1
        }
        XCTAssertEqual(compared, state.count + model.namedBatchNorms.count, "\(name): state dict size", file: file, line: line)
    }

    func testAdamWConstantWithWeightDecay() throws { try runCase("adamw_constant") }
    func testLinearWarmupClippingAccumulation() throws { try runCase("linear_warmup_clip_accum") }
    func testCosineWarmupRatioLabelSmoothing() throws { try runCase("cosine_ratio_smoothing") }
    func testConstantWithWarmupMultiLabel() throws { try runCase("constant_warmup_multilabel") }
}

/// What the trainer does when a run diverges.
final class TrainerDivergenceTests: XCTestCase {
    /// A weight that became NaN after step 1 (as a diverging update leaves it) makes step 2's loss
    /// NaN: the step is refused, naming it, and the model gets back the weights whose loss was
    /// finite (from before step 1's update), with step 2's BatchNorm updates undone.
    func testNonFiniteLossRestoresTheLastGoodWeights() throws {
        let dir = fixturesRoot.appendingPathComponent("training/trainer/adamw_constant")
        let model = try CvtForImageClassification(pretrained: dir)
        let data = try TrainingTensors(url: dir.appendingPathComponent("data.safetensors"))
        let initial = try model.stateDict().tensors
        var args = TrainingArguments()
        args.maxSteps = 3; args.perDeviceTrainBatchSize = 4; args.learningRate = 1e-3
        let trainer = try Trainer(model: model, args: args, trainData: data, shuffle: false)
        let batch = try data.batch([0, 1, 2, 3])
        try trainer.step([batch])
        let counters = model.namedBatchNorms.map { $0.module.numBatchesTracked }
        model.classifier!.weight[flat: 0] = .nan
        XCTAssertThrowsError(try trainer.step([batch])) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("loss is not finite") && message.contains("optimizer step 2") && message.contains("after step 0"), message)
        }
        XCTAssertEqual(trainer.globalStep, 0)
        XCTAssertTrue(trainer.logHistory.isEmpty)
        let state = try model.stateDict().tensors
        for key in ["classifier.weight", "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight"] {
            XCTAssertEqual(state[key]?.scalars, initial[key]?.scalars, key)
        }
        XCTAssertEqual(model.namedBatchNorms.map { $0.module.numBatchesTracked }, counters)
    }
}
