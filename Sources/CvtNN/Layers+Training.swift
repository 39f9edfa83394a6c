import CvtTensor
import Foundation

// Training forward and backward of each layer, side by side. A forward returns its output and
// what its backward needs (`Saved`); a backward takes that and the output's gradient, adds the
// parameters' gradients into `weightGrad` / `biasGrad` (allocated on first use) and returns the
// input's gradient. Activations are dense row-major float32; matmuls run on the engine in its
// precision (bfloat16 operands with float32 accumulation in mixed precision, as PyTorch's CPU
// autocast runs linear layers and convolutions).

/// Randomness and switches of one training forward pass.
public final class TrainingContext {
    /// The engine the pass's matmuls and convolutions run on.
    public let engine: Engine
    /// Dropout, attention dropout and drop path active (off: deterministic, as for gradient checks).
    public let stochastic: Bool
    var rng: SplitMix64
    /// The most bytes of float32 attention-score gradients the backward holds at once: it runs
    /// the images of a batch in chunks of at most this much (at least one image per chunk). The
    /// result does not depend on it; it bounds the step's peak memory.
    public var attentionChunkBytes = 16 << 20

    /// A context on `engine`; `stochastic` turns dropout, attention dropout and drop path on, drawing from `SplitMix64(seed:)`.
    public init(engine: Engine, stochastic: Bool, seed: UInt64 = 0) {
        self.engine = engine; self.stochastic = stochastic; rng = SplitMix64(seed: seed)
    }

    /// Uniform in [0, 1) with 24 random bits, as float32 (PyTorch's `rand` resolution).
    func uniform() -> Float { Float(rng.next() >> 40) / Float(1 << 24) }
}

/// Makes `grad` a zero tensor of `shape` if it is not allocated yet; returns its writable storage.
@inline(__always)
public func gradientStorage(_ grad: inout Tensor, _ shape: [Int]) -> UnsafeMutablePointer<Float> {
    if grad.shape != shape { grad = Tensor(zeros: shape) }
    grad.makeUnique()
    return grad.unsafePointer
}

extension Engine {
    /// `c[m, n] (+)= op(a)·op(b)` on dense row-major buffers of float32 or bfloat16 (`a` is stored
    /// `[k, m]` when `transposeA`, `b` is stored `[n, k]` when `transposeB`), float32 `c`.
    public func gemm(m: Int, n: Int, k: Int, a: TypedOperand, transposeA: Bool = false, b: TypedOperand, transposeB: Bool = false,
                     c: UnsafeMutablePointer<Float>, accumulate: Bool = false, bias: UnsafePointer<Float>? = nil, batch: Int = 1,
                     batchStrides: (a: Int, b: Int, c: Int)? = nil, scale: Float? = nil) throws {
        if m == 0 || n == 0 { return }
        if k == 0 {
            if !accumulate { c.update(repeating: 0, count: batch * m * n) }
            return
        }
        let sa = transposeA ? [1, m] : [k, 1], sb = transposeB ? [1, k] : [n, 1]
        var ops: [PostOp] = []
        if let scale { ops.append(.scale(scale)) }
        if accumulate { ops.append(.accumulate) }
        if batch == 1 {
            try matmul(src: StridedView(raw: a.raw, type: a.type, dims: [m, k], strides: sa),
                       weights: StridedView(raw: b.raw, type: b.type, dims: [k, n], strides: sb),
                       bias: bias, dst: StridedView(dense: c, dims: [m, n]), postOps: ops)
        } else {
            let st = batchStrides ?? (m * k, k * n, m * n)
            try matmul(src: StridedView(raw: a.raw, type: a.type, dims: [batch, m, k], strides: [st.a] + sa),
                       weights: StridedView(raw: b.raw, type: b.type, dims: [batch, k, n], strides: [st.b] + sb),
                       bias: bias, dst: StridedView(c, dims: [batch, m, n], strides: [st.c, n, 1]), postOps: ops)
        }
    }

    /// The same on float32 buffers.
    public func gemm(m: Int, n: Int, k: Int, a: UnsafeMutablePointer<Float>, transposeA: Bool = false,
                     b: UnsafeMutablePointer<Float>, transposeB: Bool = false, c: UnsafeMutablePointer<Float>,
                     accumulate: Bool = false, bias: UnsafePointer<Float>? = nil, batch: Int = 1,
                     batchStrides: (a: Int, b: Int, c: Int)? = nil, scale: Float? = nil) throws {
        try gemm(m: m, n: n, k: k, a: TypedOperand(a), transposeA: transposeA, b: TypedOperand(b), transposeB: transposeB,
                 c: c, accumulate: accumulate, bias: bias, batch: batch, batchStrides: batchStrides, scale: scale)
    }

    /// `x` as this engine's matmuls take it: itself in float32 precision; in bfloat16 precision a
    /// bfloat16 copy, rounded once, which the forward and backward matmuls then share (and which
    /// halves what a layer keeps for its backward, as PyTorch's autocast keeps bf16 inputs).
    public func matmulOperand(_ x: Tensor) -> TypedBuffer {
        guard precision == .bfloat16 else { return TypedBuffer(x) }
        let b = TypedBuffer(type: .bfloat16, count: x.count)
        Kernels.toBFloat16(x.unsafePointer, b.raw, count: x.count)
        return b
    }
}

/// A dense matmul operand: a pointer and its element type.
public struct TypedOperand {
    /// Address of the first element.
    public let raw: UnsafeMutableRawPointer
    /// Element type (float32 or bfloat16).
    public let type: ElementType
    /// A float32 operand at `p`.
    public init(_ p: UnsafeMutablePointer<Float>) { raw = UnsafeMutableRawPointer(p); type = .float32 }
    /// An operand over `b`'s buffer, in its element type, starting `offset` elements in.
    public init(_ b: TypedBuffer, offset: Int = 0) { raw = b.raw + offset * b.type.byteCount; type = b.type }
}

// MARK: - Linear

extension Linear {
    /// What the backward needs: the input and the weight as the matmuls read them (bfloat16
    /// copies in bf16 precision).
    public struct Saved {
        /// nil when the caller recomputes it for the backward (`with(input:)`).
        let x: TypedBuffer?, w: TypedBuffer
        let shape: [Int]

        /// The same without the input, for a caller that can recompute it: the memory of a
        /// layer's input need not stay alive between its forward and backward.
        public func droppingInput() -> Saved { Saved(x: nil, w: w, shape: shape) }
        /// The same with the input recomputed.
        public func with(input x: TypedBuffer) -> Saved { Saved(x: x, w: w, shape: shape) }
    }

    /// The float32 `[out, in]` weight, unpacked and widened if inference had packed or compacted it.
    public func trainableWeight() throws -> Tensor {
        if weightStorage != .float32 || isPacked { try storeWeight(as: .float32) }
        return weight
    }

    /// `y[rows, out] = x[rows, in]·Wᵀ + b` (`x` is any shape ending in `in`).
    public func forward(_ engine: Engine, _ x: Tensor) throws -> (Tensor, Saved) {
        try forward(engine, operand: engine.matmulOperand(x), shape: x.shape)
    }

    /// The same on an input already in the engine's matmul type (`engine.matmulOperand`, or a
    /// fused kernel's bfloat16 output) of `shape`.
    public func forward(_ engine: Engine, operand xs: TypedBuffer, shape: [Int]) throws -> (Tensor, Saved) {
        let w = engine.matmulOperand(try trainableWeight())
        let rows = xs.count / inFeatures
        let y = Tensor(uninitialized: Array(shape.dropLast()) + [outFeatures])
        try engine.gemm(m: rows, n: outFeatures, k: inFeatures, a: TypedOperand(xs), b: TypedOperand(w), transposeB: true,
                        c: y.unsafePointer, bias: bias.map { UnsafePointer($0.unsafePointer) })
        return (y, Saved(x: xs, w: w, shape: shape))
    }

    /// `dW += dyᵀ·x`, `db += Σ_rows dy`; returns `dx = dy·W` unless `inputGradient` is false.
    public func backward(_ engine: Engine, _ s: Saved, dy: Tensor, inputGradient: Bool = true) throws -> Tensor? {
        guard let x = s.x else { throw TensorError("Linear.backward: the saved input was dropped and not recomputed (Saved.with(input:))") }
        let rows = x.count / inFeatures
        let g = engine.matmulOperand(dy)
        let dw = gradientStorage(&weightGrad, [outFeatures, inFeatures])
        try engine.gemm(m: outFeatures, n: inFeatures, k: rows, a: TypedOperand(g), transposeA: true, b: TypedOperand(x),
                        c: dw, accumulate: true)
        if bias != nil { Kernels.columnSums(dy.unsafePointer, rows: rows, cols: outFeatures, into: gradientStorage(&biasGrad, [outFeatures])) }
        guard inputGradient else { return nil }
        let dx = Tensor(uninitialized: s.shape)
        try engine.gemm(m: rows, n: inFeatures, k: outFeatures, a: TypedOperand(g), b: TypedOperand(s.w), c: dx.unsafePointer)
        return dx
    }
}

// MARK: - Conv2d (dense, as im2col + GEMM)

extension Conv2d {
    /// What the backward needs: the input patches and the weight in patch order, and the sizes.
    public struct Saved {
        /// Patches `[B·Ho·Wo, k·k·Cin]` in `(ky·k + kx)·Cin + ci` order and the weight in that
        /// order (`patchOrderWeight`), as the matmuls read them.
        let columns: TypedBuffer, weight: TypedBuffer
        let n: Int, h: Int, w: Int, ho: Int, wo: Int
    }

    /// The weight `[out, in, k, k]` reordered to `[out, (ky·k + kx)·in + ci]` (the patch order).
    func patchOrderWeight() -> Tensor {
        let cin = inChannels, kk = kernel * kernel
        let wp = Tensor(uninitialized: [outChannels, kk * cin])
        let src = weight.unsafePointer, dst = wp.unsafePointer
        if kk == 1 { dst.update(from: src, count: wp.count); return wp }
        for o in 0..<outChannels { for ci in 0..<cin { for p in 0..<kk { dst[(o * kk + p) * cin + ci] = src[(o * cin + ci) * kk + p] } } }
        return wp
    }

    /// NHWC `x` `[B, H, W, Cin]` → NHWC `[B, Ho, Wo, Cout]` (groups 1).
    public func forward(_ engine: Engine, _ x: Tensor, n: Int, h: Int, w: Int) throws -> (Tensor, Saved) {
        precondition(groups == 1, "Conv2d.forward trains dense convolutions; depthwise ones go through depthwiseForward")
        let ho = outputSize(h), wo = outputSize(w), patch = kernel * kernel * inChannels
        let patches = Tensor(uninitialized: [n * ho * wo, patch])
        Kernels.im2colNHWC(x.unsafePointer, n: n, h: h, w: w, c: inChannels, kernel: kernel, stride: stride, padding: padding,
                           ho: ho, wo: wo, patches.unsafePointer)
        let columns = engine.matmulOperand(patches)
        let y = Tensor(uninitialized: [n, ho, wo, outChannels])
        let wp = engine.matmulOperand(patchOrderWeight())
        try engine.gemm(m: n * ho * wo, n: outChannels, k: patch, a: TypedOperand(columns), b: TypedOperand(wp), transposeB: true,
                        c: y.unsafePointer, bias: bias.map { UnsafePointer($0.unsafePointer) })
        return (y, Saved(columns: columns, weight: wp, n: n, h: h, w: w, ho: ho, wo: wo))
    }

    /// Weight and bias gradients from `dy` `[B, Ho, Wo, Cout]`; the input's NHWC gradient unless
    /// `inputGradient` is false (the pixels need none).
    public func backward(_ engine: Engine, _ s: Saved, dy: Tensor, inputGradient: Bool = true) throws -> Tensor? {
        let rows = s.n * s.ho * s.wo, kk = kernel * kernel, patch = kk * inChannels
        let dwp = Tensor(uninitialized: [outChannels, patch]), g = engine.matmulOperand(dy)
        try engine.gemm(m: outChannels, n: patch, k: rows, a: TypedOperand(g), transposeA: true, b: TypedOperand(s.columns),
                        c: dwp.unsafePointer)
        let dw = gradientStorage(&weightGrad, weight.shape)
        let src = dwp.unsafePointer, cin = inChannels
        for o in 0..<outChannels { for ci in 0..<cin { for p in 0..<kk { dw[(o * cin + ci) * kk + p] += src[(o * kk + p) * cin + ci] } } }
        if bias != nil { Kernels.columnSums(dy.unsafePointer, rows: rows, cols: outChannels, into: gradientStorage(&biasGrad, [outChannels])) }
        guard inputGradient else { return nil }
        let dcols = Tensor(uninitialized: [rows, patch])
        try engine.gemm(m: rows, n: patch, k: outChannels, a: TypedOperand(g), b: TypedOperand(s.weight), c: dcols.unsafePointer)
        let dx = Tensor(uninitialized: [s.n, s.h, s.w, inChannels])
        Kernels.col2imNHWC(dcols.unsafePointer, n: s.n, h: s.h, w: s.w, c: inChannels, kernel: kernel, stride: stride,
                           padding: padding, ho: s.ho, wo: s.wo, dx.unsafePointer)
        return dx
    }

    /// The depthwise taps `[(ky·k + kx)·C + ch]` of a `[C, 1, k, k]` weight.
    func depthwiseTaps() -> Tensor {
        let c = outChannels, kk = kernel * kernel
        let taps = Tensor(uninitialized: [kk * c]), t = taps.unsafePointer, w = weight.unsafePointer
        for ch in 0..<c { for p in 0..<kk { t[p * c + ch] = w[ch * kk + p] } }
        return taps
    }

    /// Depthwise (groups == channels, no bias) NHWC `[B, H, W, C]` → `[B, Ho, Wo, C]`.
    public func depthwiseForward(_ x: Tensor, n: Int, h: Int, w: Int) -> Tensor {
        let ho = outputSize(h), wo = outputSize(w)
        let y = Tensor(uninitialized: [n, ho, wo, outChannels]), taps = depthwiseTaps()
        withExtendedLifetime(taps) {
            Kernels.depthwiseForward(x.unsafePointer, n: n, h: h, w: w, c: outChannels, taps: taps.unsafePointer,
                                     kernel: kernel, stride: stride, padding: padding, ho: ho, wo: wo, y.unsafePointer)
        }
        return y
    }

    /// Tap gradients from input `x` and `dy`; returns the input's gradient `[B, H, W, C]`.
    public func depthwiseBackward(x: Tensor, dy: Tensor, n: Int, h: Int, w: Int) -> Tensor {
        let ho = outputSize(h), wo = outputSize(w), c = outChannels, kk = kernel * kernel
        let dtaps = Tensor(zeros: [kk * c])
        Kernels.depthwiseBackwardWeight(x: x.unsafePointer, dy: dy.unsafePointer, n: n, h: h, w: w, c: c, kernel: kernel,
                                        stride: stride, padding: padding, ho: ho, wo: wo, dtaps: dtaps.unsafePointer)
        let dw = gradientStorage(&weightGrad, weight.shape), dt = dtaps.unsafePointer
        for ch in 0..<c { for p in 0..<kk { dw[ch * kk + p] += dt[p * c + ch] } }
        let dx = Tensor(uninitialized: [n, h, w, c]), taps = depthwiseTaps()
        withExtendedLifetime(taps) {
            Kernels.depthwiseBackwardData(dy: dy.unsafePointer, n: n, h: h, w: w, c: c, taps: taps.unsafePointer,
                                          kernel: kernel, stride: stride, padding: padding, ho: ho, wo: wo, dx: dx.unsafePointer)
        }
        return dx
    }
}

// MARK: - LayerNorm

extension LayerNorm {
    /// What the backward needs: the input and each row's mean and reciprocal standard deviation.
    public struct Saved {
        let x: Tensor, mean: Tensor, rstd: Tensor
    }

    /// Normalizes each row of `x` (any shape ending in `dim`).
    public func forward(_ x: Tensor) -> (Tensor, Saved) {
        let rows = x.count / dim
        let y = Tensor(uninitialized: x.shape), mean = Tensor(uninitialized: [rows]), rstd = Tensor(uninitialized: [rows])
        Kernels.layerNormForward(x.unsafePointer, y.unsafePointer, rows: rows, cols: dim, weight: weight.unsafePointer,
                                 bias: bias.unsafePointer, eps: eps, mean: mean.unsafePointer, rstd: rstd.unsafePointer)
        return (y, Saved(x: x, mean: mean, rstd: rstd))
    }

    /// Accumulates the weight and bias gradients; writes the input's gradient into `dx` (adding to
    /// it when `accumulate`, e.g. onto a residual stream's gradient) or into a new tensor.
    @discardableResult
    public func backward(_ s: Saved, dy: Tensor, into dx: Tensor? = nil) -> Tensor {
        let rows = s.x.count / dim
        let out = dx ?? Tensor(uninitialized: s.x.shape)
        Kernels.layerNormBackward(dy: dy.unsafePointer, x: s.x.unsafePointer, mean: s.mean.unsafePointer, rstd: s.rstd.unsafePointer,
                                  weight: weight.unsafePointer, rows: rows, cols: dim, dx: out.unsafePointer, accumulate: dx != nil,
                                  dweight: gradientStorage(&weightGrad, [dim]), dbias: gradientStorage(&biasGrad, [dim]))
        return out
    }
}

// MARK: - BatchNorm2d (training mode)

extension BatchNorm2d {
    /// What the backward needs: the input and the batch's per-channel mean and reciprocal standard deviation.
    public struct Saved {
        /// nil when the caller recomputes it for the backward (`with(input:)`).
        let x: Tensor?, mean: Tensor, rstd: Tensor

        /// The same without the input, for a caller that can recompute it bit for bit.
        public func droppingInput() -> Saved { Saved(x: nil, mean: mean, rstd: rstd) }
        /// The same with the input recomputed.
        public func with(input x: Tensor) -> Saved { Saved(x: x, mean: mean, rstd: rstd) }
    }

    /// PyTorch's training-mode BatchNorm on NHWC rows `[N·H·W, C]`: normalizes with the batch mean
    /// and biased variance, and moves the running statistics by momentum 0.1 towards the batch
    /// mean and the unbiased variance; counts the batch in `numBatchesTracked`.
    public func forwardTraining(_ x: Tensor) -> (Tensor, Saved) {
        let rows = x.count / dim
        let mean = Tensor(uninitialized: [dim]), variance = Tensor(uninitialized: [dim]), rstd = Tensor(uninitialized: [dim])
        Kernels.batchNormStatistics(x.unsafePointer, rows: rows, channels: dim, mean: mean.unsafePointer, variance: variance.unsafePointer)
        let momentum: Float = 0.1
        runningMean.makeUnique(); runningVar.makeUnique()
        // quirk: the running variance uses the unbiased estimate (n / (n − 1)), the normalization the biased one.
        let unbias = rows > 1 ? Float(Double(rows) / Double(rows - 1)) : Float.nan
        for c in 0..<dim {
            let v = variance.unsafePointer[c]
            rstd.unsafePointer[c] = 1 / (v + Float(eps)).squareRoot()
            runningMean.unsafePointer[c] = (1 - momentum) * runningMean.unsafePointer[c] + momentum * mean.unsafePointer[c]
            runningVar.unsafePointer[c] = (1 - momentum) * runningVar.unsafePointer[c] + momentum * (v * unbias)
        }
        numBatchesTracked += 1
        let y = Tensor(uninitialized: x.shape)
        Kernels.batchNormForward(x.unsafePointer, y.unsafePointer, rows: rows, channels: dim, mean: mean.unsafePointer,
                                 rstd: rstd.unsafePointer, weight: weight.unsafePointer, bias: bias.unsafePointer)
        return (y, Saved(x: x, mean: mean, rstd: rstd))
    }

    /// Accumulates the weight and bias gradients and returns the gradient of the input `[N·H·W, C]`.
    public func backward(_ s: Saved, dy: Tensor) throws -> Tensor {
        guard let x = s.x else { throw TensorError("BatchNorm2d.backward: the saved input was dropped and not recomputed (Saved.with(input:))") }
        let rows = x.count / dim
        let dx = Tensor(uninitialized: x.shape)
        Kernels.batchNormBackward(dy: dy.unsafePointer, x: x.unsafePointer, mean: s.mean.unsafePointer, rstd: s.rstd.unsafePointer,
                                  weight: weight.unsafePointer, rows: rows, channels: dim, dx: dx.unsafePointer,
                                  dweight: gradientStorage(&weightGrad, [dim]), dbias: gradientStorage(&biasGrad, [dim]))
        return dx
    }
}

// MARK: - GELU, dropout, drop path

/// Exact-erf GELU (`nn.GELU()`).
public enum GELU {
    /// `GELU(x) = x·Φ(x)` elementwise, as a new tensor of `x`'s shape.
    public static func forward(_ x: Tensor) -> Tensor {
        let y = Tensor(uninitialized: x.shape)
        Kernels.gelu(x.unsafePointer, y.unsafePointer, count: x.count)
        return y
    }

    /// GELU between two matmuls, on the engine's matmul type: returns the input as the backward
    /// keeps it and `GELU(x)` as the next matmul's operand. In bfloat16 precision both are
    /// bfloat16, as autocast runs Linear → GELU → Linear: the first Linear's output rounded once,
    /// GELU computed from it in float32, its result rounded once.
    public static func forwardOperand(_ engine: Engine, _ x: Tensor) -> (kept: TypedBuffer, y: TypedBuffer) {
        guard engine.precision == .bfloat16 else { return (TypedBuffer(x), TypedBuffer(forward(x))) }
        let kept = TypedBuffer(type: .bfloat16, count: x.count), y = TypedBuffer(type: .bfloat16, count: x.count)
        Kernels.geluBFloat16(x.unsafePointer, xBF16: kept.raw, yBF16: y.raw, count: x.count)
        return (kept, y)
    }

    /// `forwardOperand`'s `y` again, bit for bit, from what it kept (elementwise, so the thread
    /// split does not matter): a backward recomputes the activation rather than keeping it.
    public static func operand(kept x: TypedBuffer) -> TypedBuffer {
        switch x.type {
        case .bfloat16:
            let y = TypedBuffer(type: .bfloat16, count: x.count)
            Kernels.geluBFloat16(xBF16: x.raw, yBF16: y.raw, count: x.count)
            return y
        default:
            let y = Tensor(uninitialized: [x.count])
            Kernels.gelu(x.raw.assumingMemoryBound(to: Float.self), y.unsafePointer, count: x.count)
            return TypedBuffer(y)
        }
    }

    /// `dy ← dy·GELU'(x)`, in place, for an input kept by `forwardOperand` (the gradient of the
    /// MLP's widest activation needs no second buffer).
    public static func backward(kept x: TypedBuffer, dy: inout Tensor) {
        dy.makeUnique()
        let g = dy.unsafePointer
        switch x.type {
        case .bfloat16:
            Kernels.geluBackwardBFloat16(xBF16: x.raw, dy: g, dx: g, count: x.count)
        default:
            Kernels.geluBackward(x: x.raw.assumingMemoryBound(to: Float.self), dy: g, dx: g, count: x.count)
        }
    }
}

/// `nn.Dropout(p)`: zeroes each value with probability `p` and scales the rest by `1/(1 − p)`.
/// The mask (already scaled) is what the backward multiplies by; nil when inactive.
public enum Dropout {
    /// `x` with the dropout mask applied, and the mask; `(x, nil)` when the context is not stochastic or `p` is 0.
    public static func forward(_ ctx: TrainingContext, _ x: Tensor, p: Double) -> (Tensor, Tensor?) {
        guard ctx.stochastic, p > 0 else { return (x, nil) }
        let scale = p >= 1 ? 0 : Float(1 / (1 - p))
        let mask = Tensor(uninitialized: x.shape), m = mask.unsafePointer, threshold = Float(p)
        for i in 0..<mask.count { m[i] = ctx.uniform() < threshold ? 0 : scale }
        return (multiply(x, mask), mask)
    }

    /// `dy` times the mask (`dy` itself when the forward had no mask).
    public static func backward(_ mask: Tensor?, dy: Tensor) -> Tensor {
        guard let mask else { return dy }
        return multiply(dy, mask)
    }

    /// Elementwise product of two tensors of equal element count, with `a`'s shape.
    public static func multiply(_ a: Tensor, _ b: Tensor) -> Tensor {
        let y = Tensor(uninitialized: a.shape)
        let yp = y.unsafePointer, ap = a.unsafePointer, bp = b.unsafePointer
        for i in 0..<a.count { yp[i] = ap[i] * bp[i] }
        return y
    }
}

/// transformers' `CvtDropPath` (stochastic depth per sample): each image of `x` `[B, …]` is kept
/// with probability `1 − p` and then divided by `1 − p`, or zeroed. Returns the per-image factors.
public enum DropPath {
    /// `x` with each image scaled by its factor (0 or `1/(1 − p)`), and the factors; `(x, nil)` when the context is not stochastic or `p` is 0.
    public static func forward(_ ctx: TrainingContext, _ x: Tensor, p: Double) -> (Tensor, [Float]?) {
        guard ctx.stochastic, p > 0 else { return (x, nil) }
        let keep = Float(1 - p)
        // As the reference: floor(keep + U[0,1)) is 1 with probability keep.
        let factors = (0..<x.shape[0]).map { _ in (keep + ctx.uniform()).rounded(.down) / keep }
        return (scale(x, factors), factors)
    }

    /// `dy` with each image scaled by the forward's factor (`dy` itself when there were none).
    public static func backward(_ factors: [Float]?, dy: Tensor) -> Tensor {
        guard let factors else { return dy }
        return scale(dy, factors)
    }

    static func scale(_ x: Tensor, _ factors: [Float]) -> Tensor {
        let y = x.pooledCopy(), per = x.count / max(1, factors.count)
        for (b, f) in factors.enumerated() where f != 1 { Kernels.scale(y.unsafePointer + b * per, count: per, by: f) }
        return y
    }
}

/// `a + b` as a new tensor (residual adds).
public func adding(_ a: Tensor, _ b: Tensor) -> Tensor {
    let y = Tensor(uninitialized: a.shape)
    Kernels.sum(a.unsafePointer, b.unsafePointer, y.unsafePointer, count: y.count)
    return y
}
