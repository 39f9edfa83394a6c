import CvtKit
import Foundation
import XCTest

/// Half-precision weight storage (`--dtype float16` / `bfloat16`): half the weight memory, the
/// reference numbers where the checkpoint itself is half precision, and nothing lost on save/load.
final class WeightStorageTests: XCTestCase {
    func fixture(_ name: String) -> URL { fixturesRoot.appendingPathComponent("parity/\(name)") }

    /// Weight elements of every Linear layer, the head included.
    func linearWeightElements(_ m: CvtForImageClassification) -> Int {
        (m.cvt.linearLayers + (m.classifier.map { [$0] } ?? [])).reduce(0) { $0 + $1.inFeatures * $1.outFeatures }
    }

    func testFloat16StorageHalvesLinearWeightsAndMatchesReferenceForFloat16Checkpoint() throws {
        // fp16_weights was saved by transformers in float16: float16 storage is lossless there, so
        // the logits must still match the reference to float32 precision.
        let dir = fixture("fp16_weights")
        let input = try SafetensorsFile(url: dir.appendingPathComponent("input.safetensors")).tensor("pixel_values")
        let expected = try SafetensorsFile(url: dir.appendingPathComponent("expected.safetensors")).tensor("logits")
        let full = try CvtForImageClassification(pretrained: dir, engine: Engine())
        let half = try CvtForImageClassification(pretrained: dir, engine: Engine(), dtype: .float16)
        for l in half.cvt.linearLayers { XCTAssertEqual(l.weightStorage, .float16) }
        assertTensorClose("fp16_weights/logits (float16 storage)", try half(input).logits, expected, tol: 1e-4)
        XCTAssertEqual(full.parameterBytes - half.parameterBytes, linearWeightElements(full) * 2, "each Linear weight element saves 2 bytes")
    }

    func testFloat16StorageOfFloat32CheckpointIsCloseAndSavesFloat32() throws {
        let dir = fixture("tiny")
        let input = try SafetensorsFile(url: dir.appendingPathComponent("input.safetensors")).tensor("pixel_values")
        let expected = try SafetensorsFile(url: dir.appendingPathComponent("expected.safetensors")).tensor("logits")
        let model = try CvtForImageClassification(pretrained: dir, engine: Engine())
        try model.storeWeights(as: .float16)
        let logits = try model(input).logits
        let err = logits.maxAbsDifference(expected)
        print("float16 storage, tiny: max |logits error| = \(err)")
        XCTAssertLessThan(err, 5e-3)
        XCTAssertGreaterThan(err, 0, "float16 rounding of float32 weights should show")
        // Saving reads a widened copy and leaves the storage compact; the saved weights are the
        // float16-rounded values, and loading them back gives the same logits exactly.
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-f16-save-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: out) }
        try model.savePretrained(to: out)
        XCTAssertEqual(model.cvt.linearLayers.first?.weightStorage, .float16)
        let reloaded = try CvtForImageClassification(pretrained: out, engine: Engine())
        let (saved, _) = try model.stateDict(), (back, _) = try reloaded.stateDict()
        for (key, t) in saved { XCTAssertEqual(back[key]?.scalars, t.scalars, key) }
        // Same weights, same logits up to float32 summation order: float16 storage runs oneDNN on
        // weights widened per call, float32 storage packed weights (on AVX2 CPUs our own GEMM).
        XCTAssertLessThanOrEqual(try reloaded(input).logits.maxAbsDifference(logits), 1e-5)
        // Back to float32 storage: same (rounded) weights, same logits.
        try model.storeWeights(as: .float32)
        XCTAssertEqual(model.cvt.linearLayers.first?.weightStorage, .float32)
        for (key, t) in try model.stateDict().tensors { XCTAssertEqual(saved[key]?.scalars, t.scalars, key) }
        XCTAssertLessThanOrEqual(try model(input).logits.maxAbsDifference(logits), 1e-5)
    }

    func testBFloat16ModeStoresBFloat16WeightsWithUnchangedNumbers() throws {
        // bf16 precision already rounded every weight to bf16 per matmul operand; keeping only the
        // bf16 copy must not change a single logit.
        let dir = fixture("nonsquare_batch")
        let input = try SafetensorsFile(url: dir.appendingPathComponent("input.safetensors")).tensor("pixel_values")
        // Both on oneDNN's kernels: float32-stored weights never reach our GEMM's bf16 panels, whose
        // other summation order is tested in PackedLinearWeightsTests.
        let e1 = try Engine(); e1.precision = .bfloat16; e1.linearKernel = .onednn
        let reference = try CvtForImageClassification(pretrained: dir, engine: e1)
        let e2 = try Engine(); e2.linearKernel = .onednn
        let compact = try CvtForImageClassification(pretrained: dir, engine: e2, dtype: .bfloat16)
        XCTAssertEqual(compact.precision, .bfloat16)
        XCTAssertEqual(compact.engine.precision, .float32, "the dtype is the model's, not its engine's")
        XCTAssertEqual(compact.classifier?.weightStorage, .bfloat16)
        XCTAssertEqual(reference.parameterBytes - compact.parameterBytes, linearWeightElements(reference) * 2)
        XCTAssertEqual(try compact(input).logits.maxAbsDifference(try reference(input).logits), 0)
    }

    func testLoadingKeepsTheChosenStorage() throws {
        let dir = fixture("tiny")
        let model = try CvtForImageClassification(pretrained: dir, engine: Engine(), dtype: .float16)
        // A second load (any visitor that writes) refills the compact storage layer by layer.
        let (weights, path) = try CheckpointFolder(dir).openWeights()
        try model.load(from: weights, sourceName: path)
        for l in model.cvt.linearLayers { XCTAssertEqual(l.weightStorage, .float16) }
        XCTAssertEqual(model.cvt.linearLayers.first?.weight.count, 0, "no float32 copy is kept")
    }

    func testFloat16OverflowIsAnErrorNamingTheKeyAndChangesNothing() throws {
        let model = try CvtForImageClassification(pretrained: fixture("tiny"), engine: Engine())
        let layer = model.cvt.stages[1].layers[0].intermediate
        layer.weight[flat: 5] = 70000  // beyond float16's ±65504
        XCTAssertThrowsError(try model.storeWeights(as: .float16)) { error in
            XCTAssertTrue("\(error)".contains("cvt.encoder.stages.1.layers.0.intermediate.dense.weight"), "\(error)")
            XCTAssertTrue("\(error)".contains("70000"), "\(error)")
        }
        for l in model.cvt.linearLayers { XCTAssertEqual(l.weightStorage, .float32) }
        XCTAssertEqual(layer.weight[flat: 5], 70000)
        // bfloat16 has float32's range.
        try model.storeWeights(as: .bfloat16)
        XCTAssertEqual(try layer.float32Weight()[flat: 5], 70144)  // 70000 rounded to bf16's 8 significant bits
    }
}
