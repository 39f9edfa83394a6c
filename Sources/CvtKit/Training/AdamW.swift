import Foundation

/// An optimizer state or call that does not fit the model, naming the parameter.
public struct OptimizerError: Error, CustomStringConvertible, LocalizedError, Equatable {
    /// What is wrong, naming the parameter or setting.
    public let message: String
    /// Creates an error with `message`.
    public init(_ message: String) { self.message = message }
    /// The message.
    public var description: String { message }
    /// The same text as `description`, for `LocalizedError`.
    public var errorDescription: String? { description }
}

/// `torch.optim.AdamW` (torch 2.13) on float32 CPU parameters, with transformers' two parameter
/// groups: `weightDecay` for the parameters `decayParameterNames` selects, none for the others.
///
/// Each step reproduces torch's float32 arithmetic operation by operation:
/// - `fused == false` (`optim="adamw_torch"`): `_single_tensor_adam` in torch/optim/adam.py, one
///   tensor op at a time. Every rounding matches except `exp_avg_sq.sqrt()`, which torch's CPU build
///   routes through MKL's vector sqrt (not correctly rounded: about 1 value in 6 is 1 ulp off); the
///   denominator here uses the exact square root, so some parameters (up to ~10% at large learning
///   rates) end up an ulp away from torch's.
/// - `fused == true` (`optim="adamw_torch_fused"`, transformers' default with torch ≥ 2.8):
///   ATen's fused CPU kernel (native/cpu/FusedAdamKernel.cpp), bit for bit on AVX2/AVX-512 builds.
public final class AdamW {
    /// β₁: decay of the first-moment estimate (`betas[0]`).
    public let beta1: Double
    /// β₂: decay of the second-moment estimate (`betas[1]`).
    public let beta2: Double
    /// ε added to the denominator.
    public let eps: Double
    /// Decoupled weight decay applied to the decayed group (`weight_decay`).
    public let weightDecay: Double
    /// The first parameter (in the model's order) that the last `step` left with a weight that is
    /// not finite (an overflowing update), or nil: the update is checked as it is written.
    public private(set) var nonFiniteParameter: String?

    /// Whether steps follow ATen's fused CPU kernel (`adamw_torch_fused`) instead of the per-op path (`adamw_torch`).
    public let fused: Bool
    /// Parameters in the decayed group (`Trainer.get_decay_parameter_names`); the others get no decay.
    public let decayParameterNames: Set<String>

    /// Per-parameter state, created at the parameter's first step (as torch's lazy `_init_group`).
    public struct ParameterState: Equatable {
        /// Optimizer steps taken with this parameter (torch keeps a float32 scalar tensor).
        public var step: Int
        /// `exp_avg`: the first-moment estimate, the parameter's shape.
        public var expAvg: Tensor
        /// `exp_avg_sq`: the second-moment estimate, the parameter's shape.
        public var expAvgSq: Tensor

        /// Equal when the step counts and both moment tensors (shapes and values) are equal.
        public static func == (a: Self, b: Self) -> Bool {
            a.step == b.step && a.expAvg.shape == b.expAvg.shape && a.expAvg.scalars == b.expAvg.scalars
                && a.expAvgSq.shape == b.expAvgSq.shape && a.expAvgSq.scalars == b.expAvgSq.scalars
        }
    }

    /// State by parameter name; parameters that never had a gradient have none.
    public private(set) var state: [String: ParameterState] = [:]

    /// `betas`, `eps` and `weight_decay` as `torch.optim.AdamW` takes them (its default decay is
    /// 0.01; transformers passes `args.weight_decay`). `decayParameterNames`: the decayed group.
    public init(decayParameterNames: Set<String>, betas: (Double, Double) = (0.9, 0.999), eps: Double = 1e-8,
                weightDecay: Double = 0.01, fused: Bool = false) throws {
        // The checks torch.optim.AdamW's constructor makes.
        guard eps >= 0 else { throw OptimizerError("AdamW: invalid epsilon value \(eps)") }
        guard betas.0 >= 0 && betas.0 < 1 else { throw OptimizerError("AdamW: invalid beta parameter at index 0: \(betas.0)") }
        guard betas.1 >= 0 && betas.1 < 1 else { throw OptimizerError("AdamW: invalid beta parameter at index 1: \(betas.1)") }
        guard weightDecay >= 0 else { throw OptimizerError("AdamW: invalid weight_decay value \(weightDecay)") }
        beta1 = betas.0; beta2 = betas.1; self.eps = eps; self.weightDecay = weightDecay; self.fused = fused
        self.decayParameterNames = decayParameterNames
    }

    /// The optimizer `Trainer.create_optimizer` builds for `model`: decayed group from
    /// `get_decay_parameter_names`, hyper-parameters and `fused` from the arguments.
    public convenience init(model: Module, arguments a: TrainingArguments) throws {
        try self.init(decayParameterNames: Set(Self.decayParameterNames(model)), betas: (a.adamBeta1, a.adamBeta2),
                      eps: a.adamEpsilon, weightDecay: a.weightDecay, fused: a.optim == .adamwTorchFused)
    }

    // MARK: decay selection

    /// transformers' `Trainer.get_decay_parameter_names` patterns (trainer.py), searched (not
    /// matched) anywhere in the lower-cased full parameter name.
    public static let forbiddenNamePatterns = [#"bias"#, #"layernorm"#, #"rmsnorm"#, #"(?:^|\.)norm(?:$|\.)"#, #"_norm(?:$|\.)"#]

    /// The trainable parameters that get weight decay, in visiting order: all but those of
    /// `nn.LayerNorm` modules (kinds `.normWeight` / `.normBias`) and those whose lower-cased name
    /// contains a match of `forbiddenNamePatterns` (`get_parameter_names` in trainer_pt_utils.py).
    /// BatchNorm is not a forbidden module type, and CvT's `normalization` matches no pattern, so
    /// BatchNorm weights are decayed (their biases are not: "bias"); so is `cls_token`.
    public static func decayParameterNames(_ model: Module) throws -> [String] {
        let patterns = try forbiddenNamePatterns.map { try NSRegularExpression(pattern: $0) }
        let names = TrainableNames()
        try model.visitParameters(names, prefix: "")
        return names.entries.filter { name, kind in
            if kind == .normWeight || kind == .normBias { return false }
            let lower = name.lowercased()
            let range = NSRange(lower.startIndex..., in: lower)
            return !patterns.contains { $0.firstMatch(in: lower, range: range) != nil }
        }.map(\.name)
    }

    /// Names and kinds of the trainable parameters (running statistics are buffers).
    final class TrainableNames: ParameterVisitor {
        var entries: [(name: String, kind: ParameterKind)] = []
        var readsOnly: Bool { true }
        var readsValues: Bool { false }
        func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {
            if kind != .runningMean && kind != .runningVar { entries.append((key, kind)) }
        }
    }

    // MARK: step

    /// One `optimizer.step()` at learning rate `learningRate` (the scheduler's value for this
    /// step): updates every trainable parameter that has a gradient (a zero-sized gradient means
    /// none, as torch skips parameters whose `.grad` is None).
    public func step(_ model: Module, learningRate: Double) throws {
        guard learningRate >= 0 else { throw OptimizerError("AdamW: invalid learning rate \(learningRate)") }
        nonFiniteParameter = nil
        let visitor = StepVisitor(self, learningRate: learningRate)
        try model.visitParameters(visitor, prefix: "")
        model.parametersDidChange()
    }

    final class StepVisitor: ParameterVisitor {
        let optimizer: AdamW
        let lr: Double
        init(_ optimizer: AdamW, learningRate: Double) { self.optimizer = optimizer; lr = learningRate }
        /// Buffers, and parameters a module hands without a gradient: nothing to do.
        func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {}
        func visit(_ key: String, _ tensor: inout Tensor, gradient: inout Tensor, kind: ParameterKind) throws {
            try optimizer.update(key, &tensor, gradient: gradient, learningRate: lr)
        }
    }

    func update(_ key: String, _ param: inout Tensor, gradient: Tensor, learningRate lr: Double) throws {
        if gradient.count == 0 { return }
        guard gradient.shape == param.shape else {
            throw OptimizerError("AdamW: \(key) has shape \(param.shape) but its gradient \(gradient.shape)")
        }
        var s = state[key] ?? ParameterState(step: 0, expAvg: Tensor(zeros: param.shape), expAvgSq: Tensor(zeros: param.shape))
        guard s.expAvg.shape == param.shape, s.expAvgSq.shape == param.shape else {
            throw OptimizerError("AdamW: the state of \(key) has shape \(s.expAvg.shape) but the parameter \(param.shape)")
        }
        state[key] = nil  // drop the dictionary's reference so the moments are updated in place
        s.step += 1
        let wd = decayParameterNames.contains(key) ? weightDecay : 0
        let c = Coefficients(lr: lr, beta1: beta1, beta2: beta2, eps: eps, weightDecay: wd, step: s.step, fused: fused)
        let n = param.count
        // The C kernel (vectorised, threaded) runs the same operations; the fused kernel's last
        // `n % 8` elements round differently and run here.
        let body = fused ? n - n % 8 : n
        param.withUnsafeMutableBufferPointer { p in
            s.expAvg.withUnsafeMutableBufferPointer { m in
                s.expAvgSq.withUnsafeMutableBufferPointer { v in
                    gradient.withUnsafeBufferPointer { g in
                        var bad = false
                        if body > 0 {
                            bad = Kernels.adamW(param: p.baseAddress!, grad: g.baseAddress!, expAvg: m.baseAddress!, expAvgSq: v.baseAddress!,
                                                count: body, lr: lr, beta1: beta1, beta2: beta2, eps: eps, weightDecay: wd, step: s.step, fused: fused)
                        }
                        if body < n {
                            Self.fusedUpdate(p, m, v, g, body..<n, n, c)
                            bad = bad || p[body..<n].contains { !$0.isFinite }
                        }
                        if bad && nonFiniteParameter == nil { nonFiniteParameter = key }
                    }
                }
            }
        }
        state[key] = s
    }

    /// The scalars of one step, rounded to float32 where torch rounds them.
    struct Coefficients {
        let hasDecay: Bool
        /// `1 - lr * weight_decay` (double), as float.
        let decayFactor: Float
        /// `1 - beta1`, the lerp weight, as float; lerp switches formula at |weight| 0.5.
        let lerpWeight: Float
        let beta2: Float
        /// `1 - beta2` as float.
        let sqWeight: Float
        /// `sqrt(1 - beta2^step)` (double), as float.
        let biasCorrection2Sqrt: Float
        let eps: Float
        /// `-lr / (1 - beta1^step)` (double), as float.
        let negStepSize: Float

        init(lr: Double, beta1: Double, beta2: Double, eps: Double, weightDecay: Double, step: Int, fused: Bool) {
            hasDecay = weightDecay != 0
            decayFactor = Float(1 - lr * weightDecay)
            lerpWeight = Float(1 - beta1)
            self.beta2 = Float(beta2)
            sqWeight = Float(1 - beta2)
            // Python's `beta ** step` and C++'s std::pow are both libm pow on a float step count.
            let bc1 = 1 - pow(beta1, Double(step)), bc2 = 1 - pow(beta2, Double(step))
            // adam.py takes `bias_correction2 ** 0.5`, the fused kernel std::sqrt: pow(x, 0.5) and
            // sqrt(x) can differ in the last bit.
            biasCorrection2Sqrt = Float(fused ? bc2.squareRoot() : pow(bc2, 0.5))
            self.eps = Float(eps)
            negStepSize = Float(-(lr / bc1))
        }
    }

    /// `exp_avg.lerp_(grad, w)`: ATen's CPU lerp is a fused multiply-add, `m + w·(g − m)` for a
    /// small weight and `g − (g − m)(1 − w)` otherwise (native/Lerp.h, LerpKernel.cpp).
    @inline(__always) static func lerp(_ m: Float, _ g: Float, _ w: Float) -> Float {
        abs(w) < 0.5 ? m.addingProduct(w, g - m) : g.addingProduct(w - 1, g - m)
    }

    /// ATen's fused CPU kernel (`adam_math`, float32, ADAMW mode): the same operations, except that
    /// `exp_avg_sq * β2 + (1 - β2)·g·g` is compiled into one FMA over `(c·g)·g` in the vectorised
    /// body but into one over `exp_avg_sq * β2` in the last `n % 8` elements (the scalar epilogue
    /// the compiler leaves after vectorising the tail loop by 8).
    static func fusedUpdate(_ p: UnsafeMutableBufferPointer<Float>, _ m: UnsafeMutableBufferPointer<Float>,
                            _ v: UnsafeMutableBufferPointer<Float>, _ g: UnsafeBufferPointer<Float>, _ range: Range<Int>, _ n: Int,
                            _ c: Coefficients) {
        let body = n - n % 8
        for i in range {
            let gi = g[i]
            var pi = p[i]
            if c.hasDecay { pi = pi * c.decayFactor }
            let mi = lerp(m[i], gi, c.lerpWeight)
            let vi = i < body ? (v[i] * c.beta2).addingProduct(c.sqWeight * gi, gi)
                : ((c.sqWeight * gi) * gi).addingProduct(v[i], c.beta2)
            let denom = vi.squareRoot() / c.biasCorrection2Sqrt + c.eps
            p[i] = pi + (c.negStepSize * mi) / denom
            m[i] = mi
            v[i] = vi
        }
    }

    // MARK: state

    /// The state as named tensors, for saving: `<param>.exp_avg`, `<param>.exp_avg_sq` and
    /// `<param>.step` (a 0-dimensional float32 tensor, as torch's per-parameter `step`).
    public func stateDict() -> [String: Tensor] {
        var d: [String: Tensor] = [:]
        for (name, s) in state {
            d[name + ".exp_avg"] = s.expAvg
            d[name + ".exp_avg_sq"] = s.expAvgSq
            d[name + ".step"] = Tensor(zeros: [], value: Float(s.step))
        }
        return d
    }

    static let stateSuffixes = [".exp_avg_sq", ".exp_avg", ".step"]

    /// Replaces the state with one saved by `stateDict()`. Every parameter needs all three entries,
    /// matching moment shapes and a whole, positive step count. Shapes are checked against the
    /// model at the next `step`.
    public func loadStateDict(_ dict: [String: Tensor]) throws {
        var parts: [String: (m: Tensor?, v: Tensor?, step: Tensor?)] = [:]
        for (key, t) in dict {
            // ".exp_avg_sq" before ".exp_avg": the longer suffix decides.
            guard let suffix = Self.stateSuffixes.first(where: { key.hasSuffix($0) }), key.count > suffix.count else {
                throw OptimizerError("optimizer state: \(key) does not end in .exp_avg, .exp_avg_sq or .step")
            }
            let name = String(key.dropLast(suffix.count))
            var e = parts[name] ?? (nil, nil, nil)
            switch suffix {
            case ".exp_avg": e.m = t
            case ".exp_avg_sq": e.v = t
            default: e.step = t
            }
            parts[name] = e
        }
        var loaded: [String: ParameterState] = [:]
        for (name, e) in parts {
            guard let m = e.m, let v = e.v, let st = e.step else {
                let missing = [("exp_avg", e.m), ("exp_avg_sq", e.v), ("step", e.step)].filter { $0.1 == nil }.map { "\(name).\($0.0)" }
                throw OptimizerError("optimizer state: missing \(missing.joined(separator: ", "))")
            }
            guard m.shape == v.shape else {
                throw OptimizerError("optimizer state: \(name).exp_avg has shape \(m.shape) but \(name).exp_avg_sq \(v.shape)")
            }
            guard st.count == 1, let value = st.scalars.first, value >= 1, value == value.rounded(), value < 16_777_216 else {
                throw OptimizerError("optimizer state: \(name).step must be one whole number ≥ 1, got \(st.scalars.prefix(4))")
            }
            loaded[name] = ParameterState(step: Int(value), expAvg: m, expAvgSq: v)
        }
        state = loaded
    }
}
