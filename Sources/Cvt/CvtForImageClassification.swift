import CvtNN
import CvtTensor
import Foundation

/// Targets for the loss, by dtype as transformers distinguishes them (`CvtForImageClassification.forward`, `modeling_cvt.py`).
public enum Labels: Equatable, Sendable {
    /// int64 class indices `[B]` (also accepted for `num_labels == 1`, then compared as floats).
    case classIndices([Int])
    /// float targets: `[B]` or `[B, num_labels]` (regression or multi-label).
    case values(Tensor)

    /// Equal when both are class indices with the same values, or value tensors with the same shape and elements.
    public static func == (a: Labels, b: Labels) -> Bool {
        switch (a, b) {
        case let (.classIndices(x), .classIndices(y)): return x == y
        case let (.values(x), .values(y)): return x.shape == y.shape && x.scalars == y.scalars
        default: return false
        }
    }
}

/// Output of `CvtForImageClassification` (transformers' `ImageClassifierOutputWithNoAttention`,
/// plus the encoder's last hidden state and CLS value so one call gives everything).
public struct ImageClassifierOutput: Sendable {
    /// `[1]` when labels were given.
    public var loss: Tensor?
    /// `[B, num_labels]`, or the `[B, C_last]` pooled features when `num_labels == 0`.
    public var logits: Tensor
    /// `last_hidden_state`: the last stage's output `[B, C_last, H, W]` (NCHW, CLS removed).
    public var lastHiddenState: Tensor
    /// The last stage's CLS token after its last layer `[B, 1, C_last]` (the input of `layernorm` and the classifier); nil when the last stage has none.
    public var clsTokenValue: Tensor?
    /// `hidden_states`: one NCHW `[B, C_s, H_s, W_s]` per stage, when `outputHiddenStates` was set.
    public var hiddenStates: [Tensor]?
}

/// transformers' `CvtForImageClassification`: `cvt` encoder, `layernorm`, `classifier`.
/// Sendable: every call that computes or changes weights (`callAsFunction`, `logits`,
/// `forwardBackward`, `load`, `storeWeights`, `stateDict`) holds the model's engine for its
/// duration (`exclusively`), so tasks may share a model and take turns; its layers, reached
/// through `cvt`, are not guarded on their own.
public final class CvtForImageClassification: Module, @unchecked Sendable {
    private var _config: CvtConfig
    /// The config; `problemType` is inferred and written back on the first loss, as transformers does.
    public private(set) var config: CvtConfig {
        get { engine.exclusively { _config } }
        set { engine.exclusively { _config = newValue } }
    }
    /// `cvt`: the encoder (checkpoint keys `cvt.encoder.stages.…`).
    public let cvt: CvtModel
    /// `layernorm`: the LayerNorm applied to the CLS token (or the pooled features) before the classifier.
    public let layernorm: LayerNorm
    /// `nil` when `num_labels == 0` (identity head).
    public let classifier: Linear?

    /// A model initialised from scratch as transformers' `CvtForImageClassification(config)`
    /// (`CvtPreTrainedModel._init_weights`: truncated-normal weights with std `initializer_range`,
    /// zero biases, unit norm weights), from `seed`. `engine`: the engine to compute on (default:
    /// one of its own).
    public convenience init(config: CvtConfig, engine: Engine? = nil, seed: UInt64 = 0) throws {
        try self.init(zeroed: config, engine: engine)
        try visitParameters(RandomInitializer(seed: seed, initializerRange: Float(config.initializerRange)), prefix: "")
        parametersDidChange()
    }

    /// A model whose parameters are all zero, for a loader to fill.
    package init(zeroed config: CvtConfig, engine: Engine? = nil) throws {
        cvt = try CvtModel(config: config, engine: engine)
        _config = config
        let c = config.embedDim[config.numStages - 1]
        layernorm = LayerNorm(c)
        classifier = config.numLabels > 0 ? Linear(c, config.numLabels) : nil
    }

    /// A model with transformers' from-scratch initialisation (`CvtPreTrainedModel._init_weights`), seeded.
    public static func randomlyInitialized(config: CvtConfig, seed: UInt64 = 0, engine: Engine? = nil,
                                           weightStorage: ElementType = .float32) throws -> CvtForImageClassification {
        let m = try CvtForImageClassification(zeroed: config, engine: engine)
        try m.storeWeights(as: weightStorage)
        try m.visitParameters(RandomInitializer(seed: seed, initializerRange: Float(config.initializerRange)), prefix: "")
        m.parametersDidChange()
        return m
    }

    /// Visits every parameter under its transformers key (`cvt.…`, `layernorm.…`, `classifier.…`), each prefixed by `prefix`.
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        try cvt.visitParameters(v, prefix: joinKey(prefix, "cvt"))
        try layernorm.visitParameters(v, prefix: joinKey(prefix, "layernorm"))
        try classifier?.visitParameters(v, prefix: joinKey(prefix, "classifier"))
    }
    /// Rebuilds derived weight forms (folded BatchNorms, engine layouts) after parameters were replaced.
    public func parametersDidChange() { cvt.parametersDidChange() }

    /// Keeps every Linear weight in `type` (`Linear.storeWeight(as:)`): float16 or bfloat16 halve
    /// the weight memory. Convolutions, norms and biases (~4% of cvt-13) stay float32. Loading,
    /// saving or re-initializing restores float32 storage.
    /// Throws, changing nothing, when a weight does not fit float16, naming its key.
    public func storeWeights(as type: ElementType) throws {
        try exclusively { try storeAllWeights(as: type) }
    }

    private func storeAllWeights(as type: ElementType) throws {
        let layers = cvt.namedLinearLayers.map { ("cvt." + $0.key, $0.layer) } + (classifier.map { [("classifier", $0)] } ?? [])
        if type == .float16 {
            for (key, layer) in layers {
                if let bad = try layer.float16Overflow() {
                    throw TensorError("\(key).weight holds \(bad), outside float16's range (±65504); use float32 or bfloat16 storage")
                }
            }
        }
        for (_, layer) in layers { try layer.storeWeight(as: type) }
    }

    /// Bytes held by the parameters as stored (excluding the engine's packed convolution copies).
    public var parameterBytes: Int {
        let linears = cvt.linearLayers + (classifier.map { [$0] } ?? [])
        let counter = ParameterCounter()
        try? visitParameters(counter, prefix: "")
        let linearElements = linears.reduce(0) { $0 + $1.inFeatures * $1.outFeatures + ($1.bias?.count ?? 0) }
        return linears.reduce(0) { $0 + $1.parameterBytes } + (counter.count - linearElements) * 4
    }

    /// Loads every parameter from `source`, strictly: missing, unexpected or mis-shaped keys fail together.
    public func load(from source: TensorSource, sourceName: String) throws {
        try exclusively {
            let loader = StrictLoader(source: source, sourceName: sourceName)
            try visitParameters(loader, prefix: "")
            try loader.finish()
            parametersDidChange()
        }
    }

    /// The state dict, keyed and ordered as transformers' `state_dict()` (without `num_batches_tracked`).
    public func stateDict() throws -> (tensors: [String: Tensor], order: [String]) {
        try exclusively {
            let c = StateDictCollector()
            try visitParameters(c, prefix: "")
            return (c.tensors, c.order)
        }
    }

    /// The engine this model computes on: its own unless one was passed at creation. Models that
    /// share an engine share its thread count and take turns.
    public var engine: Engine {
        get { cvt.engine }
        set { cvt.engine = newValue }
    }

    private var _precision: ComputePrecision?
    /// The matmul precision of this model's calls; nil (the default) runs with its engine's. Set
    /// by `InferenceDType.apply(to:)`, so that models sharing an engine keep their own precision.
    public var precision: ComputePrecision? {
        get { engine.exclusively { _precision } }
        set { engine.exclusively { _precision = newValue } }
    }

    /// Runs `body` as one call on the model's engine, with the model's precision. Calls from other
    /// threads or tasks wait, so a model can be shared by them.
    public func exclusively<R>(_ body: () throws -> R) rethrows -> R {
        try engine.exclusively(precision: _precision, body)
    }

    /// `pixelValues`: `[B, num_channels, H, W]` float32 (any batch, any size the strides allow).
    public func callAsFunction(_ pixelValues: Tensor, labels: Labels? = nil, outputHiddenStates: Bool = false) throws -> ImageClassifierOutput {
        try exclusively {
            let (out, tokens) = try cvt.encode(pixelValues, outputHiddenStates: outputHiddenStates)
            let logits = try head(cls: out.clsTokenValue, tokens: tokens)
            var loss: Tensor?
            if let labels { loss = try Tensor(shape: [1], scalars: [computeLoss(logits: logits, labels: labels)]) }
            return ImageClassifierOutput(loss: loss, logits: logits, lastHiddenState: out.lastHiddenState,
                                         clsTokenValue: out.clsTokenValue, hiddenStates: out.hiddenStates)
        }
    }

    /// Only the logits `[B, num_labels]` (what classifying needs), faster when the last stage has
    /// a CLS token: the classifier reads only that token, so the last layer skips its query,
    /// attention output and MLP for the other tokens (on cvt-13, 7% of the FLOPs), and no hidden
    /// state is laid out. The same arithmetic on the CLS row as `self(pixelValues).logits`, in
    /// matmuls of other shapes, whose kernels may sum in another order: the logits agree to float32
    /// rounding (relative differences around 1e-7), not bit for bit.
    public func logits(_ pixelValues: Tensor) throws -> Tensor {
        try exclusively {
            guard cvt.hasFinalCLS else { return try self(pixelValues).logits }
            return try head(cls: cvt.encodeCLS(pixelValues), tokens: nil)
        }
    }

    /// LayerNorm, pooling and classifier: from the final CLS values `[B, 1, C]`, or, without a CLS,
    /// the mean of the last stage's normalized tokens `[B, T, C]`.
    private func head(cls: Tensor?, tokens: Tensor?) throws -> Tensor {
        let c = layernorm.dim
        guard let b = cls?.shape[0] ?? tokens?.shape[0] else { throw CvtInputError("internal: classifier head without input") }
        var pooled = Tensor(uninitialized: [b, c])
        if let cls {
            // The mean over the single CLS token is the token itself.
            layernorm(src: cls.unsafePointer, dst: pooled.unsafePointer, rows: b)
        } else if let tokens {
            // No CLS in the last stage: LayerNorm every patch token, then average (original CvT; the
            // reference only reaches this path with output_hidden_states; see `CvtModel.forward`).
            let t = tokens.shape[1]
            let normed = Tensor(uninitialized: [b * t, c])
            layernorm(src: tokens.unsafePointer, dst: normed.unsafePointer, rows: b * t)
            pooled = Tensor(zeros: [b, c])
            for i in 0..<b {
                let dst = pooled.unsafePointer + i * c
                for r in 0..<t { let row = normed.unsafePointer + (i * t + r) * c; for k in 0..<c { dst[k] += row[k] } }
                for k in 0..<c { dst[k] /= Float(t) }
            }
        }
        var logits = pooled
        if let classifier {
            logits = Tensor(uninitialized: [b, classifier.outFeatures])
            try classifier(cvt.engine, src: pooled.unsafePointer, rows: b, dst: logits.unsafePointer)
        }
        return logits
    }

    /// transformers' loss selection: infer `problem_type` once (and keep it), then MSE,
    /// cross-entropy or BCE-with-logits.
    func computeLoss(logits: Tensor, labels: Labels) throws -> Float {
        let n = config.numLabels, b = logits.shape[0]
        if config.problemType == nil {
            if n == 1 { config.problemType = "regression" } else if n > 1, case .classIndices = labels {
                config.problemType = "single_label_classification"
            } else { config.problemType = "multi_label_classification" }
        }
        func floats(_ l: Labels) -> Tensor {
            switch l {
            case .classIndices(let v): return (try? Tensor(shape: [v.count], scalars: v.map(Float.init))) ?? Tensor(zeros: [0])
            case .values(let t): return t
            }
        }
        switch config.problemType {
        case "regression":
            let y = floats(labels)
            if n == 1 {
                // quirk: squeeze() both sides, so [B] and [B, 1] targets compare elementwise.
                guard y.count == b else { throw CvtInputError("regression labels have \(y.count) values for a batch of \(b)") }
                return try Losses.mse(logits.scalars, y.scalars)
            }
            guard y.count == logits.count else { throw CvtInputError("regression labels \(y.shape) do not match logits \(logits.shape)") }
            return try Losses.mse(logits.scalars, y.scalars)
        case "single_label_classification":
            guard case .classIndices(let idx) = labels else {
                throw CvtInputError("single_label_classification needs integer class labels, got float labels")
            }
            guard idx.count == b else { throw CvtInputError("\(idx.count) labels for a batch of \(b)") }
            return try Losses.crossEntropy(logits: logits, labels: idx)
        default:
            let y = floats(labels)
            guard y.shape == logits.shape else {
                throw CvtInputError("multi-label targets must have the logits' shape \(logits.shape), got \(y.shape)")
            }
            return try Losses.bceWithLogits(logits.scalars, y.scalars)
        }
    }
}
