import CvtKit
import Foundation
import XCTest

// Reference numbers come from transformers 5.23.0 / torch 2.13.0+cpu (AVX-512 build) in the
// reference venv. This script prints the AdamW, scheduler, clipping and label-smoothing values
// hard-coded below (run it with /work/main/.venv-reference/bin/python):
//
// import math, torch, numpy as np
// from torch import nn
// from transformers import Trainer
// from transformers.optimization import get_scheduler
// from transformers.trainer_pt_utils import LabelSmoother
// f32 = lambda t: "[" + ", ".join(str(np.float32(x)) for x in t.detach().reshape(-1).numpy()) + "]"
//
// def tiny():  # the module tree of OptimizerTests.TinyNet
//     m = nn.Module()
//     def put(path, mod):
//         *parents, last = path.split(".")
//         cur = m
//         for p in parents:
//             if not hasattr(cur, p): cur.add_module(p, nn.Module())
//             cur = getattr(cur, p)
//         cur.add_module(last, mod) if isinstance(mod, nn.Module) else cur.register_parameter(last, mod)
//     put("cvt.encoder.stages.2.cls_token", nn.Parameter(torch.tensor([[[0.5, -0.25, 0.125]]])))
//     bn = nn.BatchNorm2d(3); bn.weight.data = torch.tensor([1.0, 0.9, 1.1]); bn.bias.data = torch.tensor([0.0, 0.05, -0.05])
//     put("cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_query.convolution_projection.normalization", bn)
//     ln = nn.LayerNorm(3); ln.weight.data = torch.tensor([1.0, 1.2, 0.8]); ln.bias.data = torch.tensor([0.1, -0.1, 0.0])
//     put("layernorm", ln)
//     fc = nn.Linear(4, 5)
//     fc.weight.data = torch.tensor([np.float32(0.3 - 0.07 * i) for i in range(20)]).reshape(5, 4)
//     fc.bias.data = torch.tensor([np.float32(0.01 * (i - 2)) for i in range(5)])
//     put("classifier", fc)
//     un = nn.Linear(3, 2); un.weight.data = torch.tensor([[1.0, 2, 3], [4, 5, 6]]); un.bias.data = torch.tensor([7.0, 8])
//     put("unused", un)
//     return m
//
// def grad(k, j, shape):  # step k of parameter j (in named_parameters order)
//     return torch.tensor([np.float32(math.sin(0.9 * i + 0.7 * k + 0.1 * j) * (k + 1))
//                          for i in range(math.prod(shape))]).reshape(shape)
//
// for fused in [False, True]:
//     m = tiny()
//     decay = Trainer.get_decay_parameter_names(None, m)
//     named = list(m.named_parameters())
//     groups = [{"params": [p for n, p in named if n in decay], "weight_decay": 0.1},
//               {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
//     opt = torch.optim.AdamW(groups, lr=0.01, betas=(0.9, 0.999), eps=1e-8, fused=fused)
//     for k, lr in enumerate([0.01, 0.02, 0.005]):
//         for j, (n, p) in enumerate(named):
//             p.grad = None if n.startswith("unused") else grad(k, j, p.shape)
//         for g in opt.param_groups: g["lr"] = lr
//         opt.step()
//     print("fused" if fused else "for-loop", "decay:", decay)
//     for n, p in named: print(" ", n, f32(p))
//     st = opt.state[m.classifier.weight]
//     print("  classifier.weight exp_avg_sq", st["step"].item(), f32(st["exp_avg_sq"]))
//
// # schedulers: the lr of optimizer steps 0...11 for T = 10, warmup ratio 0.25 → ceil(2.5) = 3 steps
// for name in ["linear", "cosine", "constant", "constant_with_warmup"]:
//     opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=3e-4)
//     s = get_scheduler(name, opt, num_warmup_steps=math.ceil(10 * 0.25), num_training_steps=10)
//     lrs = []
//     for _ in range(12): lrs.append(s.get_last_lr()[0]); opt.step(); s.step()
//     print(name, "[" + ", ".join(repr(x) for x in lrs) + "]")
//
// # clipping (the third parameter has no gradient); norms 5 and 12 make a total of exactly 13
// for a, b in [([0.5, -1.5, 2.0], [[0.25, 3.0], [-0.75, 1.0]]), ([3.0, -4.0, 0.0], [[0.0, 12.0], [0.0, 0.0]])]:
//     for mx in [1.0, 0.17, 100.0]:  # 0.17: max_norm / x and (1 / x) * max_norm round apart
//         ps = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))]
//         ps[0].grad = torch.tensor(a); ps[1].grad = torch.tensor(b)
//         total = torch.nn.utils.clip_grad_norm_(ps, mx)
//         print("clip", mx, np.float32(total.item()), f32(ps[0].grad), f32(ps[1].grad))
//
// # label smoothing
// for n_items in [None, 5]:
//     logits = torch.tensor([[1.0, -0.5, 2.0, 0.25], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -2.0, 0.5]], requires_grad=True)
//     loss = LabelSmoother(epsilon=0.1)({"logits": logits}, torch.tensor([2, -100, 0]), num_items_in_batch=n_items)
//     loss.backward()
//     print("smooth", n_items, np.float32(loss.item()), f32(logits.grad))
//
// The non-decayed names of the tiny CvT and the Trainer's step counts come from:
//
// from transformers import CvtConfig, CvtForImageClassification, Trainer
// m = CvtForImageClassification(CvtConfig(embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3], num_labels=4))
// decay = Trainer.get_decay_parameter_names(None, m)
// print(len(list(m.named_parameters())), [n for n, _ in m.named_parameters() if n not in decay])
//
// from torch.utils.data import DataLoader
// from transformers import TrainingArguments
// for n, b, ga, ep, ms, drop in [(10, 3, 2, 3.0, -1, False), (10, 3, 2, 3.0, -1, True), (9, 3, 4, 3.0, -1, False),
//                                 (10, 3, 1, 2.5, -1, False), (100, 8, 3, 1.0, -1, False), (10, 3, 2, 3.0, 7, False),
//                                 (5, 8, 4, 0.3, -1, False), (10, 3, 2, 3.0, 0, False)]:
//     args = TrainingArguments(output_dir="out", per_device_train_batch_size=b, gradient_accumulation_steps=ga,
//                              num_train_epochs=ep, max_steps=ms, dataloader_drop_last=drop, use_cpu=True)
//     t = Trainer.__new__(Trainer); t.args = args; t.get_sp_size = lambda: 1
//     t.get_total_train_batch_size = lambda a: b * ga; t.num_examples = lambda d: n
//     print(Trainer.set_initial_training_values(t, args, DataLoader(list(range(n)), batch_size=b, drop_last=drop)))

/// The module tree of the reference script's `tiny()`: a CLS token, a BatchNorm2d and a LayerNorm
/// under CvT-like names, a Linear, and a Linear that never gets gradients.
final class TinyNet: Module {
    static let batchNormPrefix = "cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_query.convolution_projection.normalization"
    var clsToken = try! Tensor(shape: [1, 1, 3], scalars: [0.5, -0.25, 0.125])
    var clsTokenGrad = Tensor(zeros: [0])
    let batchNorm = BatchNorm2d(3), layernorm = LayerNorm(3), classifier = Linear(4, 5), unused = Linear(3, 2)

    init() {
        batchNorm.weight = try! Tensor(shape: [3], scalars: [1.0, 0.9, 1.1])
        batchNorm.bias = try! Tensor(shape: [3], scalars: [0.0, 0.05, -0.05])
        batchNorm.runningMean = try! Tensor(shape: [3], scalars: [0.5, 0.5, 0.5])
        layernorm.weight = try! Tensor(shape: [3], scalars: [1.0, 1.2, 0.8])
        layernorm.bias = try! Tensor(shape: [3], scalars: [0.1, -0.1, 0.0])
        classifier.weight = try! Tensor(shape: [5, 4], scalars: (0..<20).map { Float(0.3 - 0.07 * Double($0)) })
        classifier.bias = try! Tensor(shape: [5], scalars: (0..<5).map { Float(0.01 * Double($0 - 2)) })
        unused.weight = try! Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        unused.bias = try! Tensor(shape: [2], scalars: [7, 8])
    }

    func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        try v.visit(joinKey(prefix, "cvt.encoder.stages.2.cls_token"), &clsToken, gradient: &clsTokenGrad, kind: .clsToken)
        try batchNorm.visitParameters(v, prefix: joinKey(prefix, Self.batchNormPrefix))
        try layernorm.visitParameters(v, prefix: joinKey(prefix, "layernorm"))
        try classifier.visitParameters(v, prefix: joinKey(prefix, "classifier"))
        try unused.visitParameters(v, prefix: joinKey(prefix, "unused"))
    }
    func parametersDidChange() {}

    /// The script's `grad(k, j, shape)`: `sin(0.9 i + 0.7 k + 0.1 j) · (k + 1)` for element i of the
    /// j-th parameter at step k; the `unused` Linear keeps no gradient.
    static func gradient(step k: Int, index j: Int, count: Int) -> [Float] {
        (0..<count).map { i in Float(sin(0.9 * Double(i) + 0.7 * Double(k) + 0.1 * Double(j)) * Double(k + 1)) }
    }

    func setGradients(step k: Int) throws {
        final class Setter: ParameterVisitor {
            let k: Int
            var j = 0
            init(_ k: Int) { self.k = k }
            func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {}
            func visit(_ key: String, _ tensor: inout Tensor, gradient: inout Tensor, kind: ParameterKind) throws {
                defer { j += 1 }
                if key.hasPrefix("unused") { gradient = Tensor(zeros: [0]); return }
                gradient = try Tensor(shape: tensor.shape, scalars: TinyNet.gradient(step: k, index: j, count: tensor.count))
            }
        }
        try visitParameters(Setter(k), prefix: "")
    }

    func values() throws -> [String: [Float]] {
        let c = StateDictCollector()
        try visitParameters(c, prefix: "")
        return c.tensors.mapValues(\.scalars)
    }
}

/// A module with parameters of any names and kinds (for the decay-name rules).
final class NamedParameters: Module {
    let names: [String], kinds: [ParameterKind]
    var values: [Tensor], grads: [Tensor]
    init(_ list: [(String, ParameterKind)]) {
        names = list.map(\.0); kinds = list.map(\.1)
        values = list.map { _ in Tensor(zeros: [2]) }; grads = list.map { _ in Tensor(zeros: [0]) }
    }
    func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        for i in names.indices {
            try v.visit(joinKey(prefix, names[i]), &values[i], gradient: &grads[i], kind: kinds[i])
        }
    }
    func parametersDidChange() {}
}

final class OptimizerTests: XCTestCase {
    static let bn = TinyNet.batchNormPrefix
    static let learningRates = [0.01, 0.02, 0.005]

    /// Final parameters after the script's three steps (wd 0.1 on the decayed group), per path.
    static let torchForLoop: [String: [Float]] = [
        "cvt.encoder.stages.2.cls_token": [0.47929958, -0.282649, 0.091115884],
        bn + ".weight": [0.9665604, 0.86310047, 1.0635207],
        bn + ".bias": [-0.030756798, 0.01601005, -0.081571154],
        "layernorm.weight": [0.96862143, 1.1658369, 0.76976115],
        "layernorm.bias": [0.06811095, -0.13429917, -0.028638665],
        "classifier.weight": [0.26666594, 0.19484672, 0.13298532, 0.11924022, 0.053590488, -0.016816944, -0.118855715, -0.22168677, -0.2934476, -0.35484543, -0.36888433, -0.4346584, -0.505249, -0.60794365, -0.7100379, -0.78173965, -0.8426389, -0.857016, -0.922908, -0.9936896],
        "classifier.bias": [-0.052689094, -0.04439244, -0.023139823, 0.040454883, 0.05390894],
        "unused.weight": [1, 2, 3, 4, 5, 6],
        "unused.bias": [7, 8],
    ]
    static let torchFused: [String: [Float]] = {
        var d = torchForLoop
        d[bn + ".bias"] = [-0.0307568, 0.01601005, -0.081571154]
        d["classifier.weight"]![4] = 0.05359049
        d["classifier.bias"] = [-0.05268909, -0.04439244, -0.023139823, 0.040454883, 0.053908944]
        return d
    }()
    /// `exp_avg_sq` of classifier.weight after the three steps: the paths differ at element 16,
    /// the first of the fused kernel's scalar epilogue (20 % 8 = 4 elements).
    static let torchExpAvgSqForLoop: [Float] = [0.011760058, 0.004956665, 0.0031610816, 0.010780394, 0.00911373, 0.0022517566, 0.0070365304, 0.011724283, 0.004809374, 0.0032637855, 0.010881016, 0.008965303, 0.002218581, 0.007200033, 0.011683162, 0.0046645575, 0.003370711, 0.010977245, 0.008814651, 0.0021908088]
    static let torchExpAvgSqFused: [Float] = {
        var v = torchExpAvgSqForLoop; v[16] = 0.0033707109; return v
    }()

    func runTiny(fused: Bool, weightDecay: Double = 0.1, steps: Int = 3) throws -> (TinyNet, AdamW) {
        let net = TinyNet()
        let opt = try AdamW(decayParameterNames: Set(AdamW.decayParameterNames(net)), weightDecay: weightDecay, fused: fused)
        for k in 0..<steps {
            try net.setGradients(step: k)
            try opt.step(net, learningRate: Self.learningRates[k])
        }
        return (net, opt)
    }

    func ulps(_ a: Float, _ b: Float) -> Int {
        let x = Int32(bitPattern: a.bitPattern), y = Int32(bitPattern: b.bitPattern)
        return abs(Int(x) - Int(y))
    }

    // MARK: AdamW

    func testDecayNamesOfTinyNet() throws {
        XCTAssertEqual(try AdamW.decayParameterNames(TinyNet()),
                       ["cvt.encoder.stages.2.cls_token", Self.bn + ".weight", "classifier.weight", "unused.weight"],
                       "as the script's get_decay_parameter_names: BatchNorm weight and cls_token decay, LayerNorm and biases do not")
    }

    /// The fused kernel (transformers' default optimizer) bit for bit, moments included.
    func testAdamWFusedMatchesTorchBitForBit() throws {
        let (net, opt) = try runTiny(fused: true)
        let values = try net.values()
        for (name, expected) in Self.torchFused {
            XCTAssertEqual(values[name], expected, name)
        }
        XCTAssertEqual(values[Self.bn + ".running_mean"], [0.5, 0.5, 0.5], "buffers untouched")
        XCTAssertEqual(opt.state["classifier.weight"]?.step, 3)
        XCTAssertEqual(opt.state["classifier.weight"]?.expAvgSq.scalars, Self.torchExpAvgSqFused)
    }

    /// The per-op path: torch takes exp_avg_sq.sqrt() from MKL (not correctly rounded), so a
    /// parameter may differ by an ulp; the moments are exact.
    func testAdamWSingleTensorMatchesTorch() throws {
        let (net, opt) = try runTiny(fused: false)
        let values = try net.values()
        var differing = 0
        for (name, expected) in Self.torchForLoop {
            let got = try XCTUnwrap(values[name], name)
            XCTAssertEqual(got.count, expected.count, name)
            for (a, b) in zip(got, expected) {
                XCTAssertLessThanOrEqual(ulps(a, b), 1, "\(name): \(a) vs torch \(b)")
                if a != b { differing += 1 }
            }
        }
        XCTAssertLessThanOrEqual(differing, 3)
        XCTAssertEqual(opt.state["classifier.weight"]?.expAvgSq.scalars, Self.torchExpAvgSqForLoop)
    }

    /// Both paths against AdamW written out in double: decoupled decay only on the decayed names.
    func testAdamWMatchesDoublePrecisionDerivation() throws {
        let decayed = Set(try AdamW.decayParameterNames(TinyNet()))
        let names = ["cvt.encoder.stages.2.cls_token", Self.bn + ".weight", Self.bn + ".bias", "layernorm.weight",
                     "layernorm.bias", "classifier.weight", "classifier.bias"]
        let initial = try TinyNet().values()
        var expected: [String: [Double]] = [:]
        for (j, name) in names.enumerated() {
            var p = initial[name]!.map(Double.init)
            var m = [Double](repeating: 0, count: p.count), v = m
            let wd = decayed.contains(name) ? 0.1 : 0
            for k in 0..<3 {
                let lr = Self.learningRates[k], t = Double(k + 1)
                let g = TinyNet.gradient(step: k, index: j, count: p.count).map(Double.init)
                for i in p.indices {
                    p[i] *= 1 - lr * wd
                    m[i] = 0.9 * m[i] + 0.1 * g[i]
                    v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i]
                    let mHat = m[i] / (1 - pow(0.9, t)), vHat = v[i] / (1 - pow(0.999, t))
                    p[i] -= lr * mHat / (vHat.squareRoot() + 1e-8)
                }
            }
            expected[name] = p
        }
        for fused in [false, true] {
            let values = try runTiny(fused: fused).0.values()
            for name in names {
                for (a, b) in zip(values[name]!, expected[name]!) {
                    XCTAssertEqual(Double(a), b, accuracy: 2e-6, "\(name) fused \(fused)")
                }
            }
        }
    }

    func testWeightDecayOnlyTouchesDecayedGroup() throws {
        let with = try runTiny(fused: true, weightDecay: 0.1).0.values()
        let without = try runTiny(fused: true, weightDecay: 0).0.values()
        for name in try AdamW.decayParameterNames(TinyNet()) where name != "unused.weight" {
            XCTAssertNotEqual(with[name], without[name], "\(name) is decayed")
        }
        for name in [Self.bn + ".bias", "layernorm.weight", "layernorm.bias", "classifier.bias"] {
            XCTAssertEqual(with[name], without[name], "\(name) is not decayed")
        }
    }

    /// At step 1 the bias corrections make m̂ = g and v̂ = g²: every parameter moves by lr·g/(|g| + eps),
    /// i.e. by lr against the sign of its gradient, whatever the gradient's size.
    func testBiasCorrectionAtFirstStep() throws {
        for fused in [false, true] {
            let net = TinyNet()
            let before = try net.values()
            let opt = try AdamW(decayParameterNames: [], weightDecay: 0, fused: fused)
            try net.setGradients(step: 0)
            try opt.step(net, learningRate: 0.01)
            let after = try net.values()
            for (j, name) in ["cvt.encoder.stages.2.cls_token", Self.bn + ".weight", "classifier.weight"].enumerated() {
                let g = TinyNet.gradient(step: 0, index: [0, 1, 5][j], count: before[name]!.count)
                for i in g.indices where g[i] != 0 {
                    let moved = Double(after[name]![i]) - Double(before[name]![i])
                    XCTAssertEqual(moved, -0.01 * Double(g[i]) / (abs(Double(g[i])) + 1e-8), accuracy: 1e-7, "\(name)[\(i)] fused \(fused)")
                }
            }
        }
    }

    /// An update that overflows is reported with the first parameter it hit (the kernel checks
    /// what it writes, the vector body and the scalar tail alike); a finite one reports nothing.
    func testNonFiniteUpdateIsReported() throws {
        for fused in [false, true] {
            let net = TinyNet()
            let opt = try AdamW(decayParameterNames: [], weightDecay: 0, fused: fused)
            try net.setGradients(step: 0)
            try opt.step(net, learningRate: 0.01)
            XCTAssertNil(opt.nonFiniteParameter, "fused \(fused)")
            try net.setGradients(step: 1)
            try opt.step(net, learningRate: 1e39)  // lr·m̂/√v̂ ≈ 1e39: beyond float32
            XCTAssertEqual(opt.nonFiniteParameter, "cvt.encoder.stages.2.cls_token", "fused \(fused)")
            try opt.step(net, learningRate: 0)
            XCTAssertNotNil(opt.nonFiniteParameter, "the weights are already infinite")
        }
    }

    /// Parameters without a gradient (zero-sized, as `.grad is None`) are not touched and get no state,
    /// even with weight decay; buffers get none either.
    func testParametersWithoutGradientAreSkipped() throws {
        let (net, opt) = try runTiny(fused: false)
        XCTAssertEqual(net.unused.weight.scalars, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(net.unused.bias?.scalars, [7, 8])
        XCTAssertNil(opt.state["unused.weight"])
        XCTAssertNil(opt.state[Self.bn + ".running_mean"])
        XCTAssertEqual(Set(opt.state.keys), ["cvt.encoder.stages.2.cls_token", Self.bn + ".weight", Self.bn + ".bias",
                                             "layernorm.weight", "layernorm.bias", "classifier.weight", "classifier.bias"])
    }

    /// Saving the state after two steps and loading it into a fresh optimizer continues exactly.
    func testStateDictRoundTrip() throws {
        let (reference, _) = try runTiny(fused: true)
        let (net, first) = try runTiny(fused: true, steps: 2)
        let saved = first.stateDict()
        XCTAssertEqual(saved["classifier.weight.step"]?.shape, [])
        XCTAssertEqual(saved["classifier.weight.step"]?.scalars, [2])
        XCTAssertEqual(saved.count, 7 * 3)
        let resumed = try AdamW(decayParameterNames: Set(AdamW.decayParameterNames(net)), weightDecay: 0.1, fused: true)
        try resumed.loadStateDict(saved)
        XCTAssertEqual(resumed.state, first.state)
        try net.setGradients(step: 2)
        try resumed.step(net, learningRate: Self.learningRates[2])
        XCTAssertEqual(try net.values(), try reference.values())
        XCTAssertEqual(first.state["classifier.weight"]?.step, 2, "the saved optimizer is not changed by the resumed one")

        var broken = saved
        broken["classifier.bias.exp_avg_sq"] = nil
        XCTAssertThrowsError(try resumed.loadStateDict(broken)) { XCTAssertTrue("\($0)".contains("classifier.bias.exp_avg_sq"), "\($0)") }
        broken = saved
        broken["classifier.bias.momentum"] = saved["classifier.bias.step"]
        XCTAssertThrowsError(try resumed.loadStateDict(broken)) { XCTAssertTrue("\($0)".contains("classifier.bias.momentum"), "\($0)") }
        broken = saved
        broken["classifier.bias.step"] = try Tensor(shape: [], scalars: [1.5])
        XCTAssertThrowsError(try resumed.loadStateDict(broken)) { XCTAssertTrue("\($0)".contains("classifier.bias.step"), "\($0)") }
        broken = saved
        broken["classifier.bias.exp_avg"] = Tensor(zeros: [4])
        broken["classifier.bias.exp_avg_sq"] = Tensor(zeros: [4])
        try resumed.loadStateDict(broken)
        try net.setGradients(step: 0)
        XCTAssertThrowsError(try resumed.step(net, learningRate: 0.01)) { XCTAssertTrue("\($0)".contains("classifier.bias"), "\($0)") }
        XCTAssertThrowsError(try AdamW(decayParameterNames: [], betas: (0.9, 1.0)))
        XCTAssertThrowsError(try first.step(net, learningRate: -1)) { XCTAssertTrue("\($0)".contains("learning rate"), "\($0)") }
    }

    /// `Trainer.get_decay_parameter_names` on transformers' own CvT with the same tiny config.
    func testDecayNamesOfCvtMatchTransformers() throws {
        var config = CvtConfig()
        config.embedDim = [16, 32, 48]; config.numHeads = [1, 2, 3]; config.depth = [1, 2, 3]; config.numLabels = 4
        let model = try CvtForImageClassification(zeroed: config)
        final class Names: ParameterVisitor {
            var names: [String] = []
            var readsOnly: Bool { true }
            var readsValues: Bool { false }
            func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {
                if kind != .runningMean && kind != .runningVar { names.append(key) }
            }
        }
        let all = Names()
        try model.visitParameters(all, prefix: "")
        XCTAssertEqual(all.names.count, 167, "transformers' named_parameters()")
        let decayed = try AdamW.decayParameterNames(model)
        XCTAssertEqual(decayed.count, 77)
        XCTAssertEqual(all.names.filter { !decayed.contains($0) }, Self.transformersNotDecayed)
        XCTAssertTrue(decayed.contains("cvt.encoder.stages.2.cls_token"))
        XCTAssertTrue(decayed.contains("cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_key.convolution_projection.normalization.weight"))
    }

    /// The name rules: lower-cased full names, patterns searched anywhere; LayerNorm kinds always exempt.
    func testDecayNameRules() throws {
        // Decisions checked with Python's re.search over transformers' patterns.
        let cases: [(String, ParameterKind, Bool)] = [
            ("encoder.norm.weight", .weight(fanIn: 1), false), ("norm.weight", .weight(fanIn: 1), false),
            ("encoder.final_norm.scale", .weight(fanIn: 1), false), ("encoder.normalization.weight", .weight(fanIn: 1), true),
            ("Encoder.LayerNorm_1.gamma", .weight(fanIn: 1), false), ("blocks.0.RMSNorm.scale", .weight(fanIn: 1), false),
            ("head.q_bias", .weight(fanIn: 1), false), ("head.biased_proj.weight", .weight(fanIn: 1), false),
            ("abnorm.weight", .weight(fanIn: 1), true), ("x.norm", .weight(fanIn: 1), false), ("x.enorm", .weight(fanIn: 1), true),
            ("x_norm", .weight(fanIn: 1), false), ("stem.weight", .normWeight, false), ("stem.shift", .normBias, false),
            ("bn.weight", .batchNormWeight, true), ("bn.shift", .batchNormBias, true), ("cls_token", .clsToken, true),
        ]
        let decayed = Set(try AdamW.decayParameterNames(NamedParameters(cases.map { ($0.0, $0.1) })))
        for (name, _, expected) in cases { XCTAssertEqual(decayed.contains(name), expected, name) }
    }

    // MARK: schedulers

    func testSchedulersMatchTransformers() throws {
        var args = TrainingArguments()
        args.learningRate = 3e-4
        args.warmupSteps = 0.25
        XCTAssertEqual(args.numWarmupSteps(totalSteps: 10), 3, "ceil(2.5)")
        let expected: [SchedulerType: [Double]] = [
            .linear: [0.0, 9.999999999999999e-05, 0.00019999999999999998, 0.0003, 0.0002571428571428571, 0.00021428571428571427, 0.0001714285714285714, 0.00012857142857142855, 8.57142857142857e-05, 4.285714285714285e-05, 0.0, 0.0],
            .cosine: [0.0, 9.999999999999999e-05, 0.00019999999999999998, 0.0003, 0.0002851453301853628, 0.00024352347027881003, 0.00018337814009344714, 0.00011662185990655284, 5.6476529721189974e-05, 1.4854669814637143e-05, 0.0, 1.4854669814637127e-05],
            .constant: [Double](repeating: 0.0003, count: 12),
            .constantWithWarmup: [0.0, 9.999999999999999e-05, 0.00019999999999999998, 0.0003, 0.0003, 0.0003, 0.0003, 0.0003, 0.0003, 0.0003, 0.0003, 0.0003],
        ]
        for (type, lrs) in expected {
            args.lrSchedulerType = type
            let s = LRScheduler(arguments: args, numTrainingSteps: 10)
            XCTAssertEqual((0..<12).map(s.learningRate(atStep:)), lrs, "\(type)")
            XCTAssertEqual(getScheduler(type, learningRate: 3e-4, numWarmupSteps: 3, numTrainingSteps: 10), s)
        }
    }

    func testWarmupSteps() throws {
        var args = TrainingArguments()
        XCTAssertEqual(args.numWarmupSteps(totalSteps: 100), 0)
        args.warmupSteps = 0.3
        XCTAssertEqual(args.numWarmupSteps(totalSteps: 6), 2, "6 * 0.3 = 1.7999999999999998 rounds up")
        args.warmupSteps = 0.07
        XCTAssertEqual(args.numWarmupSteps(totalSteps: 100), 8, "100 * 0.07 = 7.000000000000001 rounds up to 8 (Python: math.ceil)")
        args.warmupSteps = 2.7
        XCTAssertEqual(args.numWarmupSteps(totalSteps: 100), 2, "a count is truncated")
        args.warmupSteps = 1
        XCTAssertEqual(args.numWarmupSteps(totalSteps: 100), 1, "1.0 is one step, not a ratio")
        XCTAssertThrowsError(try SchedulerType(name: "polynomial")) {
            let text = "\($0)"
            XCTAssertTrue(text.contains("lr_scheduler_type") && text.contains("polynomial") && text.contains("constant_with_warmup"), text)
        }
        XCTAssertEqual(try SchedulerType(name: "cosine"), .cosine)
    }

    // MARK: clipping

    /// The script's clipping parameters: gradients `a` [3] and `b` [2, 2]; the third has none.
    func clipNet(a: [Float] = [0.5, -1.5, 2.0], b: [Float] = [0.25, 3.0, -0.75, 1.0]) -> NamedParameters {
        let net = NamedParameters([("a", .weight(fanIn: 3)), ("b", .weight(fanIn: 2)), ("c", .bias)])
        net.grads[0] = try! Tensor(shape: [3], scalars: a)
        net.values[1] = Tensor(zeros: [2, 2])
        net.grads[1] = try! Tensor(shape: [2, 2], scalars: b)
        return net
    }

    /// torch's norms are float32 sums in its own order and can be an ulp off the exactly rounded
    /// norm computed here; the coefficient arithmetic (`(1 / (total + 1e-6)) * max_norm` in float32,
    /// clamped at 1, multiplied in also when 1) is checked bit for bit on an exact total (5, 12 → 13).
    func testClipGradNormMatchesTorch() throws {
        let exact = clipNet(a: [3, -4, 0], b: [0, 12, 0, 0])
        XCTAssertEqual(try clipGradNorm(exact, maxNorm: 1.0), 13)
        XCTAssertEqual(exact.grads[0].scalars, [0.23076922, -0.3076923, 0.0])
        XCTAssertEqual(exact.grads[1].scalars, [0.0, 0.92307687, 0.0, 0.0])
        XCTAssertEqual(exact.grads[2].count, 0, "no gradient stays none")
        XCTAssertEqual(exact.values[0].scalars, [0, 0], "parameters untouched")
        let small = clipNet(a: [3, -4, 0], b: [0, 12, 0, 0])
        XCTAssertEqual(try clipGradNorm(small, maxNorm: 0.17), 13)
        XCTAssertEqual(small.grads[0].scalars, [0.039230768, -0.05230769, 0.0], "(1 / x) * max_norm, not max_norm / x")
        XCTAssertEqual(small.grads[1].scalars, [0.0, 0.15692307, 0.0, 0.0])

        let active = clipNet()
        let total = try clipGradNorm(active, maxNorm: 1.0)
        XCTAssertLessThanOrEqual(ulps(Float(total), 4.1382365), 1, "torch: 4.1382365")
        XCTAssertEqual(total, Double(Float(17.125.squareRoot())), "the exactly rounded norm")
        let coef = 1 / (Float(total) + Float(1e-6))
        XCTAssertEqual(active.grads[0].scalars, [0.5, -1.5, 2.0].map { $0 * coef })
        for (a, b) in zip(active.grads[0].scalars + active.grads[1].scalars,
                          [0.12082439, -0.36247316, 0.48329756, 0.060412195, 0.7249463, -0.18123658, 0.24164878] as [Float]) {
            XCTAssertLessThanOrEqual(ulps(a, b), 2, "\(a) vs torch \(b)")
        }

        for net in [clipNet(), clipNet(a: [3, -4, 0], b: [0, 12, 0, 0])] {
            let before = net.grads.map(\.scalars)
            try clipGradNorm(net, maxNorm: 100)
            XCTAssertEqual(net.grads.map(\.scalars), before, "inactive: times 1")
        }
        XCTAssertEqual(try clipGradNorm(clipNet(a: [3, -4, 0], b: [0, 12, 0, 0]), maxNorm: .infinity), 13, "only measures")
        XCTAssertEqual(try clipGradNorm(NamedParameters([("x", .bias)]), maxNorm: 1), 0, "no gradients")
        XCTAssertThrowsError(try clipGradNorm(clipNet(), maxNorm: -1))
    }

    func testZeroAndScaleGradients() throws {
        let net = clipNet()
        let storage = net.grads[1].unsafePointer
        try scaleGradients(net, by: 0.5)
        XCTAssertEqual(net.grads[1].scalars, [0.125, 1.5, -0.375, 0.5])
        try zeroGradients(net)
        XCTAssertEqual(net.grads[0].scalars, [0, 0, 0])
        XCTAssertEqual(net.grads[1].scalars, [0, 0, 0, 0])
        XCTAssertEqual(net.grads[1].unsafePointer, storage, "zeroed in place")
        XCTAssertEqual(net.grads[2].count, 0)
    }

    // MARK: label smoothing

    static let smoothingLogits = try! Tensor(shape: [3, 4], scalars: [1.0, -0.5, 2.0, 0.25, 0, 0, 0, 0, 3.0, 1.0, -2.0, 0.5])

    func testLabelSmoothingMatchesTransformers() throws {
        let cases: [(Int?, Float, [Float])] = [
            (nil, 0.5278674, [0.100781605, 0.012776543, -0.15456863, 0.041010443, 0, 0, 0, 0, -0.054056097, 0.04277686, -0.009747927, 0.021027109]),
            (5, 0.21114695, [0.040312644, 0.0051106177, -0.06182745, 0.016404178, 0, 0, 0, 0, -0.021622438, 0.017110744, -0.0038991706, 0.008410844]),
        ]
        for (items, loss, gradient) in cases {
            let r = try LabelSmoother(epsilon: 0.1)(logits: Self.smoothingLogits, labels: [2, -100, 0], numItemsInBatch: items)
            XCTAssertEqual(r.loss, loss, accuracy: 2e-7, "num_items_in_batch \(String(describing: items))")
            XCTAssertEqual(r.gradient.shape, [3, 4])
            // torch sums in float32: its gradients are within 1e-7 of these double-summed ones.
            for (a, b) in zip(r.gradient.scalars, gradient) { XCTAssertEqual(a, b, accuracy: 1e-7) }
            XCTAssertEqual(Array(r.gradient.scalars[4..<8]), [0, 0, 0, 0], "ignored row")
        }
    }

    func testLabelSmoothingEdgeCases() throws {
        // ε = 0 is plain cross-entropy.
        let plain = try LabelSmoother(epsilon: 0)(logits: Self.smoothingLogits, labels: [2, -100, 0])
        XCTAssertEqual(plain.loss, try Losses.crossEntropy(logits: Self.smoothingLogits, labels: [2, -100, 0]), accuracy: 1e-7)
        // Each labelled row's gradient sums to 0 (softmax minus a distribution).
        let r = try LabelSmoother(epsilon: 0.3)(logits: Self.smoothingLogits, labels: [1, 3, 0])
        for row in 0..<3 { XCTAssertEqual(r.gradient.scalars[(row * 4)..<(row * 4 + 4)].reduce(0, +), 0, accuracy: 1e-7) }
        XCTAssertTrue(try LabelSmoother()(logits: Self.smoothingLogits, labels: [-100, -100, -100]).loss.isNaN, "0/0 as torch")
        XCTAssertThrowsError(try LabelSmoother()(logits: Self.smoothingLogits, labels: [4, 0, 0])) { XCTAssertTrue("\($0)".contains("label 4 of item 0"), "\($0)") }
        XCTAssertThrowsError(try LabelSmoother()(logits: Self.smoothingLogits, labels: [0, -1, 0])) { XCTAssertTrue("\($0)".contains("label -1 of item 1"), "\($0)") }
        XCTAssertThrowsError(try LabelSmoother()(logits: Self.smoothingLogits, labels: [0, 0]))
    }

    // MARK: TrainingArguments

    func testTrainingArgumentsDefaultsAndDecoding() throws {
        let defaults = try JSONDecoder().decode(TrainingArguments.self, from: Data("{}".utf8))
        XCTAssertEqual(defaults, TrainingArguments())
        XCTAssertEqual(defaults.outputDir, "trainer_output")
        XCTAssertEqual(defaults.learningRate, 5e-5); XCTAssertEqual(defaults.weightDecay, 0)
        XCTAssertEqual(defaults.adamBeta1, 0.9); XCTAssertEqual(defaults.adamBeta2, 0.999); XCTAssertEqual(defaults.adamEpsilon, 1e-8)
        XCTAssertEqual(defaults.maxGradNorm, 1); XCTAssertEqual(defaults.numTrainEpochs, 3); XCTAssertEqual(defaults.maxSteps, -1)
        XCTAssertEqual(defaults.lrSchedulerType, .linear); XCTAssertEqual(defaults.warmupSteps, 0)
        XCTAssertEqual(defaults.optim, .adamwTorchFused)
        XCTAssertEqual(defaults.perDeviceTrainBatchSize, 8); XCTAssertEqual(defaults.perDeviceEvalBatchSize, 8)
        XCTAssertEqual(defaults.gradientAccumulationSteps, 1); XCTAssertEqual(defaults.seed, 42)
        XCTAssertEqual(defaults.labelSmoothingFactor, 0); XCTAssertEqual(defaults.loggingSteps, 500)
        XCTAssertNil(defaults.evalSteps); XCTAssertEqual(defaults.saveSteps, 500); XCTAssertNil(defaults.saveTotalLimit)
        XCTAssertFalse(defaults.loadBestModelAtEnd); XCTAssertNil(defaults.metricForBestModel)
        XCTAssertEqual(defaults.evalStrategy, .no); XCTAssertEqual(defaults.saveStrategy, .steps)
        XCTAssertFalse(defaults.dataloaderDropLast)
        XCTAssertNoThrow(try defaults.validate())

        // An excerpt of a transformers to_json_string() dump, with keys this package does not read.
        let dump = """
        {"output_dir": "runs/a", "do_train": false, "per_device_train_batch_size": 32, "num_train_epochs": 2.0,
         "max_steps": -1, "learning_rate": 0.0001, "lr_scheduler_type": "cosine", "lr_scheduler_kwargs": null,
         "warmup_steps": 0.1, "optim": "adamw_torch", "weight_decay": 0.05, "gradient_accumulation_steps": 4,
         "max_grad_norm": 1.0, "eval_strategy": "steps", "eval_steps": null, "logging_steps": 50,
         "save_strategy": "steps", "save_steps": 100, "save_total_limit": 2, "seed": 7.0, "fsdp": [],
         "load_best_model_at_end": true, "metric_for_best_model": null, "report_to": ["none"]}
        """
        let a = try JSONDecoder().decode(TrainingArguments.self, from: Data(dump.utf8))
        XCTAssertEqual(a.outputDir, "runs/a"); XCTAssertEqual(a.perDeviceTrainBatchSize, 32); XCTAssertEqual(a.seed, 7)
        XCTAssertEqual(a.lrSchedulerType, .cosine); XCTAssertEqual(a.optim, .adamwTorch); XCTAssertEqual(a.warmupSteps, 0.1)
        XCTAssertEqual(a.resolvedEvalSteps, 50, "eval_steps falls back to logging_steps")
        XCTAssertEqual(a.resolvedMetricForBestModel, "loss"); XCTAssertEqual(a.resolvedGreaterIsBetter, false)
        XCTAssertNoThrow(try a.validate())
        let again = try JSONDecoder().decode(TrainingArguments.self, from: JSONEncoder().encode(a))
        XCTAssertEqual(again, a)
        let keys = try JSONSerialization.jsonObject(with: JSONEncoder().encode(a)) as! [String: Any]
        XCTAssertTrue(keys["eval_steps"] is NSNull, "unset optionals are written as null")
        XCTAssertEqual(keys["lr_scheduler_type"] as? String, "cosine")

        func decodeError(_ json: String) -> String {
            do { _ = try JSONDecoder().decode(TrainingArguments.self, from: Data(json.utf8)); return "no error" } catch { return "\(error)" }
        }
        XCTAssertTrue(decodeError(#"{"lr_scheduler_type": "cosine_with_restarts"}"#).contains("linear"))
        XCTAssertTrue(decodeError(#"{"optim": "sgd"}"#).contains("adamw_torch_fused"))
        XCTAssertTrue(decodeError(#"{"save_strategy": "never"}"#).contains("save_strategy"))
        XCTAssertTrue(decodeError(#"{"per_device_train_batch_size": 8.5}"#).contains("per_device_train_batch_size"))
        XCTAssertTrue(decodeError(#"{"warmup_ratio": 0.1}"#).contains("warmup_ratio"))
        XCTAssertEqual(decodeError(#"{"warmup_ratio": 0.0}"#), "no error", "transformers 4 dumps always hold warmup_ratio")
    }

    func testTrainingArgumentsValidation() throws {
        func error(_ edit: (inout TrainingArguments) -> Void) -> String {
            var a = TrainingArguments()
            edit(&a)
            do { try a.validate(); return "valid" } catch { return "\(error)" }
        }
        XCTAssertTrue(error { $0.learningRate = -1e-3 }.contains("`learning_rate`"))
        XCTAssertTrue(error { $0.learningRate = .nan }.contains("`learning_rate`"))
        XCTAssertTrue(error { $0.weightDecay = -0.1 }.contains("`weight_decay`"))
        XCTAssertTrue(error { $0.adamBeta1 = 1 }.contains("`adam_beta1`"))
        XCTAssertTrue(error { $0.adamBeta2 = -0.5 }.contains("`adam_beta2`"))
        XCTAssertTrue(error { $0.adamEpsilon = .infinity }.contains("`adam_epsilon`"))
        XCTAssertTrue(error { $0.maxGradNorm = -1 }.contains("`max_grad_norm`"))
        XCTAssertTrue(error { $0.numTrainEpochs = .nan }.contains("`num_train_epochs`"))
        XCTAssertTrue(error { $0.warmupSteps = -1 }.contains("`warmup_steps`"))
        XCTAssertTrue(error { $0.perDeviceTrainBatchSize = 0 }.contains("`per_device_train_batch_size`"))
        XCTAssertTrue(error { $0.perDeviceEvalBatchSize = 0 }.contains("`per_device_eval_batch_size`"))
        XCTAssertTrue(error { $0.gradientAccumulationSteps = 0 }.contains("`gradient_accumulation_steps`"))
        XCTAssertTrue(error { $0.labelSmoothingFactor = 1.5 }.contains("`label_smoothing_factor`"))
        XCTAssertTrue(error { $0.loggingSteps = 0 }.contains("`logging_steps`"))
        XCTAssertTrue(error { $0.saveSteps = 12.5 }.contains("`save_steps`"))
        XCTAssertTrue(error { $0.saveTotalLimit = -1 }.contains("`save_total_limit`"))
        XCTAssertTrue(error { $0.loadBestModelAtEnd = true }.contains("`load_best_model_at_end`"))
        XCTAssertTrue(error { $0.loadBestModelAtEnd = true; $0.evalStrategy = .epoch }.contains("`load_best_model_at_end`"))
        XCTAssertTrue(error { $0.loadBestModelAtEnd = true; $0.evalStrategy = .steps; $0.evalSteps = 30 }.contains("`save_steps`"))
        XCTAssertEqual(error { $0.loadBestModelAtEnd = true; $0.evalStrategy = .steps; $0.evalSteps = 100 }, "valid")
        XCTAssertEqual(error { $0.maxGradNorm = 0; $0.loggingStrategy = .no; $0.loggingSteps = 0 }, "valid")
    }

    /// `Trainer.set_initial_training_values` for the cases of the script above.
    func testTrainingLength() throws {
        // (examples, batch, accumulation, epochs, max_steps, drop_last) → (epochs, update steps per epoch,
        // batches per epoch, max_steps) as the Trainer printed them.
        let cases: [(Int, Int, Int, Double, Int, Bool, [Int])] = [
            (10, 3, 2, 3.0, -1, false, [3, 2, 4, 6]), (10, 3, 2, 3.0, -1, true, [3, 2, 3, 6]),
            (9, 3, 4, 3.0, -1, false, [3, 1, 3, 3]), (10, 3, 1, 2.5, -1, false, [3, 4, 4, 10]),
            (100, 8, 3, 1.0, -1, false, [1, 5, 13, 5]), (10, 3, 2, 3.0, 7, false, [4, 2, 4, 7]),
            (5, 8, 4, 0.3, -1, false, [1, 1, 1, 1]), (10, 3, 2, 3.0, 0, false, [3, 2, 4, 0]),
        ]
        for (n, batch, accumulation, epochs, maxSteps, drop, expected) in cases {
            var a = TrainingArguments()
            a.perDeviceTrainBatchSize = batch; a.gradientAccumulationSteps = accumulation
            a.numTrainEpochs = epochs; a.maxSteps = maxSteps; a.dataloaderDropLast = drop
            let l = try a.trainingLength(numExamples: n)
            XCTAssertEqual([l.numTrainEpochs, l.updateStepsPerEpoch, l.batchesPerEpoch, l.maxSteps], expected, "\(n) examples, batch \(batch), GA \(accumulation)")
            XCTAssertEqual(try a.numTrainingSteps(numExamples: n), expected[3])
            let remainder = l.batchesPerEpoch % accumulation
            XCTAssertEqual(l.lastStepMicroBatches, remainder == 0 ? accumulation : remainder)
        }
        var a = TrainingArguments()
        a.perDeviceTrainBatchSize = 3; a.gradientAccumulationSteps = 4
        XCTAssertEqual(try a.trainingLength(numExamples: 9).lastStepMicroBatches, 3, "the epoch's 3 batches make one step")
        a.loggingSteps = 0.25; a.evalStrategy = .steps; a.evalSteps = 0.5; a.saveSteps = 2
        let s = a.computeSteps(maxSteps: 10)
        XCTAssertEqual(s.logging, 3); XCTAssertEqual(s.eval, 5); XCTAssertEqual(s.save, 2)
        a.dataloaderDropLast = true; a.perDeviceTrainBatchSize = 16
        XCTAssertThrowsError(try a.trainingLength(numExamples: 9)) { XCTAssertTrue("\($0)".contains("dataloader_drop_last"), "\($0)") }
        XCTAssertThrowsError(try a.trainingLength(numExamples: 0))
    }

    static let transformersNotDecayed = [
        "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.bias",
        "cvt.encoder.stages.0.embedding.convolution_embeddings.normalization.weight",
        "cvt.encoder.stages.0.embedding.convolution_embeddings.normalization.bias",
        "cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_query.convolution_projection.normalization.bias",
        "cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_key.convolution_projection.normalization.bias",
        "cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_value.convolution_projection.normalization.bias",
        "cvt.encoder.stages.0.layers.0.attention.attention.projection_query.bias",
        "cvt.encoder.stages.0.layers.0.attention.attention.projection_key.bias",
        "cvt.encoder.stages.0.layers.0.attention.attention.projection_value.bias",
        "cvt.encoder.stages.0.layers.0.attention.output.dense.bias",
        "cvt.encoder.stages.0.layers.0.intermediate.dense.bias",
        "cvt.encoder.stages.0.layers.0.output.dense.bias",
        "cvt.encoder.stages.0.layers.0.layernorm_before.weight",
        "cvt.encoder.stages.0.layers.0.layernorm_before.bias",
        "cvt.encoder.stages.0.layers.0.layernorm_after.weight",
        "cvt.encoder.stages.0.layers.0.layernorm_after.bias",
        "cvt.encoder.stages.1.embedding.convolution_embeddings.projection.bias",
        "cvt.encoder.stages.1.embedding.convolution_embeddings.normalization.weight",
        "cvt.encoder.stages.1.embedding.convolution_embeddings.normalization.bias",
        "cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_query.convolution_projection.normalization.bias",
        "cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_key.convolution_projection.normalization.bias",
        "cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_value.convolution_projection.normalization.bias",
        "cvt.encoder.stages.1.layers.0.attention.attention.projection_query.bias",
        "cvt.encoder.stages.1.layers.0.attention.attention.projection_key.bias",
        "cvt.encoder.stages.1.layers.0.attention.attention.projection_value.bias",
        "cvt.encoder.stages.1.layers.0.attention.output.dense.bias",
        "cvt.encoder.stages.1.layers.0.intermediate.dense.bias",
        "cvt.encoder.stages.1.layers.0.output.dense.bias",
        "cvt.encoder.stages.1.layers.0.layernorm_before.weight",
        "cvt.encoder.stages.1.layers.0.layernorm_before.bias",
        "cvt.encoder.stages.1.layers.0.layernorm_after.weight",
        "cvt.encoder.stages.1.layers.0.layernorm_after.bias",
        "cvt.encoder.stages.1.layers.1.attention.attention.convolution_projection_query.convolution_projection.normalization.bias",
        "cvt.encoder.stages.1.layers.1.attention.attention.convolution_projection_key.convolution_projection.normalization.bias",
        "cvt.encoder.stages.1.layers.1.attention.attention.convolution_projection_value.convolution_projection.normalization.bias",
        "cvt.encoder.stages.1.layers.1.attention.attention.projection_query.bias",
        "cvt.encoder.stages.1.layers.1.attention.attention.projection_key.bias",
        "cvt.encoder.stages.1.layers.1.attention.attention.projection_value.bias",
        "cvt.encoder.stages.1.layers.1.attention.output.dense.bias",
        "cvt.encoder.stages.1.layers.1.intermediate.dense.bias",
        "cvt.encoder.stages.1.layers.1.output.dense.bias",
        "cvt.encoder.stages.1.layers.1.layernorm_before.weight",
        "cvt.encoder.stages.1.layers.1.layernorm_before.bias",
        "cvt.encoder.stages.1.layers.1.layernorm_after.weight",
        "cvt.encoder.stages.1.layers.1.layernorm_after.bias",
        "cvt.encoder.stages.2.embedding.convolution_embeddings.projection.bias",
        "cvt.encoder.stages.2.embedding.convolution_embeddings.normalization.weight",
        "cvt.encoder.stages.2.embedding.convolution_embeddings.normalization.bias",
        "cvt.encoder.stages.2.layers.0.attention.attention.convolution_projection_query.convolution_projection.normalization.bias",
        "cvt.encoder.stages.2.layers.0.attention.attention.convolution_projection_key.convolution_projection.normalization.bias",
        "cvt.encoder.stages.2.layers.0.attention.attention.convolution_projection_value.convolution_projection.normalization.bias",
        "cvt.encoder.stages.2.layers.0.attention.attention.projection_query.bias",
        "cvt.encoder.stages.2.layers.0.attention.attention.projection_key.bias",
        "cvt.encoder.stages.2.layers.0.attention.attention.projection_value.bias",
        "cvt.encoder.stages.2.layers.0.attention.output.dense.bias",
        "cvt.encoder.stages.2.layers.0.intermediate.dense.bias",
        "cvt.encoder.stages.2.layers.0.output.dense.bias",
        "cvt.encoder.stages.2.layers.0.layernorm_before.weight",
        "cvt.encoder.stages.2.layers.0.layernorm_before.bias",
        "cvt.encoder.stages.2.layers.0.layernorm_after.weight",
        "cvt.encoder.stages.2.layers.0.layernorm_after.bias",
        "cvt.encoder.stages.2.layers.1.attention.attention.convolution_projection_query.convolution_projection.normalization.bias",
        "cvt.encoder.stages.2.layers.1.attention.attention.convolution_projection_key.convolution_projection.normalization.bias",
        "cvt.encoder.stages.2.layers.1.attention.attention.convolution_projection_value.convolution_projection.normalization.bias",
        "cvt.encoder.stages.2.layers.1.attention.attention.projection_query.bias",
        "cvt.encoder.stages.2.layers.1.attention.attention.projection_key.bias",
        "cvt.encoder.stages.2.layers.1.attention.attention.projection_value.bias",
        "cvt.encoder.stages.2.layers.1.attention.output.dense.bias",
        "cvt.encoder.stages.2.layers.1.intermediate.dense.bias",
        "cvt.encoder.stages.2.layers.1.output.dense.bias",
        "cvt.encoder.stages.2.layers.1.layernorm_before.weight",
        "cvt.encoder.stages.2.layers.1.layernorm_before.bias",
        "cvt.encoder.stages.2.layers.1.layernorm_after.weight",
        "cvt.encoder.stages.2.layers.1.layernorm_after.bias",
        "cvt.encoder.stages.2.layers.2.attention.attention.convolution_projection_query.convolution_projection.normalization.bias",
        "cvt.encoder.stages.2.layers.2.attention.attention.convolution_projection_key.convolution_projection.normalization.bias",
        "cvt.encoder.stages.2.layers.2.attention.attention.convolution_projection_value.convolution_projection.normalization.bias",
        "cvt.encoder.stages.2.layers.2.attention.attention.projection_query.bias",
        "cvt.encoder.stages.2.layers.2.attention.attention.projection_key.bias",
        "cvt.encoder.stages.2.layers.2.attention.attention.projection_value.bias",
        "cvt.encoder.stages.2.layers.2.attention.output.dense.bias",
        "cvt.encoder.stages.2.layers.2.intermediate.dense.bias",
        "cvt.encoder.stages.2.layers.2.output.dense.bias",
        "cvt.encoder.stages.2.layers.2.layernorm_before.weight",
        "cvt.encoder.stages.2.layers.2.layernorm_before.bias",
        "cvt.encoder.stages.2.layers.2.layernorm_after.weight",
        "cvt.encoder.stages.2.layers.2.layernorm_after.bias",
        "layernorm.weight",
        "layernorm.bias",
        "classifier.bias"
    ]
}
