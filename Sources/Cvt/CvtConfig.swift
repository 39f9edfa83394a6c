import CheckpointSupport
import Foundation

/// A config that cannot describe a working model, naming the field and the value.
public struct CvtConfigError: Error, CustomStringConvertible, Equatable {
    /// The config.json key at fault (e.g. `embed_dim`).
    public let field: String
    /// What is wrong with it, with the offending value and stage.
    public let message: String
    /// Creates an error about config.json key `field`.
    public init(field: String, _ message: String) { self.field = field; self.message = message }
    /// "invalid CvtConfig: `<field>` <message>".
    public var description: String { "invalid CvtConfig: `\(field)` \(message)" }
}

/// transformers' `CvtConfig`: every per-stage list has one entry per stage (`depth.count`).
/// Decodes `config.json` with the exact keys (unknown keys ignored, missing keys take the
/// cvt-13 defaults as in transformers) and encodes the keys transformers v5 writes.
public struct CvtConfig: Codable, Equatable, Sendable {
    /// `num_channels`: input image channels (default 3, RGB).
    public var numChannels = 3
    /// `patch_sizes`: kernel size of each stage's convolutional token embedding (default `[7, 3, 3]`).
    public var patchSizes = [7, 3, 3]
    /// `patch_stride`: stride of each stage's token embedding (default `[4, 2, 2]`).
    public var patchStride = [4, 2, 2]
    /// `patch_padding`: zero padding of each stage's token embedding (default `[2, 1, 1]`).
    public var patchPadding = [2, 1, 1]
    /// `embed_dim`: channels per stage (default `[64, 192, 384]`).
    public var embedDim = [64, 192, 384]
    /// `num_heads`: attention heads per stage; must divide `embed_dim` (default `[1, 3, 6]`).
    public var numHeads = [1, 3, 6]
    /// `depth`: transformer layers per stage; its length is the number of stages (default `[1, 2, 10]`).
    public var depth = [1, 2, 10]
    /// `mlp_ratio`: MLP hidden width as a multiple of `embed_dim`, per stage (default `[4, 4, 4]`).
    public var mlpRatio: [Double] = [4, 4, 4]
    /// `attention_drop_rate`: dropout probability on the attention weights during training, per stage.
    public var attentionDropRate: [Double] = [0, 0, 0]
    /// `drop_rate`: dropout probability after the patch embedding, the attention output and the MLP output during training, per stage.
    public var dropRate: [Double] = [0, 0, 0]
    /// `drop_path_rate`: stochastic depth during training, per stage (default `[0, 0, 0.1]`). As in transformers, every layer of
    /// stage `s` uses element `s` of `linspace(0, drop_path_rate[s], depth[s])` (0 for the first stage).
    public var dropPathRate: [Double] = [0, 0, 0.1]
    /// `qkv_bias`: whether the query, key and value projections have biases, per stage.
    public var qkvBias = [true, true, true]
    /// `cls_token`: whether the stage prepends a CLS token (default only in the last stage).
    public var clsToken = [false, false, true]
    /// `qkv_projection_method`: `dw_bn` (depthwise conv + BatchNorm), `avg` (average pooling) or `linear`, per stage.
    public var qkvProjectionMethod = ["dw_bn", "dw_bn", "dw_bn"]
    /// `kernel_qkv`: kernel size of the query/key/value convolutional projections, per stage.
    public var kernelQkv = [3, 3, 3]
    /// `padding_kv`: padding of the key and value projections, per stage.
    public var paddingKv = [1, 1, 1]
    /// `stride_kv`: stride of the key and value projections (default 2: keys and values on a grid half the size), per stage.
    public var strideKv = [2, 2, 2]
    /// `padding_q`: padding of the query projection, per stage.
    public var paddingQ = [1, 1, 1]
    /// `stride_q`: stride of the query projection (must be 1 for `dw_bn`), per stage.
    public var strideQ = [1, 1, 1]
    /// `initializer_range`: std of the truncated-normal initial weights for a model made from the config (default 0.02).
    public var initializerRange = 0.02
    /// quirk: stored and written, never read by the model (every LayerNorm uses 1e-5).
    public var layerNormEps = 1e-12
    /// Label names by class index; `numLabels == id2label.count`.
    public var id2label: [Int: String] = [0: "LABEL_0", 1: "LABEL_1"]
    /// `nil`, "regression", "single_label_classification" or "multi_label_classification".
    public var problemType: String?
    /// `architectures`: model class names recorded by transformers (default `["CvtForImageClassification"]`).
    public var architectures: [String]? = ["CvtForImageClassification"]

    /// microsoft/cvt-13's architecture with transformers' `CvtConfig()` defaults: 3 stages, 2 labels.
    public init() {}

    /// Number of stages (`depth.count`).
    public var numStages: Int { depth.count }
    /// `num_labels`: number of classes (`id2label.count`); setting it replaces `id2label` with `LABEL_0`…`LABEL_{n-1}`.
    public var numLabels: Int {
        get { id2label.count }
        set { id2label = Dictionary(uniqueKeysWithValues: (0..<max(0, newValue)).map { ($0, "LABEL_\($0)") }) }
    }
    /// `label2id`: class index by label name (the inverse of `id2label`).
    public var label2id: [String: Int] { Dictionary(id2label.map { ($1, $0) }, uniquingKeysWith: { a, _ in a }) }
    /// MLP hidden width of stage `s`: `int(C * mlp_ratio)` as Python truncates it.
    public func mlpHidden(_ s: Int) -> Int { Int(Double(embedDim[s]) * mlpRatio[s]) }

    static let projectionMethods: Set<String> = ["dw_bn", "avg", "linear"]
    static let problemTypes: Set<String> = ["regression", "single_label_classification", "multi_label_classification"]

    /// Rejects configs that cannot build a working model. The first problem found is reported.
    public func validate() throws {
        let n = depth.count
        guard n >= 1 else { throw CvtConfigError(field: "depth", "must list at least one stage, got []") }
        if n > Bounds.stages {
            throw CvtConfigError(field: "depth", "lists \(n) stages; at most \(Bounds.stages) are supported")
        }
        guard numChannels > 0 else { throw CvtConfigError(field: "num_channels", "must be positive, got \(numChannels)") }
        func lengths(_ name: String, _ c: Int) throws {
            if c != n { throw CvtConfigError(field: name, "has \(c) entries but `depth` has \(n) stages") }
        }
        try lengths("patch_sizes", patchSizes.count); try lengths("patch_stride", patchStride.count)
        try lengths("patch_padding", patchPadding.count); try lengths("embed_dim", embedDim.count)
        try lengths("num_heads", numHeads.count); try lengths("mlp_ratio", mlpRatio.count)
        try lengths("attention_drop_rate", attentionDropRate.count); try lengths("drop_rate", dropRate.count)
        try lengths("drop_path_rate", dropPathRate.count); try lengths("qkv_bias", qkvBias.count)
        try lengths("cls_token", clsToken.count); try lengths("qkv_projection_method", qkvProjectionMethod.count)
        try lengths("kernel_qkv", kernelQkv.count); try lengths("padding_kv", paddingKv.count)
        try lengths("stride_kv", strideKv.count); try lengths("padding_q", paddingQ.count); try lengths("stride_q", strideQ.count)
        func positive(_ name: String, _ v: [Int]) throws {
            if let (i, x) = v.enumerated().first(where: { $0.element <= 0 }) {
                throw CvtConfigError(field: name, "must be positive, got \(x) at stage \(i)")
            }
        }
        func nonNegative(_ name: String, _ v: [Int]) throws {
            if let (i, x) = v.enumerated().first(where: { $0.element < 0 }) {
                throw CvtConfigError(field: name, "must not be negative, got \(x) at stage \(i)")
            }
        }
        try positive("patch_sizes", patchSizes); try positive("patch_stride", patchStride)
        try positive("embed_dim", embedDim); try positive("num_heads", numHeads)
        try positive("kernel_qkv", kernelQkv); try positive("stride_kv", strideKv); try positive("stride_q", strideQ)
        try nonNegative("depth", depth); try nonNegative("patch_padding", patchPadding)
        try nonNegative("padding_kv", paddingKv); try nonNegative("padding_q", paddingQ)
        try withinBounds()
        for s in 0..<n {
            if embedDim[s] % numHeads[s] != 0 {
                throw CvtConfigError(field: "embed_dim", "[\(s)] = \(embedDim[s]) is not divisible by num_heads[\(s)] = \(numHeads[s])")
            }
            if !(mlpRatio[s] > 0) || mlpHidden(s) < 1 {
                throw CvtConfigError(field: "mlp_ratio", "[\(s)] = \(mlpRatio[s]) gives an MLP width below 1")
            }
            if !Self.projectionMethods.contains(qkvProjectionMethod[s]) {
                throw CvtConfigError(field: "qkv_projection_method", "[\(s)] = \"\(qkvProjectionMethod[s])\" is not one of dw_bn, avg, linear")
            }
            // The query grid must equal the token grid for the residual add, for every input size:
            // that needs stride 1 and "same" padding (the reference fails at forward otherwise).
            if qkvProjectionMethod[s] == "dw_bn" && (strideQ[s] != 1 || 2 * paddingQ[s] != kernelQkv[s] - 1) {
                throw CvtConfigError(field: "stride_q", "[\(s)] = \(strideQ[s]) with padding_q \(paddingQ[s]) and kernel_qkv \(kernelQkv[s]) changes the query grid; the residual add needs stride_q 1 and padding_q (kernel_qkv-1)/2")
            }
        }
        guard initializerRange >= 0 else { throw CvtConfigError(field: "initializer_range", "must not be negative") }
        if let ids = Optional(id2label.keys.sorted()), ids != Array(0..<ids.count) {
            throw CvtConfigError(field: "id2label", "keys must be 0..<\(ids.count), got \(ids.prefix(5))…")
        }
        if let p = problemType, !Self.problemTypes.contains(p) {
            throw CvtConfigError(field: "problem_type", "\"\(p)\" is not one of regression, single_label_classification, multi_label_classification")
        }
    }

    // MARK: bounds

    /// Upper bounds on the sizes a config may declare, checked before anything is allocated (a
    /// config is untrusted input: `embed_dim` 1e9 or `padding_q` Int.max must be an error, not an
    /// allocation abort or an overflow trap). Each is far above any published CvT (cvt-w24:
    /// embed_dim 1024, depth 20, 277 M parameters); docs/security.md lists them.
    public enum Bounds {
        /// Stages (`num_stages`, the length of every per-stage list).
        public static let stages = 16
        /// Input channels (`num_channels`).
        public static let numChannels = 1024
        /// Layers in one stage (`depth[s]`).
        public static let depth = 1024
        /// Channels of one stage (`embed_dim[s]`).
        public static let embedDim = 16384
        /// `int(embed_dim * mlp_ratio)`.
        public static let mlpHidden = 65536
        /// Every kernel size, stride and padding (patch_sizes, patch_stride, patch_padding, kernel_qkv, …).
        public static let spatial = 1024
        /// Classes of the head (`num_labels`).
        public static let numLabels = 1 << 20
        /// All parameters together (4 GiB as float32).
        public static let parameters = 1 << 30
    }

    /// The bounds of `Bounds`, field by field, then the parameter count (overflow-checked).
    func withinBounds() throws {
        func atMost(_ name: String, _ v: [Int], _ limit: Int) throws {
            if let (i, x) = v.enumerated().first(where: { $0.element > limit }) {
                throw CvtConfigError(field: name, "is \(x) at stage \(i); at most \(limit) is supported")
            }
        }
        if numChannels > Bounds.numChannels {
            throw CvtConfigError(field: "num_channels", "is \(numChannels); at most \(Bounds.numChannels) is supported")
        }
        try atMost("depth", depth, Bounds.depth); try atMost("embed_dim", embedDim, Bounds.embedDim)
        try atMost("num_heads", numHeads, Bounds.embedDim)
        for (name, v) in [("patch_sizes", patchSizes), ("patch_stride", patchStride), ("patch_padding", patchPadding),
                          ("kernel_qkv", kernelQkv), ("stride_kv", strideKv), ("padding_kv", paddingKv),
                          ("stride_q", strideQ), ("padding_q", paddingQ)] {
            try atMost(name, v, Bounds.spatial)
        }
        for (s, r) in mlpRatio.enumerated() where !(r.isFinite && Double(embedDim[s]) * r < Double(Bounds.mlpHidden + 1)) {
            throw CvtConfigError(field: "mlp_ratio", "[\(s)] = \(r) gives an MLP width above \(Bounds.mlpHidden) (embed_dim \(embedDim[s]))")
        }
        if numLabels > Bounds.numLabels {
            throw CvtConfigError(field: "num_labels", "is \(numLabels); at most \(Bounds.numLabels) is supported")
        }
        guard let count = parameterCount, count <= Bounds.parameters else {
            throw CvtConfigError(field: "embed_dim", "with depth, mlp_ratio and the kernel sizes gives \(parameterCount.map(String.init) ?? "more than Int.max") parameters; at most \(Bounds.parameters) are supported")
        }
    }

    /// The number of parameters the model has (`named_parameters()`, without BatchNorm buffers),
    /// nil when it overflows `Int`. Assumes the per-stage lists have `depth.count` entries.
    public var parameterCount: Int? {
        var total = 0, ok = true
        func add(_ factors: Int...) {
            var p = 1
            for f in factors {
                let (r, o) = p.multipliedReportingOverflow(by: f)
                if o { ok = false; return }
                p = r
            }
            let (r, o) = total.addingReportingOverflow(p)
            if o { ok = false } else { total = r }
        }
        var inChannels = numChannels
        for s in 0..<depth.count {
            let hd = Double(embedDim[s]) * mlpRatio[s]
            guard hd.isFinite, abs(hd) < 0x1p62 else { return nil }
            let c = embedDim[s], hidden = Int(hd), k = kernelQkv[s]
            if k > 1 << 31 { return nil }
            add(inChannels, c, patchSizes[s], patchSizes[s]); add(3, c)   // embedding conv + bias, LayerNorm
            if clsToken[s] { add(c) }
            add(depth[s], 2, c, hidden); add(depth[s], hidden)             // MLP weights and biases
            add(depth[s], 4, c, c); add(depth[s], qkvBias[s] ? 9 : 6, c)  // Q/K/V/out weights, biases, LayerNorms
            if qkvProjectionMethod[s] == "dw_bn" { add(depth[s], 3, c, k * k + 2) }
            inChannels = c
        }
        add(2, inChannels); add(inChannels + 1, numLabels)
        return ok ? total : nil
    }

    /// The most values one image's forward pass holds in a single buffer at `height × width` input
    /// (the larger of a stage's attention scores, heads × tokens × key tokens, and its MLP
    /// activations, tokens × hidden width), nil when that overflows `Int`. Attention is quadratic in
    /// the token count, so this, not the input size, is what an input size must be checked by.
    public func largestActivation(height: Int, width: Int) -> Int? {
        guard (try? validate()) != nil, height <= 1 << 24, width <= 1 << 24 else { return nil }
        var h = height, w = width, largest = numChannels.multipliedReportingOverflow(by: h).partialValue
        func out(_ n: Int, _ k: Int, _ s: Int, _ p: Int) -> Int { max(0, (n + 2 * p - k) / max(s, 1) + 1) }
        for s in 0..<depth.count {
            h = out(h, patchSizes[s], patchStride[s], patchPadding[s]); w = out(w, patchSizes[s], patchStride[s], patchPadding[s])
            let (hw, o1) = h.multipliedReportingOverflow(by: w)
            if o1 { return nil }
            let cls = clsToken[s] ? 1 : 0
            let kv = out(h, kernelQkv[s], strideKv[s], paddingKv[s]).multipliedReportingOverflow(by: out(w, kernelQkv[s], strideKv[s], paddingKv[s]))
            if kv.overflow { return nil }
            let kvGrid = qkvProjectionMethod[s] == "linear" ? hw : kv.partialValue
            var stage = 0
            for candidate in [[numHeads[s], hw + cls, kvGrid + cls], [hw + cls, max(mlpHidden(s), 3 * embedDim[s])]] {
                var p = 1
                for f in candidate {
                    let (r, o) = p.multipliedReportingOverflow(by: f)
                    if o { return nil }
                    p = r
                }
                stage = max(stage, p)
            }
            largest = max(largest, stage)
        }
        return largest
    }

    /// `largestActivation` bound for one image: 2^30 values (4 GiB as float32).
    public static let maxActivation = 1 << 30

    /// Throws, naming `what`, when one image of `height × width` needs more than `maxActivation`
    /// values in one buffer.
    public func checkInputSize(height: Int, width: Int, what: String) throws {
        guard height > 0, width > 0, height <= 65536, width <= 65536,
              let n = largestActivation(height: height, width: width), n <= Self.maxActivation else {
            throw CvtConfigError(field: what, "\(height)x\(width) needs more than \(Self.maxActivation) values in one buffer per image for this model (attention grows with the square of the token count)")
        }
    }

    // MARK: presets

    /// microsoft/cvt-13 (1000 labels, named LABEL_i: the ImageNet names come with a checkpoint).
    public static var cvt13: CvtConfig { var c = CvtConfig(); c.numLabels = 1000; return c }
    /// microsoft/cvt-21.
    public static var cvt21: CvtConfig { var c = cvt13; c.depth = [1, 4, 16]; return c }
    /// microsoft/cvt-w24-384-22k.
    public static var cvtW24: CvtConfig {
        var c = cvt13; c.embedDim = [192, 768, 1024]; c.numHeads = [3, 12, 16]; c.depth = [2, 2, 20]; return c
    }

    /// The config of a named preset: `cvt-13`, `cvt-21` or `cvt-w24` (case-insensitive, with or
    /// without `microsoft/` and the `-384`/`-384-22k` suffixes); nil for any other name.
    public static func preset(named name: String) -> CvtConfig? {
        switch name.lowercased().replacingOccurrences(of: "microsoft/", with: "") {
        case "cvt-13", "cvt-13-384", "cvt-13-384-22k": return cvt13
        case "cvt-21", "cvt-21-384", "cvt-21-384-22k": return cvt21
        case "cvt-w24", "cvt-w24-384-22k": return cvtW24
        default: return nil
        }
    }
    /// The preset names `preset(named:)` documents, for listings and help text.
    public static let presetNames = ["cvt-13", "cvt-21", "cvt-w24"]

    // MARK: Codable

    enum CodingKeys: String, CodingKey {
        case numChannels = "num_channels", patchSizes = "patch_sizes", patchStride = "patch_stride"
        case patchPadding = "patch_padding", embedDim = "embed_dim", numHeads = "num_heads", depth
        case mlpRatio = "mlp_ratio", attentionDropRate = "attention_drop_rate", dropRate = "drop_rate"
        case dropPathRate = "drop_path_rate", qkvBias = "qkv_bias", clsToken = "cls_token"
        case qkvProjectionMethod = "qkv_projection_method", kernelQkv = "kernel_qkv", paddingKv = "padding_kv"
        case strideKv = "stride_kv", paddingQ = "padding_q", strideQ = "stride_q"
        case initializerRange = "initializer_range", layerNormEps = "layer_norm_eps"
        case id2label, label2id, numLabels = "num_labels", problemType = "problem_type"
        case architectures, modelType = "model_type", transformersVersion = "transformers_version", dtype
    }

    /// Decodes a `config.json`: missing keys take the defaults, unknown keys are ignored, and the result is validated.
    /// - Throws: `CvtConfigError` when `model_type` is not `cvt`, `id2label` keys are not integers,
    ///   `num_labels` disagrees with `id2label`, or `validate()` fails; `DecodingError` for values of the wrong type.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        if let t = try c.decodeIfPresent(String.self, forKey: .modelType), t != "cvt" {
            throw CvtConfigError(field: "model_type", "is \"\(t)\", expected \"cvt\"")
        }
        // Foundation reports a number that is not an integer (1e300, 1.5) where an integer is
        // expected as "not valid JSON" with no key: name the field and the value instead.
        func decode<T: Decodable>(_ type: T.Type, _ k: CodingKeys) throws -> T? {
            do {
                return try c.decodeIfPresent(T.self, forKey: k)
            } catch {
                // (Any error is examined: this one does not match a `DecodingError.dataCorrupted` pattern.)
                guard T.self == Int.self || T.self == [Int].self else { throw error }
                if let list = try? c.decodeIfPresent([Double].self, forKey: k) {
                    throw CvtConfigError(field: k.stringValue, "must hold integers, got \(list.prefix(8))")
                }
                if let value = try? c.decodeIfPresent(Double.self, forKey: k) {
                    throw CvtConfigError(field: k.stringValue, "must be an integer, got \(value)")
                }
                throw error
            }
        }
        func get<T: Decodable>(_ k: CodingKeys, _ d: T) throws -> T { try decode(T.self, k) ?? d }
        numChannels = try get(.numChannels, numChannels); patchSizes = try get(.patchSizes, patchSizes)
        patchStride = try get(.patchStride, patchStride); patchPadding = try get(.patchPadding, patchPadding)
        embedDim = try get(.embedDim, embedDim); numHeads = try get(.numHeads, numHeads); depth = try get(.depth, depth)
        mlpRatio = try get(.mlpRatio, mlpRatio); attentionDropRate = try get(.attentionDropRate, attentionDropRate)
        dropRate = try get(.dropRate, dropRate); dropPathRate = try get(.dropPathRate, dropPathRate)
        qkvBias = try get(.qkvBias, qkvBias); clsToken = try get(.clsToken, clsToken)
        qkvProjectionMethod = try get(.qkvProjectionMethod, qkvProjectionMethod)
        kernelQkv = try get(.kernelQkv, kernelQkv); paddingKv = try get(.paddingKv, paddingKv)
        strideKv = try get(.strideKv, strideKv); paddingQ = try get(.paddingQ, paddingQ); strideQ = try get(.strideQ, strideQ)
        initializerRange = try get(.initializerRange, initializerRange); layerNormEps = try get(.layerNormEps, layerNormEps)
        problemType = try c.decodeIfPresent(String.self, forKey: .problemType)
        architectures = try c.decodeIfPresent([String].self, forKey: .architectures)
        if let raw = try c.decodeIfPresent([String: String].self, forKey: .id2label) {
            var m: [Int: String] = [:]
            for (k, v) in raw {
                guard let i = Int(k) else { throw CvtConfigError(field: "id2label", "key \"\(k)\" is not an integer") }
                m[i] = v
            }
            id2label = m
            if let n = try decode(Int.self, .numLabels), n != m.count {
                throw CvtConfigError(field: "num_labels", "is \(n) but id2label has \(m.count) entries")
            }
        } else if let n = try decode(Int.self, .numLabels) {
            guard n >= 0 else { throw CvtConfigError(field: "num_labels", "must not be negative, got \(n)") }
            // Checked before the LABEL_i names are made.
            guard n <= Bounds.numLabels else {
                throw CvtConfigError(field: "num_labels", "is \(n); at most \(Bounds.numLabels) is supported")
            }
            numLabels = n
        }
        try validate()
    }

    /// Encodes the keys transformers writes (with `model_type` `cvt` and `dtype` `float32`, plus `label2id`).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(architectures, forKey: .architectures)
        try c.encode(attentionDropRate, forKey: .attentionDropRate); try c.encode(clsToken, forKey: .clsToken)
        try c.encode(depth, forKey: .depth); try c.encode(dropPathRate, forKey: .dropPathRate)
        try c.encode(dropRate, forKey: .dropRate); try c.encode("float32", forKey: .dtype)
        try c.encode(embedDim, forKey: .embedDim)
        try c.encode(Dictionary(uniqueKeysWithValues: id2label.map { (String($0), $1) }), forKey: .id2label)
        try c.encode(initializerRange, forKey: .initializerRange); try c.encode(kernelQkv, forKey: .kernelQkv)
        try c.encode(label2id, forKey: .label2id); try c.encode(layerNormEps, forKey: .layerNormEps)
        try c.encode(mlpRatio, forKey: .mlpRatio); try c.encode("cvt", forKey: .modelType)
        try c.encode(numChannels, forKey: .numChannels); try c.encode(numHeads, forKey: .numHeads)
        try c.encode(paddingKv, forKey: .paddingKv); try c.encode(paddingQ, forKey: .paddingQ)
        try c.encode(patchPadding, forKey: .patchPadding); try c.encode(patchSizes, forKey: .patchSizes)
        try c.encode(patchStride, forKey: .patchStride); try c.encodeIfPresent(problemType, forKey: .problemType)
        try c.encode(qkvBias, forKey: .qkvBias); try c.encode(qkvProjectionMethod, forKey: .qkvProjectionMethod)
        try c.encode(strideKv, forKey: .strideKv); try c.encode(strideQ, forKey: .strideQ)
    }

    /// Decodes `config.json` bytes; errors name the file.
    public static func decode(_ data: Data) throws -> CvtConfig {
        try JSONDecoder().decode(CvtConfig.self, from: data)
    }

    /// `config.json` bytes, keys sorted, 2-space indent. Floats are always written with a decimal
    /// point (`4.0`, not `4`): transformers v5 validates `mlp_ratio` and the rates as floats and
    /// rejects integers. `dtype`: the weights' type as `save_pretrained` records it (`float32`,
    /// `bfloat16`, `float16`).
    public func jsonData(dtype: String = "float32") throws -> Data {
        var fields: [(String, JSONValue)] = [
            ("attention_drop_rate", .array(attentionDropRate.map(JSONValue.float))),
            ("cls_token", .array(clsToken.map(JSONValue.bool))),
            ("depth", .array(depth.map(JSONValue.int))),
            ("drop_path_rate", .array(dropPathRate.map(JSONValue.float))),
            ("drop_rate", .array(dropRate.map(JSONValue.float))),
            ("dtype", .string(dtype)),
            ("embed_dim", .array(embedDim.map(JSONValue.int))),
            ("id2label", .object(id2label.sorted { $0.key < $1.key }.map { (key: String($0.key), value: .string($0.value)) })),
            ("initializer_range", .float(initializerRange)),
            ("kernel_qkv", .array(kernelQkv.map(JSONValue.int))),
            ("label2id", .object(label2id.sorted { $0.key < $1.key }.map { (key: $0.key, value: .int($0.value)) })),
            ("layer_norm_eps", .float(layerNormEps)),
            ("mlp_ratio", .array(mlpRatio.map(JSONValue.float))),
            ("model_type", .string("cvt")),
            ("num_channels", .int(numChannels)),
            ("num_heads", .array(numHeads.map(JSONValue.int))),
            ("padding_kv", .array(paddingKv.map(JSONValue.int))),
            ("padding_q", .array(paddingQ.map(JSONValue.int))),
            ("patch_padding", .array(patchPadding.map(JSONValue.int))),
            ("patch_sizes", .array(patchSizes.map(JSONValue.int))),
            ("patch_stride", .array(patchStride.map(JSONValue.int))),
            ("qkv_bias", .array(qkvBias.map(JSONValue.bool))),
            ("qkv_projection_method", .array(qkvProjectionMethod.map(JSONValue.string))),
            ("stride_kv", .array(strideKv.map(JSONValue.int))),
            ("stride_q", .array(strideQ.map(JSONValue.int))),
        ]
        if let architectures { fields.append(("architectures", .array(architectures.map(JSONValue.string)))) }
        if let problemType { fields.append(("problem_type", .string(problemType))) }
        fields.sort { $0.0 < $1.0 }
        return Data((JSONValue.object(fields.map { (key: $0.0, value: $0.1) }).pretty() + "\n").utf8)
    }
}
