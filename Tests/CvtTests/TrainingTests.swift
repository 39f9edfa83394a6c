import Cvt
import CvtNN
import CvtTensor
import Foundation
import XCTest

/// Moves every trainable parameter by `t·direction` (the direction given per parameter name).
private final class Shift: ParameterVisitor {
    let direction: [String: Tensor]
    let t: Float
    init(_ direction: [String: Tensor], by t: Float) { self.direction = direction; self.t = t }
    func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {}
    func visit(_ key: String, _ tensor: inout Tensor, gradient: inout Tensor, kind: ParameterKind) throws {
        guard let d = direction[key] else { return }
        tensor.withUnsafeMutableBufferPointer { p in for i in 0..<p.count { p[i] += t * d[flat: i] } }
    }
}

private final class Grads: ParameterVisitor {
    var grads: [String: Tensor] = [:]
    var reset = false
    func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {}
    func visit(_ key: String, _ tensor: inout Tensor, gradient: inout Tensor, kind: ParameterKind) throws {
        if reset { gradient = Tensor(zeros: [0]) } else { grads[key] = gradient }
    }
}

/// Gradients of the training loss against central finite differences along random directions:
/// a whole-model check of every backward, for configurations the reference cannot run too. The
/// per-tensor comparison with PyTorch lives in CvtKitTests (fixtures).
final class TrainingGradientTests: XCTestCase {
    func config(_ edit: (inout CvtConfig) -> Void) -> CvtConfig {
        var c = CvtConfig()
        c.embedDim = [8, 16, 24]; c.numHeads = [1, 2, 3]; c.depth = [1, 1, 2]; c.numLabels = 3
        c.dropPathRate = [0, 0, 0]
        edit(&c)
        return c
    }

    /// Loss at the current parameters (training mode, deterministic). BatchNorm's running
    /// statistics move on every call but do not enter the training-mode loss.
    func loss(_ m: CvtForImageClassification, _ x: Tensor, _ y: Labels) throws -> Double {
        let r = Grads(); r.reset = true
        try m.visitParameters(r, prefix: "")
        return Double(try m.forwardBackward(x, labels: y, context: TrainingContext(engine: m.engine, stochastic: false)).loss)
    }

    func check(_ c: CvtConfig, labels: Labels, size: (Int, Int) = (32, 40), batch: Int = 2, file: StaticString = #filePath, line: UInt = #line) throws {
        let m = try CvtForImageClassification.randomlyInitialized(config: c, seed: 7)
        // Larger than transformers' 0.02 init, so every path carries signal.
        try m.visitParameters(RandomInitializer(seed: 3, initializerRange: 0.3), prefix: "")
        m.parametersDidChange()
        var rng = SplitMix64(seed: 11)
        let x = Tensor(shape: [batch, 3, size.0, size.1]) { _ in rng.nextGaussian() }
        _ = try loss(m, x, labels)
        let g = Grads()
        try m.visitParameters(g, prefix: "")
        XCTAssertFalse(g.grads.isEmpty)
        for (name, grad) in g.grads {
            XCTAssertTrue(grad.count > 0, "\(name) got no gradient", file: file, line: line)
        }
        for trial in 0..<3 {
            // A random unit direction over all parameters, and the gradient's own direction.
            var dir: [String: Tensor] = [:]
            var norm = 0.0
            for (name, grad) in g.grads {
                let d: Tensor = trial == 0 ? grad : Tensor(shape: grad.shape) { _ in rng.nextGaussian() }
                dir[name] = d
                norm += d.withUnsafeBufferPointer { $0.reduce(0.0) { $0 + Double($1) * Double($1) } }
            }
            norm = norm.squareRoot()
            var analytic = 0.0
            for (name, d) in dir {
                let grad = g.grads[name]!
                for i in 0..<d.count { analytic += Double(grad[flat: i]) * Double(d[flat: i]) / norm }
            }
            let t: Float = 1e-2
            try m.visitParameters(Shift(dir, by: t / Float(norm)), prefix: "")
            let plus = try loss(m, x, labels)
            try m.visitParameters(Shift(dir, by: -2 * t / Float(norm)), prefix: "")
            let minus = try loss(m, x, labels)
            try m.visitParameters(Shift(dir, by: t / Float(norm)), prefix: "")
            let numeric = (plus - minus) / (2 * Double(t))
            let err = abs(numeric - analytic)
            XCTAssertLessThanOrEqual(err, 2e-2 * max(abs(analytic), 1e-1),
                                     "direction \(trial): finite difference \(numeric) vs gradient \(analytic)", file: file, line: line)
        }
    }

    /// The attention runs a batch's images in chunks (its backward always, its forward in bf16
    /// precision): one image per chunk gives the loss and gradients of one chunk for the whole
    /// batch, with attention dropout on and off, in float32 and bfloat16 precision.
    func testAttentionBackwardChunksGiveTheSameGradients() throws {
        var c = config { $0.attentionDropRate = [0.1, 0, 0.2] }
        c.numLabels = 3
        for precision in [ComputePrecision.float32, .bfloat16] {
            for stochastic in [false, true] {
                var results: [[String: Tensor]] = [], losses: [Float] = []
                for chunkBytes in [1 << 30, 1] {
                    let m = try CvtForImageClassification.randomlyInitialized(config: c, seed: 7)
                    m.precision = precision
                    var rng = SplitMix64(seed: 5)
                    let x = Tensor(shape: [3, 3, 32, 40]) { _ in rng.nextGaussian() }
                    let context = TrainingContext(engine: m.engine, stochastic: stochastic, seed: 9)
                    context.attentionChunkBytes = chunkBytes
                    losses.append(try m.forwardBackward(x, labels: .classIndices([0, 2, 1]), context: context).loss)
                    let g = Grads()
                    try m.visitParameters(g, prefix: "")
                    results.append(g.grads)
                }
                XCTAssertEqual(Set(results[0].keys), Set(results[1].keys))
                XCTAssertEqual(losses[0], losses[1], accuracy: 1e-6 * abs(losses[0]), "\(precision) stochastic \(stochastic): loss")
                for (name, whole) in results[0] {
                    let chunked = results[1][name]!
                    var worst: Float = 0, scale: Float = 1e-6
                    for i in 0..<whole.count {
                        worst = max(worst, abs(whole[flat: i] - chunked[flat: i])); scale = max(scale, abs(whole[flat: i]))
                    }
                    XCTAssertLessThanOrEqual(worst, 1e-6 * scale, "\(precision) stochastic \(stochastic) \(name): max abs error \(worst)")
                }
            }
        }
    }

    func testCrossEntropyDefaultLayout() throws {
        try check(config { _ in }, labels: .classIndices([2, 0]))
    }

    func testNoClsTokenMeanPoolingMultiLabel() throws {
        try check(config { $0.clsToken = [false, false, false] }, labels: .values(try Tensor(shape: [2, 3], scalars: [1, 0, 1, 0, 0, 1])))
    }

    func testAvgAndLinearProjectionsClsEveryStageRegression() throws {
        try check(config { $0.qkvProjectionMethod = ["avg", "linear", "dw_bn"]; $0.clsToken = [true, true, true]; $0.numLabels = 1 },
                  labels: .values(try Tensor(shape: [3], scalars: [0.5, -1, 2])), batch: 3)
    }

    func testBatchNormRunningStatisticsFollowPyTorch() throws {
        let m = try CvtForImageClassification.randomlyInitialized(config: config { _ in }, seed: 1)
        let bn = m.cvt.stages[0].layers[0].attention.convolutionProjectionKey.normalization!
        var rng = SplitMix64(seed: 5)
        let x = Tensor(shape: [2, 3, 32, 32]) { _ in rng.nextGaussian() }
        _ = try m.forwardBackward(x, labels: .classIndices([0, 1]), context: TrainingContext(engine: m.engine, stochastic: false))
        XCTAssertEqual(bn.numBatchesTracked, 1)
        // Starting from mean 0 / var 1: running = 0.1·batch statistic (+ 0.9 for the variance), so
        // the variance moved by a positive amount and the mean stayed small.
        XCTAssertNotEqual(bn.runningVar[flat: 0], 1)
    }
}
