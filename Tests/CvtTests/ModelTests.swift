import Cvt
import CvtNN
import CvtTensor
import Foundation
import XCTest

final class ModelTests: XCTestCase {
    func tinyConfig() -> CvtConfig {
        var c = CvtConfig()
        c.embedDim = [16, 32, 48]; c.numHeads = [1, 2, 3]; c.depth = [1, 2, 3]; c.numLabels = 4
        return c
    }

    /// A batch gives the same rows as its images one by one (transformers checks 2e-4).
    func testBatchEquivalence() throws {
        let m = try syntheticModel(tinyConfig())
        let x = syntheticPixels([3, 3, 48, 40])
        let batched = try m(x, outputHiddenStates: true)
        let per = 3 * 48 * 40
        for i in 0..<3 {
            let xi = try Tensor(shape: [1, 3, 48, 40], scalars: Array(x.scalars[(i * per)..<((i + 1) * per)]))
            let single = try m(xi)
            assertClose("logits[\(i)]", single.logits.scalars, Array(batched.logits.scalars[(i * 4)..<(i * 4 + 4)]), tol: 1e-5)
        }
    }

    /// `logits(_:)` skips the last layer's non-CLS rows: per row the arithmetic is the full
    /// layer's, so the logits equal the full forward pass's, with either Linear kernel, in one pass
    /// or split batches, in bf16, and without a final CLS (the full pass). The full pass's results
    /// stay whole afterwards (the skipped rows are not left stale in anything returned).
    func testLogitsOnlyEqualFullForward() throws {
        var noCLS = tinyConfig(); noCLS.clsToken = [false, false, false]
        var oneLayer = tinyConfig(); oneLayer.depth = [1, 1, 1]
        for (name, config) in [("tiny", tinyConfig()), ("no final CLS", noCLS), ("one layer per stage", oneLayer)] {
            for kernel in [LinearKernel.onednn, .avx2] where kernel.isSupported {
                for (precision, tol) in [(ComputePrecision.float32, Float(1e-5)), (.bfloat16, 2e-3)] {
                    let engine = try Engine()
                    engine.linearKernel = kernel; engine.precision = precision
                    let m = try CvtForImageClassification(zeroed: config, engine: engine)
                    try m.visitParameters(SyntheticWeights(), prefix: "")
                    m.parametersDidChange()
                    for batch in [1, 3] {
                        let x = syntheticPixels([batch, 3, 48, 40])
                        let full = try m(x, outputHiddenStates: true)
                        let fast = try m.logits(x)
                        XCTAssertEqual(fast.shape, full.logits.shape)
                        assertClose("\(name) \(kernel) \(precision) batch \(batch): logits()", fast.scalars, full.logits.scalars, tol: tol)
                        let again = try m(x, outputHiddenStates: true)
                        assertClose("\(name): last_hidden_state after logits()", again.lastHiddenState.scalars, full.lastHiddenState.scalars, tol: 0)
                    }
                }
            }
        }
    }

    func testNonSquareAnd224Shapes() throws {
        let m = try syntheticModel(tinyConfig())
        let out = try m(syntheticPixels([1, 3, 225, 250]), outputHiddenStates: true)
        XCTAssertEqual(out.hiddenStates?.map { Array($0.shape[2...]) }, [[56, 62], [28, 31], [14, 16]], "stage grid sizes")
        XCTAssertEqual(out.lastHiddenState.shape, [1, 48, 14, 16])
    }

    func testBadInputsAreErrorsNotCrashes() throws {
        let m = try syntheticModel(tinyConfig())
        XCTAssertThrowsError(try m(Tensor(zeros: [1, 3, 2, 2]))) { XCTAssertTrue("\($0)".contains("too small"), "\($0)") }
        XCTAssertThrowsError(try m(Tensor(zeros: [1, 1, 64, 64]))) { XCTAssertTrue("\($0)".contains("channels"), "\($0)") }
        XCTAssertThrowsError(try m(Tensor(zeros: [3, 64, 64])))
        XCTAssertThrowsError(try m(Tensor(zeros: [0, 3, 64, 64])))
        XCTAssertThrowsError(try m(Tensor(zeros: [1, 3, 0, 64])))
        XCTAssertThrowsError(try m(Tensor(zeros: [1, 3, 64, 0])))
        let x = syntheticPixels([2, 3, 32, 32])
        XCTAssertThrowsError(try m(x, labels: .classIndices([0])), "one label for two images")
        XCTAssertThrowsError(try m(x, labels: .classIndices([0, 4])), "label outside 0..<4")
    }

    func testNumLabelsZeroGivesPooledFeatures() throws {
        var c = tinyConfig(); c.numLabels = 0
        let m = try syntheticModel(c)
        XCTAssertNil(m.classifier)
        let out = try m(syntheticPixels([2, 3, 32, 32]))
        XCTAssertEqual(out.logits.shape, [2, 48])
        // The features are the LayerNorm-ed CLS token.
        let cls = try XCTUnwrap(out.clsTokenValue)
        var expected = Tensor(zeros: [2, 48])
        expected.withUnsafeMutableBufferPointer { p in
            m.layernorm(src: cls.unsafePointer, dst: p.baseAddress!, rows: 2)
        }
        assertClose("features", out.logits.scalars, expected.scalars, tol: 0)
    }

    func testRandomInitializationFollowsTransformers() throws {
        let a = try CvtForImageClassification.randomlyInitialized(config: tinyConfig(), seed: 7)
        let b = try CvtForImageClassification.randomlyInitialized(config: tinyConfig(), seed: 7)
        let sa = try a.stateDict(), sb = try b.stateDict()
        XCTAssertEqual(sa.order, sb.order)
        for k in sa.order { XCTAssertEqual(sa.tensors[k]?.scalars, sb.tensors[k]?.scalars, "seeded init differs at \(k)") }
        let w = try XCTUnwrap(sa.tensors["cvt.encoder.stages.2.layers.0.intermediate.dense.weight"]).scalars
        let mean = w.reduce(0, +) / Float(w.count)
        let std = (w.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(w.count)).squareRoot()
        XCTAssertEqual(std, 0.02, accuracy: 0.002)
        XCTAssertTrue(w.allSatisfy { abs($0) <= 2 })
        XCTAssertEqual(sa.tensors["cvt.encoder.stages.2.layers.0.intermediate.dense.bias"]?.scalars.allSatisfy { $0 == 0 }, true)
        XCTAssertEqual(sa.tensors["layernorm.weight"]?.scalars.allSatisfy { $0 == 1 }, true)
        XCTAssertEqual(sa.tensors["cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_key.convolution_projection.normalization.running_var"]?.scalars.allSatisfy { $0 == 1 }, true)
        let cls = try XCTUnwrap(sa.tensors["cvt.encoder.stages.2.cls_token"]).scalars
        XCTAssertTrue(cls.contains { $0 != 0 }, "cls_token is trunc-normal initialised")
        let out = try a(syntheticPixels([1, 3, 32, 32]))
        XCTAssertTrue(out.logits.scalars.allSatisfy(\.isFinite))
    }

    /// Keys walk in transformers' state_dict order.
    func testStateDictKeyOrder() throws {
        var c = tinyConfig(); c.clsToken = [false, true, true]
        let keys = try CvtForImageClassification(zeroed: c).stateDict().order
        XCTAssertEqual(keys.first, "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight")
        XCTAssertEqual(Array(keys.suffix(4)), ["layernorm.weight", "layernorm.bias", "classifier.weight", "classifier.bias"])
        let s1 = keys.firstIndex(of: "cvt.encoder.stages.1.cls_token")
        let e1 = keys.firstIndex(of: "cvt.encoder.stages.1.embedding.convolution_embeddings.projection.weight")
        XCTAssertNotNil(s1); XCTAssertEqual(s1.map { $0 + 1 }, e1, "cls_token comes first in its stage")
        let layer = keys.filter { $0.hasPrefix("cvt.encoder.stages.0.layers.0.") }.map { String($0.dropFirst("cvt.encoder.stages.0.layers.0.".count)) }
        XCTAssertEqual(layer.count, 34 - 3, "34 keys per layer minus 3 num_batches_tracked")
        XCTAssertEqual(layer[0], "attention.attention.convolution_projection_query.convolution_projection.convolution.weight")
        XCTAssertEqual(layer.last, "layernorm_after.bias")
    }

    func testLosses() throws {
        let logits = try Tensor(shape: [2, 3], scalars: [1, 2, 3, 0, 0, 0])
        // -log softmax: row 0 label 2, row 1 label 0.
        let l0 = log(exp(1.0) + exp(2.0) + exp(3.0)) - 3, l1 = log(3.0)
        XCTAssertEqual(Double(try Losses.crossEntropy(logits: logits, labels: [2, 0])), (l0 + l1) / 2, accuracy: 1e-6)
        XCTAssertEqual(Double(try Losses.crossEntropy(logits: logits, labels: [2, -100])), l0, accuracy: 1e-6, "ignore_index -100")
        XCTAssertEqual(try Losses.mse([1, 2], [0, 4]), 2.5)
        // BCE(x=0, y=1) = log 2; BCE(x=100, y=0) = 100.
        XCTAssertEqual(Double(try Losses.bceWithLogits([0, 100], [1, 0])), (log(2.0) + 100) / 2, accuracy: 1e-5)
        XCTAssertThrowsError(try Losses.mse([1], [1, 2]))
    }
}

/// A batch split across threads (one single-threaded engine per part) gives the numbers of one
/// pass on all threads, for every output, and errors come back as errors.
final class BatchSplitTests: XCTestCase {
    func config(cls: Bool = true) -> CvtConfig {
        var c = CvtConfig()
        c.embedDim = [16, 32, 64]; c.numHeads = [1, 2, 4]; c.depth = [1, 1, 2]; c.numLabels = 5
        if !cls { c.clsToken = [false, false, false] }
        return c
    }

    func model(_ c: CvtConfig, splits: Bool, precision: ComputePrecision = .float32) throws -> CvtForImageClassification {
        let e = try Engine()
        e.splitsBatches = splits; e.precision = precision
        let m = try CvtForImageClassification(zeroed: c, engine: e)
        try m.visitParameters(SyntheticWeights(), prefix: "")
        m.parametersDidChange()
        return m
    }

    func testSplitBatchEqualsOnePass() throws {
        for cls in [true, false] {
            let whole = try model(config(cls: cls), splits: false), split = try model(config(cls: cls), splits: true)
            XCTAssertEqual(split.engine.threads, 2, "the test machine kind has 2 cores")
            // 3 images on 2 threads: parts of 2 and 1.
            let x = syntheticPixels([3, 3, 40, 48])
            let a = try whole(x, outputHiddenStates: true), b = try split(x, outputHiddenStates: true)
            assertClose("logits (cls \(cls))", b.logits.scalars, a.logits.scalars, tol: 2e-5)
            XCTAssertEqual(b.logits.shape, [3, 5])
            assertClose("last_hidden_state", b.lastHiddenState.scalars, a.lastHiddenState.scalars, tol: 2e-5)
            XCTAssertEqual(b.lastHiddenState.shape, a.lastHiddenState.shape)
            let ha = try XCTUnwrap(a.hiddenStates), hb = try XCTUnwrap(b.hiddenStates)
            XCTAssertEqual(hb.map(\.shape), ha.map(\.shape))
            for s in ha.indices { assertClose("hidden_states.\(s)", hb[s].scalars, ha[s].scalars, tol: 2e-5) }
            XCTAssertEqual(b.clsTokenValue?.shape, a.clsTokenValue?.shape)
            if let ca = a.clsTokenValue, let cb = b.clsTokenValue { assertClose("cls_token_value", cb.scalars, ca.scalars, tol: 2e-5) }
            // Each image equals its own single-image pass (which does not split).
            let per = 3 * 40 * 48
            for i in 0..<3 {
                let xi = try Tensor(shape: [1, 3, 40, 48], scalars: Array(x.scalars[(i * per)..<((i + 1) * per)]))
                assertClose("logits[\(i)] alone", try split(xi).logits.scalars, Array(b.logits.scalars[(i * 5)..<(i * 5 + 5)]), tol: 2e-5)
            }
            // The engine's own thread count is back after the workers ran.
            XCTAssertEqual(split.engine.threads, 2)
        }
    }

    func testSplitBatchInBFloat16AndAcrossBatchSizes() throws {
        let whole = try model(config(), splits: false, precision: .bfloat16), split = try model(config(), splits: true, precision: .bfloat16)
        for n in [2, 5] {
            let x = syntheticPixels([n, 3, 32, 32])
            let a = try whole(x).logits, b = try split(x).logits
            XCTAssertEqual(b.shape, [n, 5])
            // Same bf16 operands; only the summation order of one thread vs two differs.
            assertClose("bf16 logits, batch \(n)", b.scalars, a.scalars, tol: 2e-3)
        }
    }

    func testMorePartsThanThreadsRunInTurn() throws {
        // 9 images in parts of at most 2: 5 parts on 2 threads, each thread running its parts in
        // turn on its own engine; and with one part per thread (imagesPerPart 0) the same numbers.
        let whole = try model(config(), splits: false), split = try model(config(), splits: true)
        let x = syntheticPixels([9, 3, 32, 32])
        let want = try whole(x, outputHiddenStates: true)
        for perPart in [2, 0, 4] {
            split.engine.imagesPerPart = perPart
            XCTAssertEqual(split.engine.batchParts(9), perPart == 2 ? 5 : perPart == 4 ? 3 : 2)
            let got = try split(x, outputHiddenStates: true)
            assertClose("logits, \(perPart) images per part", got.logits.scalars, want.logits.scalars, tol: 2e-5)
            assertClose("hidden_states.0, \(perPart) images per part", try XCTUnwrap(got.hiddenStates)[0].scalars,
                        try XCTUnwrap(want.hiddenStates)[0].scalars, tol: 2e-5)
        }
        XCTAssertEqual(split.engine.threads, 2)
    }

    func testMoreThreadsThanParts() throws {
        // 4 threads, 3 images: 3 parts of 1 image, one thread each (the fourth idle; 3 threads
        // oversubscribe the 2-core test machine, which only makes it slower).
        let whole = try model(config(), splits: false), split = try model(config(), splits: true)
        split.engine.threads = 4
        let x = syntheticPixels([3, 3, 32, 32])
        assertClose("logits, 4 threads over 3 parts", try split(x).logits.scalars, try whole(x).logits.scalars, tol: 2e-5)
        XCTAssertEqual(split.engine.threads, 4)
    }

    func testErrorsInsideTheWorkersAreThrown() throws {
        let split = try model(config(), splits: true)
        // Too small for the stage-3 patch embedding: found inside the stages, i.e. in the workers.
        XCTAssertThrowsError(try split(Tensor(zeros: [4, 3, 2, 2]))) { XCTAssertTrue("\($0)".contains("too small"), "\($0)") }
        XCTAssertEqual(split.engine.threads, 2)
        // And the model still works afterwards.
        XCTAssertEqual(try split(syntheticPixels([2, 3, 32, 32])).logits.shape, [2, 5])
    }

    func testProfileCountsTheWorkers() throws {
        let split = try model(config(), splits: true)
        split.engine.profile = true
        _ = try split(syntheticPixels([2, 3, 32, 32]))
        XCTAssertGreaterThan(split.engine.profileTimes["matmul", default: 0], 0)
        XCTAssertGreaterThan(split.engine.profileTimes["conv", default: 0], 0)
    }
}

/// Stacking batch parts.
final class ConcatenationTests: XCTestCase {
    func testConcatenatingBatches() throws {
        let a = try Tensor(shape: [1, 2], scalars: [1, 2]), b = try Tensor(shape: [2, 2], scalars: [3, 4, 5, 6])
        let c = try Tensor(concatenatingBatches: [a, b])
        XCTAssertEqual(c.shape, [3, 2])
        XCTAssertEqual(c.scalars, [1, 2, 3, 4, 5, 6])
        XCTAssertThrowsError(try Tensor(concatenatingBatches: [a, try Tensor(shape: [1, 3], scalars: [0, 0, 0])]))
        XCTAssertThrowsError(try Tensor(concatenatingBatches: [a, try Tensor(shape: [], scalars: [0])]))
    }
}
