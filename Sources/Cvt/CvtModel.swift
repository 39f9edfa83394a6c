import CvtNN
import CvtTensor
import Foundation

/// A forward pass that cannot run on this input (wrong shape, image too small for the strides…).
public struct CvtInputError: Error, CustomStringConvertible, Equatable {
    /// What is wrong with the input (shapes, sizes, the stage concerned).
    public let message: String
    /// Creates an error with `message`.
    public init(_ message: String) { self.message = message }
    /// The message.
    public var description: String { message }
}

// The module tree mirrors the checkpoint keys of transformers' CvT (`modeling_cvt.py`): property names are
// the camelCase of the key segments, and each `visitParameters` spells the exact key.

/// `…embedding.convolution_embeddings`: patch conv, then LayerNorm over channels.
public final class CvtConvEmbeddings: Module {
    /// `projection`: the patch convolution `[C_s, C_in, patch, patch]` with stride and padding from the config.
    public let projection: Conv2d
    /// `normalization`: LayerNorm over the embedded channels.
    public let normalization: LayerNorm

    init(inChannels: Int, dim: Int, patch: Int, stride: Int, padding: Int) {
        projection = Conv2d(inChannels, dim, kernel: patch, stride: stride, padding: padding, bias: true)
        normalization = LayerNorm(dim)
    }

    /// Visits `prefix.projection.{weight,bias}` and `prefix.normalization.{weight,bias}`.
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        try projection.visitParameters(v, prefix: joinKey(prefix, "projection"))
        try normalization.visitParameters(v, prefix: joinKey(prefix, "normalization"))
    }
    /// Drops the convolution's engine form after its weights were replaced.
    public func parametersDidChange() { projection.parametersDidChange() }
}

/// One of the Q/K/V token projections before the Linear: `dw_bn` (depthwise conv + BatchNorm),
/// or, beyond the reference, the original CvT's `avg` (AvgPool2d, ceil mode) and `linear`
/// (identity), which have no parameters.
public final class CvtSelfAttentionProjection: Module {
    /// config.json's `qkv_projection_method` values: `dw_bn` (depthwise conv + BatchNorm), `avg` (average pooling) and `linear` (identity).
    public enum Method: String, Sendable { case dwBN = "dw_bn", avg, linear }
    /// How tokens are projected before the Linear.
    public let method: Method
    /// Kernel size, stride and padding of the convolution or pooling (`kernel_qkv`, `stride_q`/`stride_kv`, `padding_q`/`padding_kv`).
    public let kernel: Int, stride: Int, padding: Int
    /// `convolution_projection.convolution` / `.normalization` (dw_bn only).
    public let convolution: Conv2d?
    /// The BatchNorm after the depthwise convolution (`dw_bn` only).
    public let normalization: BatchNorm2d?
    private var folded: ConvWeights?
    /// Guards `folded` (batch workers run this projection on several threads at once).
    private let lock = NSLock()

    init(method: Method, dim: Int, kernel: Int, stride: Int, padding: Int) {
        self.method = method; self.kernel = kernel; self.stride = stride; self.padding = padding
        if method == .dwBN {
            convolution = Conv2d(dim, dim, kernel: kernel, stride: stride, padding: padding, groups: dim, bias: false)
            normalization = BatchNorm2d(dim)
        } else {
            convolution = nil; normalization = nil
        }
    }

    /// Visits `prefix.convolution_projection.convolution.weight` and the BatchNorm's parameters and statistics (`dw_bn` only).
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        let p = joinKey(prefix, "convolution_projection")
        try convolution?.visitParameters(v, prefix: joinKey(p, "convolution"))
        try normalization?.visitParameters(v, prefix: joinKey(p, "normalization"))
        if !v.readsOnly { folded = nil }
    }
    /// Drops the BatchNorm-folded weights, rebuilt at the next call.
    public func parametersDidChange() { folded = nil }

    func outputSize(_ n: Int) -> Int {
        switch method {
        case .dwBN: return convolution?.outputSize(n) ?? 0
        case .avg: return Kernels.avgPoolOutputSize(n, kernel: kernel, stride: stride, padding: padding)
        case .linear: return n
        }
    }

    /// NHWC `[B, H, W, C]` images `srcImageStride` floats apart → NHWC `[B, H', W', C]` images
    /// `dstImageStride` floats apart (not called for `linear`). The strides let it read the patch
    /// tokens and write the projected ones inside token buffers that start with a CLS row.
    func callAsFunction(_ engine: Engine, src: UnsafeMutablePointer<Float>, srcImageStride: Int, b: Int, h: Int, w: Int, c: Int,
                        dst: UnsafeMutablePointer<Float>, dstImageStride: Int) throws {
        switch method {
        case .dwBN:
            guard let conv = convolution, let bn = normalization else { return }
            lock.lock()
            if folded == nil { folded = bn.folded(into: conv) }
            let weights = folded
            lock.unlock()
            try conv.depthwise(engine, src: src, srcImageStride: srcImageStride, n: b, h: h, w: w,
                               dst: dst, dstImageStride: dstImageStride, override: weights)
        case .avg:
            Kernels.avgPool2dNHWC(src, n: b, h: h, w: w, c: c, kernel: kernel, stride: stride, padding: padding,
                                  dst, ho: outputSize(h), wo: outputSize(w), srcImageStride: srcImageStride, dstImageStride: dstImageStride)
        case .linear:
            break
        }
    }
}

/// `…attention.attention`: convolutional projections, Linear Q/K/V and scaled dot-product attention.
public final class CvtSelfAttention: Module {
    /// Stage width `C` (`embed_dim[s]`), attention heads (`num_heads[s]`), and whether the stage has a CLS token (`cls_token[s]`).
    public let dim: Int, numHeads: Int, withClsToken: Bool
    /// `convolution_projection_{query,key,value}`: the convolutional token projections (query stride `stride_q`, key/value stride `stride_kv`).
    public let convolutionProjectionQuery, convolutionProjectionKey, convolutionProjectionValue: CvtSelfAttentionProjection
    /// `projection_{query,key,value}`: the Linear `[C, C]` projections after them (with biases when `qkv_bias[s]`).
    public let projectionQuery, projectionKey, projectionValue: Linear
    /// quirk: the reference scales by the whole stage width, `C ** -0.5`, not `head_dim ** -0.5`.
    public var scale: Float { Float(1 / Double(dim).squareRoot()) }

    init(config c: CvtConfig, stage s: Int) {
        dim = c.embedDim[s]; numHeads = c.numHeads[s]; withClsToken = c.clsToken[s]
        let m = CvtSelfAttentionProjection.Method(rawValue: c.qkvProjectionMethod[s]) ?? .dwBN
        // As in the original CvT, "avg" pools only keys and values; the query stays linear.
        convolutionProjectionQuery = .init(method: m == .avg ? .linear : m, dim: dim, kernel: c.kernelQkv[s], stride: c.strideQ[s], padding: c.paddingQ[s])
        convolutionProjectionKey = .init(method: m, dim: dim, kernel: c.kernelQkv[s], stride: c.strideKv[s], padding: c.paddingKv[s])
        convolutionProjectionValue = .init(method: m, dim: dim, kernel: c.kernelQkv[s], stride: c.strideKv[s], padding: c.paddingKv[s])
        projectionQuery = Linear(dim, dim, bias: c.qkvBias[s])
        projectionKey = Linear(dim, dim, bias: c.qkvBias[s])
        projectionValue = Linear(dim, dim, bias: c.qkvBias[s])
    }

    /// Visits the three convolutional projections, then the three Linear projections, under their transformers keys.
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        try convolutionProjectionQuery.visitParameters(v, prefix: joinKey(prefix, "convolution_projection_query"))
        try convolutionProjectionKey.visitParameters(v, prefix: joinKey(prefix, "convolution_projection_key"))
        try convolutionProjectionValue.visitParameters(v, prefix: joinKey(prefix, "convolution_projection_value"))
        try projectionQuery.visitParameters(v, prefix: joinKey(prefix, "projection_query"))
        try projectionKey.visitParameters(v, prefix: joinKey(prefix, "projection_key"))
        try projectionValue.visitParameters(v, prefix: joinKey(prefix, "projection_value"))
    }
    /// Drops the projections' folded weights after parameters were replaced.
    public func parametersDidChange() {
        for p in [convolutionProjectionQuery, convolutionProjectionKey, convolutionProjectionValue] { p.parametersDidChange() }
    }

    /// Projects normalized tokens `n` `[B, T, C]` (T = cls + H·W) through one conv projection and
    /// its Linear → `[B, T', C]` of `type` with the CLS (when present) in row 0.
    private func project(_ engine: Engine, _ proj: CvtSelfAttentionProjection, _ linear: Linear, n: Tensor,
                         b: Int, h: Int, w: Int, type: ElementType) throws -> (TypedBuffer, Int) {
        let c = dim, cls = withClsToken ? 1 : 0, t = cls + h * w
        if proj.method == .linear {
            let out = TypedBuffer(type: type, count: b * t * c)
            try linear(engine, src: StridedView(dense: n.unsafePointer, dims: [b * t, c]), dst: out.view([b * t, c]))
            return (out, t)
        }
        let ho = proj.outputSize(h), wo = proj.outputSize(w)
        guard ho > 0, wo > 0 else {
            throw CvtInputError("the \(h)×\(w) token grid is too small for a \(proj.kernel)×\(proj.kernel) Q/K/V projection with stride \(proj.stride) and padding \(proj.padding)")
        }
        let tp = cls + ho * wo
        let tokens = Tensor(uninitialized: [b, tp, c])
        // The conv sees only the H·W patch tokens (after the CLS row of each image) and writes after
        // the CLS row of its output: shapes [B, 1 + H·W, C] → [B, 1 + H'·W', C]. The CLS skips conv+BN.
        try proj(engine, src: n.unsafePointer + cls * c, srcImageStride: t * c, b: b, h: h, w: w, c: c,
                 dst: tokens.unsafePointer + cls * c, dstImageStride: tp * c)
        if cls == 1 {
            engine.timed("copy") { for i in 0..<b { (tokens.unsafePointer + i * tp * c).update(from: n.unsafePointer + i * t * c, count: c) } }
        }
        let out = TypedBuffer(type: type, count: b * tp * c)
        try linear(engine, src: StridedView(dense: tokens.unsafePointer, dims: [b * tp, c]), dst: out.view([b * tp, c]))
        return (out, tp)
    }

    /// Attention context `[B, Tq, C]` (heads merged) for normalized tokens `n` `[B, T, C]`, as `type`
    /// (bfloat16 in bf16 precision: every consumer is a matmul).
    /// With `clsQueryOnly`, only the CLS token's context `[B, 1, C]` (its query against every key).
    func callAsFunction(_ engine: Engine, n: Tensor, b: Int, h: Int, w: Int, type: ElementType,
                        clsQueryOnly: Bool = false) throws -> TypedBuffer {
        let c = dim
        let q: TypedBuffer, tq: Int
        if clsQueryOnly {
            guard withClsToken else { throw CvtInputError("internal: a CLS-only attention in a stage without a CLS token") }
            // The CLS skips the conv projection: its query is the Linear of its normalized value,
            // row 0 of each image's [1 + H·W, C] tokens.
            let t = 1 + h * w
            let rows = Tensor(uninitialized: [b, c])
            engine.timed("copy") { Kernels.copyRows(n.unsafePointer, srcPitch: t * c, rows.unsafePointer, dstPitch: c, rows: b, cols: c) }
            q = TypedBuffer(type: type, count: b * c)
            try projectionQuery(engine, src: StridedView(dense: rows.unsafePointer, dims: [b, c]), dst: q.view([b, c]))
            tq = 1
        } else {
            (q, tq) = try project(engine, convolutionProjectionQuery, projectionQuery, n: n, b: b, h: h, w: w, type: type)
        }
        let (k, tk) = try project(engine, convolutionProjectionKey, projectionKey, n: n, b: b, h: h, w: w, type: type)
        let (v, _) = try project(engine, convolutionProjectionValue, projectionValue, n: n, b: b, h: h, w: w, type: type)
        let heads = numHeads, d = c / heads
        let ctx = TypedBuffer(type: type, count: b * tq * c)
        if engine.fusesAttention {
            // Scores, softmax and P·V block by block in cache (our AVX2 kernel).
            try engine.attention(q: q, k: k, v: v, ctx: ctx, batch: b, heads: heads, tq: tq, tk: tk, channels: c, scale: scale)
            return ctx
        }
        // Images go through attention in groups: one matmul covers every head of every image in the
        // group (small late-stage products are too short to run well one image at a time), and the
        // group size bounds the score buffer to `engine.attentionScoreBudget` floats.
        let perImage = max(1, heads * tq * tk)
        let group = max(1, min(b, engine.attentionScoreBudget / perImage))
        let scores = Tensor(uninitialized: [group * perImage])
        let probs = type == .float32 ? TypedBuffer(scores) : TypedBuffer(type: type, count: group * perImage)
        var i = 0
        while i < b {
            let g = min(group, b - i)
            // Heads as strided views of [B, T, C]: head `hd` is channels hd·d ..< (hd+1)·d.
            // scores = (Q · Kᵀ) · scale: Q view [g, heads, Tq, d], Kᵀ view [g, heads, d, Tk].
            try engine.matmul(src: q.view([g, heads, tq, d], strides: [tq * c, d, c, 1], offset: i * tq * c),
                              weights: k.view([g, heads, d, tk], strides: [tk * c, d, 1, c], offset: i * tk * c),
                              dst: StridedView(dense: scores.unsafePointer, dims: [g, heads, tq, tk]),
                              postOps: [.scale(scale)])
            try engine.softmax(scores.unsafePointer, rows: g * heads * tq, cols: tk, dst: probs.raw, dstType: probs.type)
            // ctx[:, :, hd·d ..< (hd+1)·d] = P_hd · V_hd, written straight into merged-head layout.
            try engine.matmul(src: probs.view([g, heads, tq, tk]),
                              weights: v.view([g, heads, tk, d], strides: [tk * c, d, c, 1], offset: i * tk * c),
                              dst: ctx.view([g, heads, tq, d], strides: [tq * c, d, c, 1], offset: i * tq * c))
            i += g
        }
        return ctx
    }
}

/// `…layers.{l}`: pre-norm transformer block, `t += Attn(LN1(t)); t += MLP(LN2(t))`.
public final class CvtLayer: Module {
    /// `attention.attention`: the convolutional self-attention.
    public let attention: CvtSelfAttention
    /// `attention.output.dense`
    public let attentionOutput: Linear
    /// `intermediate.dense` (followed by exact GELU)
    public let intermediate: Linear
    /// `output.dense`
    public let output: Linear
    /// `layernorm_before` (before attention) and `layernorm_after` (before the MLP).
    public let layernormBefore: LayerNorm, layernormAfter: LayerNorm

    init(config c: CvtConfig, stage s: Int) {
        let dim = c.embedDim[s]
        attention = CvtSelfAttention(config: c, stage: s)
        attentionOutput = Linear(dim, dim)
        intermediate = Linear(dim, c.mlpHidden(s))
        output = Linear(c.mlpHidden(s), dim)
        layernormBefore = LayerNorm(dim); layernormAfter = LayerNorm(dim)
    }

    /// Visits `attention.attention.…`, `attention.output.dense`, `intermediate.dense`, `output.dense`, `layernorm_before` and `layernorm_after` under `prefix`.
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        try attention.visitParameters(v, prefix: joinKey(prefix, "attention.attention"))
        try attentionOutput.visitParameters(v, prefix: joinKey(prefix, "attention.output.dense"))
        try intermediate.visitParameters(v, prefix: joinKey(prefix, "intermediate.dense"))
        try output.visitParameters(v, prefix: joinKey(prefix, "output.dense"))
        try layernormBefore.visitParameters(v, prefix: joinKey(prefix, "layernorm_before"))
        try layernormAfter.visitParameters(v, prefix: joinKey(prefix, "layernorm_after"))
    }
    /// Drops the attention projections' derived weights after parameters were replaced.
    public func parametersDidChange() { attention.parametersDidChange() }

    /// Updates the residual stream `t` `[B, T, C]` in place. With `clsOnly` (the last layer when only
    /// the logits are wanted), only the CLS rows are updated: every token's keys and values are
    /// still computed, but the query, attention output and MLP run on the CLS row alone. The other
    /// rows keep their input values; per row, the arithmetic is the same as in the full layer.
    func callAsFunction(_ engine: Engine, _ t: inout Tensor, b: Int, h: Int, w: Int, clsOnly: Bool = false) throws {
        t.makeUnique()
        let rows = t.shape[0] * t.shape[1], c = t.shape[2]
        // In bf16 precision, activations that only matmuls read are produced as bf16 directly.
        let act: ElementType = engine.precision == .bfloat16 ? .bfloat16 : .float32
        let n = Tensor(uninitialized: t.shape)
        engine.timed("layernorm") { layernormBefore(src: t.unsafePointer, dst: n.unsafePointer, rows: rows) }
        if clsOnly {
            // The CLS rows of t: [B, C] views, T·C apart.
            let tokens = t.shape[1], inner = intermediate.outFeatures
            let clsRows = StridedView(t.unsafePointer, dims: [b, c], strides: [tokens * c, 1])
            let ctx = try attention(engine, n: n, b: b, h: h, w: w, type: act, clsQueryOnly: true)
            try attentionOutput(engine, src: ctx.view([b, c]), dst: clsRows, postOps: [.accumulate])
            let cls = Tensor(uninitialized: [b, c])
            engine.timed("copy") { Kernels.copyRows(t.unsafePointer, srcPitch: tokens * c, cls.unsafePointer, dstPitch: c, rows: b, cols: c) }
            let n2 = TypedBuffer(type: act, count: b * c)
            engine.timed("layernorm") { layernormAfter(src: cls.unsafePointer, dst: n2, rows: b) }
            let hidden = TypedBuffer(type: act, count: b * inner)
            try intermediate(engine, src: n2.view([b, c]), dst: hidden.view([b, inner]), postOps: [.gelu])
            try output(engine, src: hidden.view([b, inner]), dst: clsRows, postOps: [.accumulate])
            return
        }
        let ctx = try attention(engine, n: n, b: b, h: h, w: w, type: act)
        guard ctx.count == t.count else {
            throw CvtInputError("attention output (\(ctx.count) values) does not match the residual stream \(t.shape)")
        }
        // Residual adds are fused: the output projection accumulates into `t`.
        try attentionOutput(engine, src: ctx.view([rows, c]), dst: StridedView(dense: t.unsafePointer, dims: [rows, c]), postOps: [.accumulate])
        let n2 = act == .float32 ? TypedBuffer(n) : TypedBuffer(type: act, count: rows * c)
        engine.timed("layernorm") { layernormAfter(src: t.unsafePointer, dst: n2, rows: rows) }
        let hidden = TypedBuffer(type: act, count: rows * intermediate.outFeatures)
        try intermediate(engine, src: n2.view([rows, c]), dst: hidden.view([rows, intermediate.outFeatures]), postOps: [.gelu])
        try output(engine, src: hidden.view([rows, intermediate.outFeatures]), dst: StridedView(dense: t.unsafePointer, dims: [rows, c]), postOps: [.accumulate])
    }
}

/// `encoder.stages.{s}`: patch embedding, optional CLS token, `depth[s]` layers.
public final class CvtStage: Module {
    /// The stage's index, from 0.
    public let index: Int
    /// The stage's width `C_s` (`embed_dim[s]`).
    public let dim: Int
    /// `cls_token` `[1, 1, C_s]`. Beyond the reference: the original CvT gives a CLS to any stage with
    /// that stage's width (transformers uses `embed_dim[-1]` and breaks for non-last stages).
    public var clsToken: Tensor?
    /// Gradient of `clsToken`, accumulated by `backward` (zero-sized until then).
    public var clsTokenGrad = Tensor(zeros: [0])
    /// `embedding.convolution_embeddings`: the stage's patch embedding.
    public let embedding: CvtConvEmbeddings
    /// `layers`: the `depth[s]` transformer blocks.
    public let layers: [CvtLayer]

    init(config c: CvtConfig, stage s: Int) {
        index = s; dim = c.embedDim[s]
        clsToken = c.clsToken[s] ? Tensor(zeros: [1, 1, dim]) : nil
        embedding = CvtConvEmbeddings(inChannels: s == 0 ? c.numChannels : c.embedDim[s - 1], dim: dim,
                                      patch: c.patchSizes[s], stride: c.patchStride[s], padding: c.patchPadding[s])
        layers = (0..<c.depth[s]).map { _ in CvtLayer(config: c, stage: s) }
    }

    /// Visits `prefix.cls_token` (when present), the embedding and every layer (`prefix.layers.{l}.…`).
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        if clsToken != nil { try v.visit(joinKey(prefix, "cls_token"), &clsToken!, gradient: &clsTokenGrad, kind: .clsToken) }
        try embedding.visitParameters(v, prefix: joinKey(prefix, "embedding.convolution_embeddings"))
        for (l, layer) in layers.enumerated() { try layer.visitParameters(v, prefix: joinKey(prefix, "layers.\(l)")) }
    }
    /// Drops the embedding's and layers' derived weights after parameters were replaced.
    public func parametersDidChange() {
        embedding.parametersDidChange(); layers.forEach { $0.parametersDidChange() }
    }

    /// `x`: stage input, NCHW for stage 0 (`inputNCHW`) else dense NHWC `[B, H, W, C_in]`.
    /// Returns the tokens `[B, cls + H'·W', C]` (CLS in row 0) and the grid size. With
    /// `clsOnlyInLastLayer`, the last layer updates only the CLS rows (see `CvtLayer`).
    func callAsFunction(_ engine: Engine, _ x: Tensor, b: Int, h: Int, w: Int, inputNCHW: Bool,
                        clsOnlyInLastLayer: Bool = false) throws -> (Tensor, Int, Int) {
        let conv = embedding.projection
        let ho = conv.outputSize(h), wo = conv.outputSize(w)
        guard ho > 0, wo > 0 else {
            throw CvtInputError("stage \(index): a \(h)×\(w) input is too small for the \(conv.kernel)×\(conv.kernel) patch embedding with stride \(conv.stride) and padding \(conv.padding)")
        }
        let hw = ho * wo, cls = clsToken == nil ? 0 : 1, t = cls + hw
        let patches = Tensor(uninitialized: [b, hw, dim])
        var src = x
        if inputNCHW {
            // oneDNN has no fast NCHW-in/NHWC-out convolution (it falls back to a reference loop),
            // so the pixels are transposed to NHWC first: [B, C, H, W] → [B, H, W, C].
            src = Tensor(uninitialized: [b, h, w, conv.inChannels])
            engine.timed("layout") { Kernels.nchwToNHWC(x.unsafePointer, src.unsafePointer, n: b, c: conv.inChannels, h: h, w: w) }
        }
        try conv(engine, src: src.unsafePointer, n: b, h: h, w: w, srcNCHW: false, dst: patches.unsafePointer)
        var tokens = Tensor(uninitialized: [b, t, dim])
        engine.timed("layernorm") {
            for i in 0..<b {
                embedding.normalization(src: patches.unsafePointer + i * hw * dim, dst: tokens.unsafePointer + (i * t + cls) * dim, rows: hw)
                if let clsToken { (tokens.unsafePointer + i * t * dim).update(from: clsToken.unsafePointer, count: dim) }
            }
        }
        for (l, layer) in layers.enumerated() {
            try layer(engine, &tokens, b: b, h: ho, w: wo, clsOnly: clsOnlyInLastLayer && l == layers.count - 1)
        }
        return (tokens, ho, wo)
    }
}

/// Output of `CvtModel` (transformers' `BaseModelOutputWithCLSToken`).
public struct CvtModelOutput: Sendable {
    /// `[B, C_last, H, W]` (NCHW).
    public var lastHiddenState: Tensor
    /// `[B, 1, C_last]` when the last stage has a CLS token: its raw value after the last layer.
    public var clsTokenValue: Tensor?
    /// One NCHW `[B, C_s, H_s, W_s]` per stage (CLS removed), when requested.
    public var hiddenStates: [Tensor]?
}

/// transformers' `CvtModel` (keys without the `cvt.` prefix when used alone).
/// Sendable: every call that computes or changes weights runs on the engine exclusively
/// (`Engine.exclusively`), so tasks may share a model; its layers are reached through it.
public final class CvtModel: Module, @unchecked Sendable {
    /// The config the model was built from (validated).
    public let config: CvtConfig
    /// `encoder.stages`
    public let stages: [CvtStage]
    /// The engine this model computes on: its own unless one was passed to `init`.
    public var engine: Engine

    /// An encoder with zero parameters (load or initialise them through a visitor), on `engine` or on a new engine of its own.
    /// - Throws: `CvtConfigError` when `config` is invalid; `EngineError` when an engine cannot be created.
    public init(config: CvtConfig, engine: Engine? = nil) throws {
        try config.validate()
        self.config = config
        self.engine = try engine ?? Engine()
        stages = (0..<config.numStages).map { CvtStage(config: config, stage: $0) }
    }

    /// Visits every stage's parameters under `prefix.encoder.stages.{s}.…`.
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        for (s, stage) in stages.enumerated() { try stage.visitParameters(v, prefix: joinKey(prefix, "encoder.stages.\(s)")) }
    }
    /// Drops every stage's derived weights after parameters were replaced.
    public func parametersDidChange() { stages.forEach { $0.parametersDidChange() } }

    /// Every Linear layer of the encoder (they hold ~95% of the parameters).
    public var linearLayers: [Linear] { namedLinearLayers.map(\.layer) }

    /// The same with their checkpoint keys (without this module's prefix).
    public var namedLinearLayers: [(key: String, layer: Linear)] {
        stages.enumerated().flatMap { s, stage in
            stage.layers.enumerated().flatMap { i, l -> [(key: String, layer: Linear)] in
                let p = "encoder.stages.\(s).layers.\(i)."
                return [(p + "attention.attention.projection_query", l.attention.projectionQuery),
                        (p + "attention.attention.projection_key", l.attention.projectionKey),
                        (p + "attention.attention.projection_value", l.attention.projectionValue),
                        (p + "attention.output.dense", l.attentionOutput),
                        (p + "intermediate.dense", l.intermediate), (p + "output.dense", l.output)]
            }
        }
    }

    /// The stages on one engine: the hidden states (every stage's with `outputHiddenStates`, else
    /// only the last) as `[B, C, H, W]`, and the last stage's tokens `[B, T, C]`.
    /// With `clsOnly` (only the last CLS token is wanted; its stage must have one) no hidden state
    /// is made and the last layer updates only the CLS rows.
    private func runStages(_ engine: Engine, _ pixelValues: Tensor, outputHiddenStates: Bool,
                           clsOnly: Bool = false) throws -> (hidden: [Tensor], tokens: Tensor) {
        let b = pixelValues.shape[0]
        var x = pixelValues, h = pixelValues.shape[2], w = pixelValues.shape[3]
        var hidden: [Tensor] = []
        var tokens = pixelValues
        for stage in stages {
            let last = stage.index == stages.count - 1
            let (t, ho, wo) = try stage(engine, x, b: b, h: h, w: w, inputNCHW: stage.index == 0, clsOnlyInLastLayer: clsOnly && last)
            if clsOnly && last { return ([], t) }
            tokens = t
            let cls = stage.clsToken == nil ? 0 : 1
            // The next stage sees only the patch tokens, as dense NHWC [B, H, W, C].
            if cls == 0 {
                x = t
            } else {
                let p = Tensor(uninitialized: [b, ho * wo, stage.dim])
                Kernels.copyRows(t.unsafePointer + stage.dim, srcPitch: t.shape[1] * stage.dim, p.unsafePointer,
                                 dstPitch: ho * wo * stage.dim, rows: b, cols: ho * wo * stage.dim)
                x = p
            }
            if outputHiddenStates || stage.index == stages.count - 1 {
                let out = Tensor(uninitialized: [b, stage.dim, ho, wo])
                engine.timed("layout") { Kernels.tokensToNCHW(t.unsafePointer, rowsPerItem: t.shape[1], rowOffset: cls, out.unsafePointer, n: b, c: stage.dim, hw: ho * wo) }
                hidden.append(out)
            }
            h = ho; w = wo
        }
        return (hidden, tokens)
    }

    /// The input checks of every forward pass.
    func checkInput(_ pixelValues: Tensor) throws {
        guard pixelValues.rank == 4 else {
            throw CvtInputError("pixel_values must be [batch, channels, height, width], got shape \(pixelValues.shape)")
        }
        let b = pixelValues.shape[0], ch = pixelValues.shape[1]
        guard ch == config.numChannels else {
            throw CvtInputError("pixel_values has \(ch) channels but the model expects num_channels = \(config.numChannels)")
        }
        guard b > 0 else { throw CvtInputError("pixel_values has an empty batch") }
        guard pixelValues.shape[2] > 0, pixelValues.shape[3] > 0 else {
            throw CvtInputError("pixel_values has an empty image (shape \(pixelValues.shape))")
        }
    }

    /// `runStages` over the batch: split in parts across the threads when the engine does so.
    private func runBatch(_ pixelValues: Tensor, outputHiddenStates: Bool, clsOnly: Bool) throws -> (hidden: [Tensor], tokens: Tensor) {
        let b = pixelValues.shape[0]
        let parts = engine.batchParts(b)
        guard parts > 1 else { return try runStages(engine, pixelValues, outputHiddenStates: outputHiddenStates, clsOnly: clsOnly) }
        // Images are independent: each part of the batch runs on its own thread (and engine).
        let sizes = (0..<parts).map { b / parts + ($0 < b % parts ? 1 : 0) }
        let starts = sizes.indices.map { i in sizes[..<i].reduce(0, +) }
        let perImage = pixelValues.count / b
        var results = [(hidden: [Tensor], tokens: Tensor)?](repeating: nil, count: parts)
        try results.withUnsafeMutableBufferPointer { out in
            try engine.concurrently(parts) { i, worker in
                let x = Tensor(uninitialized: [sizes[i]] + pixelValues.shape.dropFirst())
                x.unsafePointer.update(from: pixelValues.unsafePointer + starts[i] * perImage, count: sizes[i] * perImage)
                out[i] = try runStages(worker, x, outputHiddenStates: outputHiddenStates, clsOnly: clsOnly)
            }
        }
        let done = results.compactMap { $0 }
        guard done.count == parts else { throw CvtInputError("a batch part produced no output") }
        let hidden = try done[0].hidden.indices.map { k in try Tensor(concatenatingBatches: done.map { $0.hidden[k] }) }
        return (hidden, try Tensor(concatenatingBatches: done.map(\.tokens)))
    }

    /// Row 0 of each image's tokens `[B, T, C]`: `[B, 1, C]`.
    private func clsValues(_ tokens: Tensor, dim: Int) -> Tensor {
        let b = tokens.shape[0]
        let v = Tensor(uninitialized: [b, 1, dim])
        Kernels.copyRows(tokens.unsafePointer, srcPitch: tokens.shape[1] * dim, v.unsafePointer, dstPitch: dim, rows: b, cols: dim)
        return v
    }

    /// Runs the encoder; also returns the last stage's tokens `[B, T, C]` for the head.
    func encode(_ pixelValues: Tensor, outputHiddenStates: Bool) throws -> (CvtModelOutput, Tensor) {
        try checkInput(pixelValues)
        let (hidden, tokens) = try runBatch(pixelValues, outputHiddenStates: outputHiddenStates, clsOnly: false)
        guard let last = hidden.last, let lastStage = stages.last else { throw CvtInputError("model has no stages") }
        let clsValue = lastStage.clsToken == nil ? nil : clsValues(tokens, dim: lastStage.dim)
        return (CvtModelOutput(lastHiddenState: last, clsTokenValue: clsValue, hiddenStates: outputHiddenStates ? hidden : nil), tokens)
    }

    /// Whether the last stage has a CLS token (whose final value `encodeCLS` computes on its own).
    var hasFinalCLS: Bool { stages.last?.clsToken != nil }

    /// Only the last stage's final CLS values `[B, 1, C]` (`clsTokenValue`, the classifier's input):
    /// the same numbers as `encode`, without the last layer's work on the other tokens (cvt-13: 7%
    /// of the FLOPs) or the hidden-state layout changes. Needs `hasFinalCLS`.
    func encodeCLS(_ pixelValues: Tensor) throws -> Tensor {
        try checkInput(pixelValues)
        guard let lastStage = stages.last, lastStage.clsToken != nil else {
            throw CvtInputError("internal: encodeCLS on a model whose last stage has no CLS token")
        }
        let (_, tokens) = try runBatch(pixelValues, outputHiddenStates: false, clsOnly: true)
        return clsValues(tokens, dim: lastStage.dim)
    }

    /// `pixelValues`: `[B, num_channels, H, W]` float32, any batch and size.
    public func callAsFunction(_ pixelValues: Tensor, outputHiddenStates: Bool = false) throws -> CvtModelOutput {
        try engine.exclusively { try encode(pixelValues, outputHiddenStates: outputHiddenStates).0 }
    }
}
