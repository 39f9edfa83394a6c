import CvtTensor
import Foundation

/// `torch.nn.Linear`: `y = x·Wᵀ + b`, weight `[out, in]`.
public final class Linear: Module {
    /// Input and output feature counts (`in_features`, `out_features`).
    public let inFeatures: Int, outFeatures: Int
    /// float32 `[out, in]`; empty (`[0]`) while the weight is stored compactly (`storeWeight(as:)`)
    /// or packed for the engine (after the first forward pass). `float32Weight()` and the parameter
    /// visitors always see the float32 values.
    public var weight: Tensor
    /// Bias `[out]`, or nil for a layer made with `bias: false`.
    public var bias: Tensor?
    /// Gradients of `weight` `[out, in]` and `bias`, accumulated by `backward` (zero-sized until then).
    public var weightGrad = Tensor(zeros: [0]), biasGrad = Tensor(zeros: [0])
    /// Element type the weight is kept in: float32, or float16 / bfloat16 for half the memory.
    public private(set) var weightStorage: ElementType = .float32
    /// Wᵀ as dense `[in, out]` in `weightStorage` when that is not float32.
    private var compactWeight: TypedBuffer?
    /// `weight` as the engine consumes it (converted copies cached); dropped when parameters change.
    private var constant: ConstantWeights?
    /// The weight in the engine's blocked matmul layout. It replaces `weight` (float32 storage) or
    /// `compactWeight` (bfloat16 storage) instead of doubling the memory; `unpack()` restores them.
    private var packed: PackedWeights?
    /// Guards the derived forms above during forward passes (batch workers run this layer on
    /// several threads at once).
    private let lock = NSLock()

    /// A layer mapping `inFeatures` to `outFeatures` with zero weights (and a zero bias `[out]` unless `bias` is false); load or initialise them through a visitor.
    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true) {
        self.inFeatures = inFeatures; self.outFeatures = outFeatures
        weight = Tensor(zeros: [outFeatures, inFeatures])
        self.bias = bias ? Tensor(zeros: [outFeatures]) : nil
    }

    /// Visits `prefix.weight` (float32 `[out, in]`) and `prefix.bias`. Read-only visitors get a float32
    /// copy and leave the storage as it is; others convert it to float32, and back to the preferred
    /// storage afterwards.
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        // Visitors see the float32 weight. Read-only ones (saving, counting) get it (widened from
        // compact storage) with storage and caches untouched; the others (loading, init) turn the
        // layer back into float32 storage.
        if v.readsOnly {
            // (Shape-only visitors skip the widening and unpacking: seconds for cvt-w24.)
            var copy = v.readsValues ? try float32Weight() : Tensor(uninitialized: [outFeatures, inFeatures])
            try v.visit(joinKey(prefix, "weight"), &copy, kind: .weight(fanIn: inFeatures))
            if bias != nil { try v.visit(joinKey(prefix, "bias"), &bias!, kind: .bias) }
            return
        }
        try convertStorage(to: .float32)
        try v.visit(joinKey(prefix, "weight"), &weight, gradient: &weightGrad, kind: .weight(fanIn: inFeatures))
        if bias != nil { try v.visit(joinKey(prefix, "bias"), &bias!, gradient: &biasGrad, kind: .bias) }
        constant = nil
        // Loading layer by layer into compact storage keeps only one float32 weight alive at a time.
        do { try convertStorage(to: preferredStorage) } catch {
            throw TensorError("\(joinKey(prefix, "weight")): \(error)")
        }
    }

    /// Drops the cached engine form when `weight` was edited in place.
    public func parametersDidChange() {
        // `weight` / `compactWeight` were edited in place: they are the truth again.
        if packed == nil { constant = nil }
    }

    /// Storage that loading and initialisation convert the weight to (set by `storeWeight(as:)`).
    public private(set) var preferredStorage: ElementType = .float32

    /// Keeps the weight in `type` only, now and after later loads: float16 / bfloat16 halve its
    /// memory (rounding it once); float32 widens it back (the rounding stays). Matmuls widen half
    /// storage per call to the engine's precision; bfloat16 storage is used directly by a bfloat16 engine.
    /// Throws (changing nothing) when a value does not fit float16.
    public func storeWeight(as type: ElementType) throws {
        try convertStorage(to: type)
        preferredStorage = type
    }

    /// A weight value that float16 cannot hold (it would become infinity), if any.
    public func float16Overflow() throws -> Float? {
        let w = try float32Weight()
        return w.withUnsafeBufferPointer { b in b.first { $0.isFinite && Float16($0).isInfinite } }
    }

    private func convertStorage(to type: ElementType) throws {
        try unpack()
        if type == weightStorage { return }
        if type == .float16, let bad = try float16Overflow() {
            throw TensorError("weight value \(bad) is outside float16's range (±65504); keep this model in float32 or bfloat16")
        }
        let n = inFeatures * outFeatures
        if compactWeight != nil {
            weight = try float32Weight()
            compactWeight = nil
            weightStorage = .float32
        }
        constant = nil
        if type == .float32 { return }
        // Wᵀ dense [in, out]: the layout the matmul reads without a per-call transpose.
        let wt = Tensor(uninitialized: [inFeatures, outFeatures])
        Kernels.transpose(weight.unsafePointer, wt.unsafePointer, rows: outFeatures, cols: inFeatures)
        let compact = TypedBuffer(type: type, count: n, pooled: false)
        if type == .bfloat16 { Kernels.toBFloat16(wt.unsafePointer, compact.raw, count: n) } else { Kernels.toFloat16(wt.unsafePointer, compact.raw, count: n) }
        compactWeight = compact
        weight = Tensor(zeros: [0])
        weightStorage = type
    }

    /// Moves a packed weight back to its plain storage (`weight` or `compactWeight`).
    private func unpack() throws {
        guard let p = packed else { return }
        if p.type == .float32 {
            // Long-lived (or handed to the caller): not from the activation pool.
            let w = Tensor(zeros: [outFeatures, inFeatures])
            // Wᵀ [in, out] viewed on the [out, in] buffer: strides [1, in].
            try p.unpack(into: StridedView(w.unsafePointer, dims: [inFeatures, outFeatures], strides: [1, inFeatures]))
            weight = w
        } else {
            let c = TypedBuffer(type: p.type, count: inFeatures * outFeatures, pooled: false)
            try p.unpack(into: c.view([inFeatures, outFeatures]))
            compactWeight = c
        }
        packed = nil
        constant = nil
    }

    /// The weight as float32 `[out, in]` (widened from compact or packed storage when needed).
    public func float32Weight() throws -> Tensor {
        if let p = packed {
            let w = Tensor(zeros: [outFeatures, inFeatures])
            try p.unpack(into: StridedView(w.unsafePointer, dims: [inFeatures, outFeatures], strides: [1, inFeatures]))
            return w
        }
        guard let compact = compactWeight else { return weight }
        let n = inFeatures * outFeatures
        // From Wᵀ [in, out] back to [out, in].
        let wt = Tensor(uninitialized: [inFeatures, outFeatures])
        if compact.type == .bfloat16 { Kernels.fromBFloat16(compact.raw, wt.unsafePointer, count: n) } else { Kernels.fromFloat16(compact.raw, wt.unsafePointer, count: n) }
        let w = Tensor(zeros: [outFeatures, inFeatures])
        Kernels.transpose(wt.unsafePointer, w.unsafePointer, rows: inFeatures, cols: outFeatures)
        return w
    }

    /// Bytes held by the weight and bias.
    public var parameterBytes: Int {
        (packed?.bytes ?? compactWeight.map { $0.count * $0.type.byteCount } ?? weight.count * 4) + (bias?.count ?? 0) * 4
    }

    /// Blocked layouts pad K and N to their block sizes: narrow layers (a few dozen features) would
    /// grow by up to 4×, for matmuls too small to gain from packing, so they stay plain.
    private func packingPadsLittle(_ engine: Engine, _ type: ElementType) throws -> Bool {
        let plain = inFeatures * outFeatures * type.byteCount
        return try engine.packedBytes(k: inFeatures, n: outFeatures, type: type) * 8 <= plain * 9
    }

    /// Whether the weight is currently held in the engine's blocked layout.
    public var isPacked: Bool { packed != nil }
    /// The kernel the packed weight is laid out for (nil while plain).
    public var packedKernel: LinearKernel? { packed?.kernel }

    /// `dst[rows, out] = src[rows, in]·Wᵀ + b`, then `postOps` (`.accumulate` adds to `dst`).
    public func callAsFunction(_ engine: Engine, src: UnsafeMutablePointer<Float>, rows: Int,
                               dst: UnsafeMutablePointer<Float>, postOps: [PostOp] = []) throws {
        try self(engine, src: StridedView(dense: src, dims: [rows, inFeatures]), dst: StridedView(dense: dst, dims: [rows, outFeatures]), postOps: postOps)
    }

    /// Same on typed views: `src` `[rows, in]`, `dst` `[rows, out]` (bfloat16 only in bf16 precision).
    public func callAsFunction(_ engine: Engine, src: StridedView, dst: StridedView, postOps: [PostOp] = []) throws {
        let biasPointer = bias.map { UnsafePointer($0.unsafePointer) }
        let (p, w) = try weightsForEngine(engine)
        if let p {
            try engine.matmul(src: src, packed: p, bias: biasPointer, dst: dst, postOps: postOps)
        } else if let w {
            try engine.matmul(src: src, weights: w, bias: biasPointer, dst: dst, postOps: postOps)
        }
    }

    /// The weight in the form `engine` runs: packed (made on first use, replacing the plain copy)
    /// or a plain view. The returned objects keep their memory alive even if another thread
    /// changes this layer's form meanwhile.
    private func weightsForEngine(_ engine: Engine) throws -> (PackedWeights?, ConstantWeights?) {
        lock.lock(); defer { lock.unlock() }
        let packType = engine.packedType(forStorage: weightStorage)
        if let p = packed, p.type != packType || !engine.packsWeights || p.kernel != engine.packingKernel(p.type) { try unpack() }
        if packed == nil, engine.packsWeights, let packType, try packingPadsLittle(engine, packType) {
            // The plain weight is dropped once packed: the layer holds one copy (Wᵀ re-blocked).
            if let compact = compactWeight {
                packed = try engine.packWeights(compact.view([inFeatures, outFeatures]))
                compactWeight = nil
            } else {
                packed = try engine.packWeights(StridedView(weight.unsafePointer, dims: [inFeatures, outFeatures], strides: [1, inFeatures]))
                weight = Tensor(zeros: [0])
            }
            constant = nil
        }
        if let p = packed { return (p, nil) }
        if let c = constant { return (nil, c) }
        let w: ConstantWeights
        if let compact = compactWeight {
            w = ConstantWeights(compact.view([inFeatures, outFeatures]), owner: compact)
        } else {
            // Wᵀ as a strided view of the PyTorch [out, in] weight: dims [in, out], strides [1, in].
            w = ConstantWeights(StridedView(weight.unsafePointer, dims: [inFeatures, outFeatures], strides: [1, inFeatures]), owner: weight)
        }
        constant = w
        return (nil, w)
    }
}

/// `torch.nn.Conv2d` with square kernel, zero padding and groups. Weight `[out, in/groups, k, k]`.
public final class Conv2d: Module {
    /// `in_channels`, `out_channels`, `kernel_size` (square), `stride`, `padding` (zeros, on every side) and `groups`.
    public let inChannels: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int, groups: Int
    /// float32 `[out, in/groups, k, k]`.
    public var weight: Tensor
    /// Bias `[out]`, or nil for a layer made with `bias: false`.
    public var bias: Tensor?
    /// Gradients of `weight` and `bias`, accumulated by `backward` (zero-sized until then).
    public var weightGrad = Tensor(zeros: [0]), biasGrad = Tensor(zeros: [0])
    private var packed: ConvWeights?
    private let lock = NSLock()

    /// A convolution with zero weights `[out, in/groups, k, k]` (and a zero bias `[out]` unless `bias` is false).
    public init(_ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int, padding: Int, groups: Int = 1, bias: Bool = true) {
        self.inChannels = inChannels; self.outChannels = outChannels
        self.kernel = kernel; self.stride = stride; self.padding = padding; self.groups = groups
        weight = Tensor(zeros: [outChannels, inChannels / groups, kernel, kernel])
        self.bias = bias ? Tensor(zeros: [outChannels]) : nil
    }

    /// Visits `prefix.weight` and `prefix.bias` (with their gradients); a writing visitor drops the engine form.
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        try v.visit(joinKey(prefix, "weight"), &weight, gradient: &weightGrad, kind: .weight(fanIn: inChannels / groups * kernel * kernel))
        if bias != nil { try v.visit(joinKey(prefix, "bias"), &bias!, gradient: &biasGrad, kind: .bias) }
        if !v.readsOnly { packed = nil }
    }

    /// Drops the engine form of the weights, rebuilt at the next call.
    public func parametersDidChange() { packed = nil }

    /// The output length along one axis for an input of length `n`: `(n + 2·padding − kernel) / stride + 1` (0 when the kernel does not fit).
    public func outputSize(_ n: Int) -> Int {
        let span = n + 2 * padding - kernel
        return span < 0 ? 0 : span / stride + 1
    }

    /// `override` (e.g. BatchNorm folded in), or this layer's weights in the engine's form (made once).
    private func engineWeights(_ override: ConvWeights?) -> ConvWeights {
        if let override { return override }
        lock.lock(); defer { lock.unlock() }
        if let p = packed { return p }
        let weights = ConvWeights(weight: weight, bias: bias, groups: groups)
        packed = weights
        return weights
    }

    /// Runs the convolution with these weights, or with `override` (e.g. BatchNorm folded in).
    public func callAsFunction(_ engine: Engine, src: UnsafeMutablePointer<Float>, n: Int, h: Int, w: Int, srcNCHW: Bool,
                               dst: UnsafeMutablePointer<Float>, override: ConvWeights? = nil) throws {
        let weights = engineWeights(override)
        try engine.conv2d(src: src, srcDims: [n, inChannels, h, w], srcNCHW: srcNCHW, weights: weights,
                          stride: (stride, stride), padding: (padding, padding), dst: dst, dstHW: (outputSize(h), outputSize(w)))
    }

    /// Runs this depthwise convolution (groups == channels) on NHWC images `srcImageStride` floats
    /// apart into NHWC images `dstImageStride` floats apart (see `Engine.depthwiseConv2d`).
    public func depthwise(_ engine: Engine, src: UnsafeMutablePointer<Float>, srcImageStride: Int, n: Int, h: Int, w: Int,
                          dst: UnsafeMutablePointer<Float>, dstImageStride: Int, override: ConvWeights? = nil) throws {
        let weights = engineWeights(override)
        try engine.depthwiseConv2d(src: src, srcImageStride: srcImageStride, n: n, c: inChannels, h: h, w: w, weights: weights,
                                   stride: stride, padding: padding, dst: dst, dstImageStride: dstImageStride,
                                   dstHW: (outputSize(h), outputSize(w)))
    }
}

/// `torch.nn.LayerNorm` over the last axis. quirk: CvT's LayerNorms all use PyTorch's default
/// eps 1e-5; `config.layer_norm_eps` is never read by the reference.
public final class LayerNorm: Module {
    /// Size of the normalised (last) axis.
    public let dim: Int
    /// The epsilon added to the variance (1e-5, PyTorch's default).
    public let eps: Float
    /// Scale γ `[dim]`, initially ones.
    public var weight: Tensor
    /// Shift β `[dim]`, initially zeros.
    public var bias: Tensor
    /// Gradients, accumulated by `backward` (zero-sized until then).
    public var weightGrad = Tensor(zeros: [0]), biasGrad = Tensor(zeros: [0])

    /// A LayerNorm over `dim` features with unit scale and zero shift.
    public init(_ dim: Int, eps: Float = 1e-5) {
        self.dim = dim; self.eps = eps
        weight = Tensor(zeros: [dim], value: 1); bias = Tensor(zeros: [dim])
    }

    /// Visits `prefix.weight` and `prefix.bias` with their gradients.
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        try v.visit(joinKey(prefix, "weight"), &weight, gradient: &weightGrad, kind: .normWeight)
        try v.visit(joinKey(prefix, "bias"), &bias, gradient: &biasGrad, kind: .normBias)
    }

    /// Nothing to rebuild: the parameters are read directly.
    public func parametersDidChange() {}

    /// Normalises `rows` contiguous rows of `dim` floats from `src` into `dst`.
    public func callAsFunction(src: UnsafePointer<Float>, dst: UnsafeMutablePointer<Float>, rows: Int) {
        Kernels.layerNorm(src, dst, rows: rows, cols: dim, weight: weight.unsafePointer, bias: bias.unsafePointer, eps: eps)
    }

    /// Writes `dst` as `dst.type` (bfloat16 feeds a bf16 matmul directly).
    public func callAsFunction(src: UnsafePointer<Float>, dst: TypedBuffer, rows: Int) {
        if dst.type == .float32 {
            Kernels.layerNorm(src, dst.raw.assumingMemoryBound(to: Float.self), rows: rows, cols: dim,
                              weight: weight.unsafePointer, bias: bias.unsafePointer, eps: eps)
        } else {
            Kernels.layerNormBFloat16(src, dst.raw, rows: rows, cols: dim, weight: weight.unsafePointer, bias: bias.unsafePointer, eps: eps)
        }
    }
}

/// `torch.nn.BatchNorm2d` in eval mode (running statistics), eps 1e-5.
public final class BatchNorm2d: Module {
    /// Number of channels.
    public let dim: Int
    /// The epsilon added to the running variance (PyTorch's default).
    public let eps: Double = 1e-5
    /// Scale γ, shift β, running mean and running variance, each `[dim]` (`weight`, `bias`, `running_mean`, `running_var`).
    public var weight: Tensor, bias: Tensor, runningMean: Tensor, runningVar: Tensor
    /// `num_batches_tracked`: training-mode forward passes so far (saved with the checkpoint).
    public var numBatchesTracked = 0
    /// Gradients, accumulated by `backward` (zero-sized until then).
    public var weightGrad = Tensor(zeros: [0]), biasGrad = Tensor(zeros: [0])

    /// A BatchNorm over `dim` channels with unit scale, zero shift, zero running mean and unit running variance.
    public init(_ dim: Int) {
        self.dim = dim
        weight = Tensor(zeros: [dim], value: 1); bias = Tensor(zeros: [dim])
        runningMean = Tensor(zeros: [dim]); runningVar = Tensor(zeros: [dim], value: 1)
    }

    /// Visits `prefix.weight`, `prefix.bias` (with gradients), `prefix.running_mean` and `prefix.running_var`.
    public func visitParameters(_ v: ParameterVisitor, prefix: String) throws {
        try v.visit(joinKey(prefix, "weight"), &weight, gradient: &weightGrad, kind: .batchNormWeight)
        try v.visit(joinKey(prefix, "bias"), &bias, gradient: &biasGrad, kind: .batchNormBias)
        try v.visit(joinKey(prefix, "running_mean"), &runningMean, kind: .runningMean)
        try v.visit(joinKey(prefix, "running_var"), &runningVar, kind: .runningVar)
    }

    /// Nothing to rebuild: folding happens per call.
    public func parametersDidChange() {}

    /// The preceding bias-free conv with this BatchNorm folded in:
    /// `w' = w·γ/√(σ²+ε)`, `b' = β − μ·γ/√(σ²+ε)` (exact up to float rounding).
    public func folded(into conv: Conv2d) -> ConvWeights {
        var w = conv.weight
        var b = Tensor(zeros: [dim])
        let per = w.count / dim
        w.withUnsafeMutableBufferPointer { wp in
            b.withUnsafeMutableBufferPointer { bp in
                for c in 0..<dim {
                    let s = Double(weight[flat: c]) / (Double(runningVar[flat: c]) + eps).squareRoot()
                    for i in 0..<per { wp[c * per + i] = Float(Double(wp[c * per + i]) * s) }
                    let convBias = conv.bias.map { Double($0[flat: c]) } ?? 0
                    bp[c] = Float((convBias - Double(runningMean[flat: c])) * s + Double(bias[flat: c]))
                }
            }
        }
        return ConvWeights(weight: w, bias: b, groups: conv.groups)
    }
}
