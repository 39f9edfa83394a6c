import CvtNN
import CvtTensor
import Foundation

// Training mode of transformers' CvT (`modeling_cvt.py`): the forward pass with dropout, drop
// path and batch-statistics BatchNorm, and its backward, module by module. Token buffers are
// `[B, T, C]` with the CLS (when present) in row 0; grids are NHWC `[B, H, W, C]`.

// MARK: - Q/K/V projection

extension CvtSelfAttentionProjection {
    /// What the projection's backward needs from its training forward.
    public struct Saved {
        let input: Tensor
        let bn: BatchNorm2d.Saved?
        let b: Int, h: Int, w: Int
    }

    /// Patch grid `[B, H, W, C]` → projected grid `[B, Ho, Wo, C]` (`linear`: the grid itself).
    func forwardTraining(_ x: Tensor, b: Int, h: Int, w: Int, c: Int) throws -> (Tensor, Saved) {
        let ho = outputSize(h), wo = outputSize(w)
        guard ho > 0, wo > 0 else {
            throw CvtInputError("the \(h)×\(w) token grid is too small for a \(kernel)×\(kernel) Q/K/V projection with stride \(stride) and padding \(padding)")
        }
        switch method {
        case .dwBN:
            guard let conv = convolution, let bn = normalization else { throw CvtInputError("internal: dw_bn projection without its layers") }
            // As PyTorch's batch_norm in training mode: one value per channel has no variance.
            guard b * ho * wo > 1 else {
                throw CvtInputError("Expected more than 1 value per channel when training: the Q/K/V BatchNorm sees a batch of \(b) image(s) with a \(ho)×\(wo) grid (use a larger batch or image, or drop the last partial batch)")
            }
            let y = conv.depthwiseForward(x, n: b, h: h, w: w)
            let (z, saved) = bn.forwardTraining(y)
            // The running statistics moved: the folded inference weights are stale.
            parametersDidChange()
            // The convolution's output is recomputed (bit for bit) for the BatchNorm backward
            // rather than kept: the depthwise conv is cheap, its output as large as the grid.
            return (z, Saved(input: x, bn: saved.droppingInput(), b: b, h: h, w: w))
        case .avg:
            let y = Tensor(uninitialized: [b, ho, wo, c])
            Kernels.avgPool2dNHWC(x.unsafePointer, n: b, h: h, w: w, c: c, kernel: kernel, stride: stride, padding: padding,
                                  y.unsafePointer, ho: ho, wo: wo)
            return (y, Saved(input: x, bn: nil, b: b, h: h, w: w))
        case .linear:
            return (x, Saved(input: x, bn: nil, b: b, h: h, w: w))
        }
    }

    /// Allocates (zero) gradients for a projection whose output no loss reads.
    func zeroGradients() {
        guard let conv = convolution, let bn = normalization else { return }
        _ = gradientStorage(&conv.weightGrad, conv.weight.shape)
        _ = gradientStorage(&bn.weightGrad, [bn.dim]); _ = gradientStorage(&bn.biasGrad, [bn.dim])
    }

    /// Gradient of the patch grid from the projected grid's gradient.
    func backward(_ s: Saved, dy: Tensor, c: Int) throws -> Tensor {
        switch method {
        case .dwBN:
            guard let conv = convolution, let bn = normalization, let bnSaved = s.bn else { return dy }
            let y = conv.depthwiseForward(s.input, n: s.b, h: s.h, w: s.w)
            let dconv = try bn.backward(bnSaved.with(input: y), dy: dy)
            return conv.depthwiseBackward(x: s.input, dy: dconv, n: s.b, h: s.h, w: s.w)
        case .avg:
            let dx = Tensor(uninitialized: [s.b, s.h, s.w, c])
            Kernels.avgPoolBackwardNHWC(dy: dy.unsafePointer, n: s.b, h: s.h, w: s.w, c: c, kernel: kernel, stride: stride,
                                        padding: padding, ho: outputSize(s.h), wo: outputSize(s.w), dx: dx.unsafePointer)
            return dx
        case .linear:
            return dy
        }
    }
}

// MARK: - self-attention

/// `[B, T, heads·d]` ↔ `[B, heads, T, d]` (identity for one head).
func splitHeads(_ x: Tensor, b: Int, t: Int, heads: Int, d: Int) -> Tensor {
    if heads == 1 { return x }
    let y = Tensor(uninitialized: [b, heads, t, d])
    Kernels.splitHeads(x.unsafePointer, y.unsafePointer, b: b, t: t, heads: heads, d: d)
    return y
}

func mergeHeads(_ x: Tensor, b: Int, t: Int, heads: Int, d: Int) -> Tensor {
    let c = heads * d
    if heads == 1 { return (try? x.reshaped([b, t, c])) ?? x }
    let y = Tensor(uninitialized: [b, t, c])
    Kernels.splitHeads(x.unsafePointer, y.unsafePointer, b: b, t: t, heads: heads, d: d, merge: true)
    return y
}

extension CvtSelfAttention {
    /// What the attention's backward needs from its training forward.
    public struct Saved {
        let b: Int, h: Int, w: Int, tq: Int, tk: Int
        /// What the three Linear projections and their conv projections kept.
        let linears: [Linear.Saved]
        let projections: [CvtSelfAttentionProjection.Saved]
        /// Head-major `[B, heads, T, d]`, as the matmuls read them.
        let q: TypedBuffer, k: TypedBuffer, v: TypedBuffer
        /// Softmax output `[B, heads, Tq, Tk]` (bfloat16 in bf16 precision, as autocast keeps it),
        /// the attention-dropout mask (scaled) if any, and the probabilities P·V read.
        let probs: TypedBuffer
        let dropMask: Tensor?
        let dropped: TypedBuffer
        /// Only the CLS token's query ran (`forwardTraining(clsQueryOnly:)`).
        let clsQueryOnly: Bool
    }

    /// `n` `[B, 1? + H·W, C]` → context `[B, Tq, C]` (heads merged). With `clsQueryOnly`, only the
    /// CLS token's context `[B, 1, C]`: its query is the Linear of its normalized value (the CLS
    /// skips the conv projection); the query's conv projection still runs for its BatchNorm's
    /// running statistics, as in the reference, but nothing downstream reads it.
    func forwardTraining(_ ctx: TrainingContext, _ n: Tensor, b: Int, h: Int, w: Int, attentionDropRate: Double,
                         clsQueryOnly: Bool = false) throws -> (Tensor, Saved) {
        let engine = ctx.engine, c = dim, cls = withClsToken ? 1 : 0, t = cls + h * w
        // Patch tokens as the NHWC grid [B, H, W, C] (rows 1… of each image when there is a CLS).
        let grid: Tensor
        if cls == 0 { grid = n } else {
            grid = Tensor(uninitialized: [b, h, w, c])
            Kernels.copyRows(n.unsafePointer + c, srcPitch: t * c, grid.unsafePointer, dstPitch: h * w * c, rows: b, cols: h * w * c)
        }
        var linears: [Linear.Saved] = [], saved: [CvtSelfAttentionProjection.Saved] = [], outs: [Tensor] = []
        for (proj, linear) in [(convolutionProjectionQuery, projectionQuery), (convolutionProjectionKey, projectionKey),
                               (convolutionProjectionValue, projectionValue)] {
            let (z, s) = try proj.forwardTraining(grid, b: b, h: h, w: w, c: c)
            let tp = cls + proj.outputSize(h) * proj.outputSize(w)
            // The CLS skips the conv projection and is prepended to its output: [B, 1 + Ho·Wo, C].
            var x = z
            if cls == 1 {
                x = Tensor(uninitialized: [b, tp, c])
                for i in 0..<b {
                    (x.unsafePointer + i * tp * c).update(from: n.unsafePointer + i * t * c, count: c)
                    (x.unsafePointer + (i * tp + 1) * c).update(from: z.unsafePointer + i * (tp - 1) * c, count: (tp - 1) * c)
                }
            }
            if clsQueryOnly && proj === convolutionProjectionQuery {
                // [B, 1, C]: the CLS rows only.
                x = Tensor(uninitialized: [b, 1, c])
                Kernels.copyRows(n.unsafePointer, srcPitch: t * c, x.unsafePointer, dstPitch: c, rows: b, cols: c)
            }
            x = try x.reshaped([b, x.count / (b * c), c])
            let (y, ls) = try linear.forward(engine, x)
            outs.append(y); linears.append(ls); saved.append(s)
        }
        let tq = outs[0].shape[1], tk = outs[1].shape[1], heads = numHeads, d = c / heads
        let q = engine.matmulOperand(splitHeads(outs[0], b: b, t: tq, heads: heads, d: d))
        let k = engine.matmulOperand(splitHeads(outs[1], b: b, t: tk, heads: heads, d: d))
        let v = engine.matmulOperand(splitHeads(outs[2], b: b, t: tk, heads: heads, d: d))
        let context = Tensor(uninitialized: [b, heads, tq, d])
        let perImage = heads * tq * tk
        let chunk = engine.precision == .bfloat16 ? max(1, min(b, ctx.attentionChunkBytes / max(1, perImage * MemoryLayout<Float>.stride))) : b
        let probs: TypedBuffer, droppedOperand: TypedBuffer, mask: Tensor?
        if chunk == b {
            // scores = (Q·Kᵀ)·scale per image and head; softmax over the keys.
            let scores = Tensor(uninitialized: [b, heads, tq, tk])
            try engine.gemm(m: tq, n: tk, k: d, a: TypedOperand(q), b: TypedOperand(k), transposeB: true, c: scores.unsafePointer,
                            batch: b * heads, scale: scale)
            Kernels.softmaxForward(scores.unsafePointer, scores.unsafePointer, rows: b * heads * tq, cols: tk)
            let dropped: Tensor
            (dropped, mask) = Dropout.forward(ctx, scores, p: attentionDropRate)
            probs = engine.matmulOperand(scores); droppedOperand = mask == nil ? probs : engine.matmulOperand(dropped)
            try engine.gemm(m: tq, n: d, k: tk, a: TypedOperand(droppedOperand), b: TypedOperand(v), c: context.unsafePointer, batch: b * heads)
        } else {
            // The same in chunks of images (bf16 precision, where only the bf16 probabilities are
            // kept): the float32 scores never exist for the whole batch. Dropout draws in the same
            // order, so the masks are those of one chunk.
            let full = TypedBuffer(type: .bfloat16, count: b * perImage)
            var fullMask: Tensor?, fullDropped: TypedBuffer?
            for i0 in stride(from: 0, to: b, by: chunk) {
                let nb = min(chunk, b - i0), n = nb * heads
                let pOff = i0 * perImage, qOff = i0 * heads * tq * d, kOff = i0 * heads * tk * d
                let scores = Tensor(uninitialized: [nb, heads, tq, tk])
                try engine.gemm(m: tq, n: tk, k: d, a: TypedOperand(q, offset: qOff), b: TypedOperand(k, offset: kOff), transposeB: true,
                                c: scores.unsafePointer, batch: n, scale: scale)
                Kernels.softmaxForward(scores.unsafePointer, scores.unsafePointer, rows: n * tq, cols: tk)
                Kernels.toBFloat16(scores.unsafePointer, full.raw + pOff * 2, count: scores.count)
                let (dropped, chunkMask) = Dropout.forward(ctx, scores, p: attentionDropRate)
                var operand = TypedOperand(full, offset: pOff)
                if let chunkMask {
                    if fullMask == nil { fullMask = Tensor(uninitialized: [b, heads, tq, tk]); fullDropped = TypedBuffer(type: .bfloat16, count: b * perImage) }
                    (fullMask!.unsafePointer + pOff).update(from: chunkMask.unsafePointer, count: chunkMask.count)
                    Kernels.toBFloat16(dropped.unsafePointer, fullDropped!.raw + pOff * 2, count: dropped.count)
                    operand = TypedOperand(fullDropped!, offset: pOff)
                }
                try engine.gemm(m: tq, n: d, k: tk, a: operand, b: TypedOperand(v, offset: kOff), c: context.unsafePointer + qOff, batch: n)
            }
            probs = full; mask = fullMask; droppedOperand = fullDropped ?? full
        }
        return (mergeHeads(context, b: b, t: tq, heads: heads, d: d),
                Saved(b: b, h: h, w: w, tq: tq, tk: tk, linears: linears, projections: saved, q: q, k: k, v: v, probs: probs,
                      dropMask: mask, dropped: droppedOperand, clsQueryOnly: clsQueryOnly))
    }

    /// Context gradient `[B, Tq, C]` → gradient of the normalized tokens `[B, 1? + H·W, C]`.
    func backward(_ ctx: TrainingContext, _ s: Saved, dContext: Tensor) throws -> Tensor {
        let engine = ctx.engine, c = dim, heads = numHeads, d = c / heads, b = s.b, tq = s.tq, tk = s.tk
        let dctx = engine.matmulOperand(splitHeads(dContext, b: b, t: tq, heads: heads, d: d))
        let dq = Tensor(uninitialized: [b, heads, tq, d]), dk = Tensor(uninitialized: [b, heads, tk, d])
        let dv = Tensor(uninitialized: [b, heads, tk, d])
        // Images in chunks: dP and dS are [B, heads, Tq, Tk] (stage 1 of cvt-13: 10 MB per image),
        // the largest arrays of a step, and nothing needs them beyond their chunk.
        let perImage = heads * tq * tk
        let chunk = max(1, min(b, ctx.attentionChunkBytes / max(1, perImage * MemoryLayout<Float>.stride)))
        for i0 in stride(from: 0, to: b, by: chunk) {
            let nb = min(chunk, b - i0), n = nb * heads
            let pOff = i0 * perImage, qOff = i0 * heads * tq * d, kOff = i0 * heads * tk * d
            // ctx = P·V: dP = dctx·Vᵀ, dV = Pᵀ·dctx.
            let dp = Tensor(uninitialized: [nb, heads, tq, tk])
            try engine.gemm(m: tq, n: tk, k: d, a: TypedOperand(dctx, offset: qOff), b: TypedOperand(s.v, offset: kOff), transposeB: true,
                            c: dp.unsafePointer, batch: n)
            try engine.gemm(m: tk, n: d, k: tq, a: TypedOperand(s.dropped, offset: pOff), transposeA: true, b: TypedOperand(dctx, offset: qOff),
                            c: dv.unsafePointer + kOff, batch: n, batchStrides: (tq * tk, tq * d, tk * d))
            if let mask = s.dropMask {
                let m = mask.unsafePointer + pOff, g = dp.unsafePointer
                for j in 0..<dp.count { g[j] *= m[j] }
            }
            // Softmax and the scale: dS = scale·P·(dP − Σ P·dP).
            let ds: TypedBuffer
            if s.probs.type == .bfloat16 {
                // bf16 probabilities in, the bf16 operand of the two matmuls below out.
                ds = TypedBuffer(type: .bfloat16, count: dp.count)
                Kernels.softmaxBackwardBFloat16(p: s.probs.raw + pOff * 2, dp: dp.unsafePointer, ds: ds.raw, rows: n * tq, cols: tk, scale: scale)
            } else {
                Kernels.softmaxBackward(p: s.probs.raw.assumingMemoryBound(to: Float.self) + pOff, dp: dp.unsafePointer, ds: dp.unsafePointer,
                                        rows: n * tq, cols: tk, scale: scale)
                ds = engine.matmulOperand(dp)
            }
            try engine.gemm(m: tq, n: d, k: tk, a: TypedOperand(ds), b: TypedOperand(s.k, offset: kOff), c: dq.unsafePointer + qOff, batch: n,
                            batchStrides: (tq * tk, tk * d, tq * d))
            try engine.gemm(m: tk, n: d, k: tq, a: TypedOperand(ds), transposeA: true, b: TypedOperand(s.q, offset: qOff), c: dk.unsafePointer + kOff,
                            batch: n, batchStrides: (tq * tk, tq * d, tk * d))
        }
        let grads = [mergeHeads(dq, b: b, t: tq, heads: heads, d: d), mergeHeads(dk, b: b, t: tk, heads: heads, d: d),
                     mergeHeads(dv, b: b, t: tk, heads: heads, d: d)]
        let cls = withClsToken ? 1 : 0, h = s.h, w = s.w, t = cls + h * w
        let dn = Tensor(pooledZeros: [b, t, c])
        let dgrid = Tensor(pooledZeros: [b, h, w, c])
        for (i, (proj, linear)) in [(convolutionProjectionQuery, projectionQuery), (convolutionProjectionKey, projectionKey),
                                    (convolutionProjectionValue, projectionValue)].enumerated() {
            guard let dx = try linear.backward(engine, s.linears[i], dy: grads[i]) else { continue }
            if i == 0, s.clsQueryOnly {
                // CLS-only query: its gradient goes to the CLS rows; the conv projection gets none
                // (zero gradients, as PyTorch's for outputs nothing reads).
                for j in 0..<b {
                    let row = dx.unsafePointer + j * c, dst = dn.unsafePointer + j * t * c
                    for k in 0..<c { dst[k] += row[k] }
                }
                proj.zeroGradients()
                continue
            }
            let tp = dx.shape[1]
            var dz = dx
            if cls == 1 {
                // Row 0 is the CLS's gradient; the rest belongs to the projected grid.
                dz = Tensor(uninitialized: [b, proj.outputSize(h), proj.outputSize(w), c])
                for j in 0..<b {
                    let row = dx.unsafePointer + j * tp * c, dst = dn.unsafePointer + j * t * c
                    for k in 0..<c { dst[k] += row[k] }
                    (dz.unsafePointer + j * (tp - 1) * c).update(from: row + c, count: (tp - 1) * c)
                }
            } else {
                dz = try dx.reshaped([b, proj.outputSize(h), proj.outputSize(w), c])
            }
            let dg = try proj.backward(s.projections[i], dy: dz, c: c)
            Kernels.add(dg.unsafePointer, into: dgrid.unsafePointer, count: dgrid.count)
        }
        if cls == 0 { return try dgrid.reshaped([b, t, c]) }
        for j in 0..<b { (dn.unsafePointer + (j * t + 1) * c).update(from: dgrid.unsafePointer + j * h * w * c, count: h * w * c) }
        return dn
    }
}

// MARK: - layer

extension CvtLayer {
    /// What the layer's backward needs from its training forward.
    public struct Saved {
        let ln1: LayerNorm.Saved, attention: CvtSelfAttention.Saved, attentionOutput: Linear.Saved
        let attentionDrop: Tensor?, path1: [Float]?
        let ln2: LayerNorm.Saved, intermediate: Linear.Saved, preActivation: TypedBuffer, output: Linear.Saved
        let outputDrop: Tensor?, path2: [Float]?
        let clsOnly: Bool
    }

    /// `CvtLayer.forward` in training mode. quirk: the second drop path covers the MLP output
    /// plus the residual, as in transformers (the original CvT drops the MLP branch only).
    /// With `clsOnly` (the model's last layer, when the head reads only the CLS token), the query,
    /// attention output and MLP run on the CLS rows alone and only those rows of the result are
    /// updated: the other rows' outputs reach no loss, so their gradients are exactly zero.
    func forwardTraining(_ ctx: TrainingContext, _ t: Tensor, b: Int, h: Int, w: Int, rates: CvtStageRates,
                         clsOnly: Bool = false) throws -> (Tensor, Saved) {
        let engine = ctx.engine
        let (n, ln1) = layernormBefore.forward(t)
        let (context, attn) = try attention.forwardTraining(ctx, n, b: b, h: h, w: w, attentionDropRate: rates.attentionDrop,
                                                            clsQueryOnly: clsOnly)
        let tokens = t.shape[1], c = t.shape[2]
        // The residual stream this layer updates: [B, T, C], or the CLS rows [B, 1, C].
        var residual = t
        if clsOnly {
            residual = Tensor(uninitialized: [b, 1, c])
            Kernels.copyRows(t.unsafePointer, srcPitch: tokens * c, residual.unsafePointer, dstPitch: c, rows: b, cols: c)
        }
        var (a, aoSaved) = try attentionOutput.forward(engine, context)
        let (a1, drop1) = Dropout.forward(ctx, a, p: rates.drop)
        let (a2, path1) = DropPath.forward(ctx, a1, p: rates.dropPath)
        a = a2
        let t1 = adding(a, residual)
        let (m, ln2) = layernormAfter.forward(t1)
        let (pre, imSaved) = try intermediate.forward(engine, m)
        let (kept, act) = GELU.forwardOperand(engine, pre)
        let (o, outSaved) = try output.forward(engine, operand: act, shape: pre.shape)
        let (o1, drop2) = Dropout.forward(ctx, o, p: rates.drop)
        var (t2, path2) = DropPath.forward(ctx, adding(o1, t1), p: rates.dropPath)
        if clsOnly {
            // The other rows keep their input values (nothing reads them).
            let full = t.pooledCopy()
            Kernels.copyRows(t2.unsafePointer, srcPitch: c, full.unsafePointer, dstPitch: tokens * c, rows: b, cols: c)
            t2 = full
        }
        return (t2, Saved(ln1: ln1, attention: attn, attentionOutput: aoSaved, attentionDrop: drop1, path1: path1, ln2: ln2,
                          intermediate: imSaved, preActivation: kept, output: outSaved.droppingInput(), outputDrop: drop2, path2: path2, clsOnly: clsOnly))
    }

    func backward(_ ctx: TrainingContext, _ s: Saved, dy: Tensor) throws -> Tensor {
        let engine = ctx.engine
        let b = dy.shape[0], tokens = dy.shape[1], c = dy.shape[2]
        var dOutput = dy
        if s.clsOnly {
            dOutput = Tensor(uninitialized: [b, 1, c])
            Kernels.copyRows(dy.unsafePointer, srcPitch: tokens * c, dOutput.unsafePointer, dstPitch: c, rows: b, cols: c)
        }
        // t2 = path2(dropout(output(GELU(intermediate(LN2(t1))))) + t1)
        let g = DropPath.backward(s.path2, dy: dOutput)
        let dt1 = g.pooledCopy()
        let dOut = Dropout.backward(s.outputDrop, dy: g)
        // The GELU output is recomputed from what the GELU kept (bit for bit) rather than kept too.
        let outputSaved = s.output.with(input: GELU.operand(kept: s.preActivation))
        guard var dPre = try output.backward(engine, outputSaved, dy: dOut) else { throw CvtInputError("internal: no gradient") }
        GELU.backward(kept: s.preActivation, dy: &dPre)
        guard let dm = try intermediate.backward(engine, s.intermediate, dy: dPre) else { throw CvtInputError("internal: no gradient") }
        layernormAfter.backward(s.ln2, dy: dm, into: dt1)
        // t1 = t + path1(dropout(dense(attention(LN1(t)))))
        let da = Dropout.backward(s.attentionDrop, dy: DropPath.backward(s.path1, dy: dt1))
        guard let dContext = try attentionOutput.backward(engine, s.attentionOutput, dy: da) else { throw CvtInputError("internal: no gradient") }
        let dn = try attention.backward(ctx, s.attention, dContext: dContext)
        guard s.clsOnly else {
            layernormBefore.backward(s.ln1, dy: dn, into: dt1)
            return dt1
        }
        let dt = layernormBefore.backward(s.ln1, dy: dn)
        for i in 0..<b { Kernels.add(dt1.unsafePointer + i * c, into: dt.unsafePointer + i * tokens * c, count: c) }
        return dt
    }
}

/// One stage's dropout rates in training.
struct CvtStageRates {
    var drop: Double, attentionDrop: Double, dropPath: Double
}

// MARK: - stage

extension CvtStage {
    /// What the stage's backward needs from its training forward.
    public struct Saved {
        let b: Int, h: Int, w: Int, ho: Int, wo: Int
        let conv: Conv2d.Saved, ln: LayerNorm.Saved, drop: Tensor?
        let layers: [CvtLayer.Saved]
    }

    /// NHWC input `[B, H, W, Cin]` → tokens `[B, 1? + Ho·Wo, C]`. With `clsOnlyInLastLayer`, the
    /// last layer updates only the CLS rows (see `CvtLayer.forwardTraining`).
    func forwardTraining(_ ctx: TrainingContext, _ x: Tensor, b: Int, h: Int, w: Int, rates: CvtStageRates,
                         clsOnlyInLastLayer: Bool = false) throws -> (Tensor, Saved) {
        let conv = embedding.projection
        let ho = conv.outputSize(h), wo = conv.outputSize(w)
        guard ho > 0, wo > 0 else {
            throw CvtInputError("stage \(index): a \(h)×\(w) input is too small for the \(conv.kernel)×\(conv.kernel) patch embedding with stride \(conv.stride) and padding \(conv.padding)")
        }
        let (patches, convSaved) = try conv.forward(ctx.engine, x, n: b, h: h, w: w)
        let (normed, lnSaved) = embedding.normalization.forward(patches)
        let (embedded, drop) = Dropout.forward(ctx, normed, p: rates.drop)
        let hw = ho * wo, cls = clsToken == nil ? 0 : 1, t = cls + hw
        var tokens = try embedded.reshaped([b, hw, dim])
        if let clsToken {
            // [B, H·W, C] → [B, 1 + H·W, C], the learned CLS in row 0 of every image.
            tokens = Tensor(uninitialized: [b, t, dim])
            for i in 0..<b {
                (tokens.unsafePointer + i * t * dim).update(from: clsToken.unsafePointer, count: dim)
                (tokens.unsafePointer + (i * t + 1) * dim).update(from: embedded.unsafePointer + i * hw * dim, count: hw * dim)
            }
        }
        var saved: [CvtLayer.Saved] = []
        for (l, layer) in layers.enumerated() {
            let (next, s) = try layer.forwardTraining(ctx, tokens, b: b, h: ho, w: wo, rates: rates,
                                                      clsOnly: clsOnlyInLastLayer && clsToken != nil && l == layers.count - 1)
            tokens = next; saved.append(s)
        }
        return (tokens, Saved(b: b, h: h, w: w, ho: ho, wo: wo, conv: convSaved, ln: lnSaved, drop: drop, layers: saved))
    }

    /// Tokens' gradient → the NHWC input's gradient (nil when `inputGradient` is false: pixels).
    func backward(_ ctx: TrainingContext, _ s: Saved, dTokens: Tensor, inputGradient: Bool) throws -> Tensor? {
        var dt = dTokens
        for (layer, saved) in zip(layers, s.layers).reversed() { dt = try layer.backward(ctx, saved, dy: dt) }
        let hw = s.ho * s.wo, b = s.b
        var dEmbedded = dt
        if clsToken != nil {
            let t = 1 + hw
            let grad = gradientStorage(&clsTokenGrad, [1, 1, dim])
            dEmbedded = Tensor(uninitialized: [b, hw, dim])
            for i in 0..<b {
                let row = dt.unsafePointer + i * t * dim
                for k in 0..<dim { grad[k] += row[k] }
                (dEmbedded.unsafePointer + i * hw * dim).update(from: row + dim, count: hw * dim)
            }
        }
        let dNormed = Dropout.backward(s.drop, dy: try dEmbedded.reshaped([b, s.ho, s.wo, dim]))
        let dPatches = embedding.normalization.backward(s.ln, dy: dNormed)
        return try embedding.projection.backward(ctx.engine, s.conv, dy: dPatches, inputGradient: inputGradient)
    }
}

// MARK: - model

extension CvtModel {
    /// What the encoder's backward needs from its training forward: one record per stage.
    public struct Saved {
        let stages: [CvtStage.Saved]
    }

    /// Per-stage rates; quirk: every layer of stage s gets element s of `linspace(0, rate, depth)`
    /// (transformers indexes by the stage, not the layer). Where the reference fails (depth ≤ s)
    /// the last element is used.
    func rates(_ s: Int) -> CvtStageRates {
        let depth = config.depth[s], rate = config.dropPathRate[s]
        let i = min(s, depth - 1)
        let dropPath = depth > 1 ? Double(Float(rate) * Float(i) / Float(depth - 1)) : 0
        return CvtStageRates(drop: config.dropRate[s], attentionDrop: config.attentionDropRate[s], dropPath: dropPath)
    }

    /// Pixels `[B, C, H, W]` → the last stage's tokens `[B, 1? + H·W, C]`.
    func forwardTraining(_ ctx: TrainingContext, _ pixelValues: Tensor) throws -> (Tensor, Saved) {
        try checkInput(pixelValues)
        let b = pixelValues.shape[0]
        var h = pixelValues.shape[2], w = pixelValues.shape[3]
        var x = Tensor(uninitialized: [b, h, w, config.numChannels])
        Kernels.nchwToNHWC(pixelValues.unsafePointer, x.unsafePointer, n: b, c: config.numChannels, h: h, w: w)
        var saved: [CvtStage.Saved] = [], tokens = x
        for stage in stages {
            // The head reads only the last stage's CLS token, when it has one.
            let (t, s) = try stage.forwardTraining(ctx, x, b: b, h: h, w: w, rates: rates(stage.index),
                                                   clsOnlyInLastLayer: stage.index == stages.count - 1)
            saved.append(s); tokens = t
            h = s.ho; w = s.wo
            if stage.clsToken == nil { x = t } else {
                // The next stage sees the patch tokens only, as the grid [B, H, W, C].
                x = Tensor(uninitialized: [b, h, w, stage.dim])
                Kernels.copyRows(t.unsafePointer + stage.dim, srcPitch: t.shape[1] * stage.dim, x.unsafePointer,
                                 dstPitch: h * w * stage.dim, rows: b, cols: h * w * stage.dim)
            }
        }
        return (tokens, Saved(stages: saved))
    }

    /// The last stage's token gradient → every parameter's gradient (the pixels get none).
    func backward(_ ctx: TrainingContext, _ s: Saved, dTokens: Tensor) throws {
        var dt = dTokens
        for (stage, saved) in zip(stages, s.stages).reversed() {
            guard let dx = try stage.backward(ctx, saved, dTokens: dt, inputGradient: stage.index > 0) else { break }
            let prev = stages[stage.index - 1]
            if prev.clsToken == nil { dt = dx } else {
                // The previous stage's CLS row left the stream there: its gradient is zero.
                let t = 1 + saved.h * saved.w
                dt = Tensor(pooledZeros: [saved.b, t, prev.dim])
                for i in 0..<saved.b {
                    (dt.unsafePointer + (i * t + 1) * prev.dim).update(from: dx.unsafePointer + i * (t - 1) * prev.dim, count: (t - 1) * prev.dim)
                }
            }
        }
    }
}

// MARK: - classifier

/// The result of one training forward and backward.
public struct TrainingStepOutput: Sendable {
    /// The loss of the micro-batch, before `lossScale` is applied.
    public var loss: Float
    /// `[B, num_labels]`
    public var logits: Tensor
}

extension CvtForImageClassification {
    /// Forward in training mode, the loss of `labels` (transformers' choice of loss; or, with
    /// `lossFunction`, that function of the logits), and the backward: every parameter's gradient
    /// is ADDED to its gradient tensor, times `lossScale` (1/K for K accumulated micro-batches).
    /// BatchNorm running statistics move as in PyTorch's `train()` mode.
    public func forwardBackward(_ pixelValues: Tensor, labels: Labels, context: TrainingContext, lossScale: Float = 1,
                                lossFunction: ((Tensor) throws -> (loss: Float, gradient: Tensor))? = nil) throws -> TrainingStepOutput {
        try context.engine.exclusively(precision: precision) {
            try trainingPass(pixelValues, labels: labels, context: context, lossScale: lossScale, lossFunction: lossFunction)
        }
    }

    private func trainingPass(_ pixelValues: Tensor, labels: Labels, context: TrainingContext, lossScale: Float,
                              lossFunction: ((Tensor) throws -> (loss: Float, gradient: Tensor))?) throws -> TrainingStepOutput {
        let (tokens, saved) = try cvt.forwardTraining(context, pixelValues)
        let b = tokens.shape[0], c = layernorm.dim, cls = cvt.hasFinalCLS
        // Head: LayerNorm of the final CLS, or of every token then their mean (spec of `CvtForImageClassification`).
        let rows: Tensor
        if cls {
            rows = Tensor(uninitialized: [b, c])
            Kernels.copyRows(tokens.unsafePointer, srcPitch: tokens.shape[1] * c, rows.unsafePointer, dstPitch: c, rows: b, cols: c)
        } else {
            rows = tokens
        }
        let (normed, lnSaved) = layernorm.forward(rows)
        let t = cls ? 1 : tokens.shape[1]
        let pooled = Tensor(zeros: [b, c])
        for i in 0..<b {
            let dst = pooled.unsafePointer + i * c
            for r in 0..<t { let row = normed.unsafePointer + (i * t + r) * c; for k in 0..<c { dst[k] += row[k] } }
            if t > 1 { for k in 0..<c { dst[k] /= Float(t) } }
        }
        let head = try classifier.map { try $0.forward(context.engine, pooled) }
        let logits = head?.0 ?? pooled
        let (loss, gradient) = try lossFunction?(logits) ?? lossAndGradient(logits: logits, labels: labels)
        guard loss.isFinite else { return TrainingStepOutput(loss: loss, logits: logits) }
        var dLogits = gradient
        if lossScale != 1 { dLogits.makeUnique(); Kernels.scale(dLogits.unsafePointer, count: dLogits.count, by: lossScale) }
        var dPooled = dLogits
        if let classifier, let saved = head?.1 {
            guard let d = try classifier.backward(context.engine, saved, dy: dLogits) else { throw CvtInputError("internal: no gradient") }
            dPooled = d
        }
        let dNormed = Tensor(uninitialized: [b * t, c])
        for i in 0..<b { for r in 0..<t {
            let dst = dNormed.unsafePointer + (i * t + r) * c, src = dPooled.unsafePointer + i * c
            for k in 0..<c { dst[k] = t > 1 ? src[k] / Float(t) : src[k] }
        } }
        let dRows = layernorm.backward(lnSaved, dy: dNormed)
        var dTokens = dRows
        if cls {
            dTokens = Tensor(pooledZeros: tokens.shape)
            Kernels.copyRows(dRows.unsafePointer, srcPitch: c, dTokens.unsafePointer, dstPitch: tokens.shape[1] * c, rows: b, cols: c)
        }
        try cvt.backward(context, saved, dTokens: try dTokens.reshaped(tokens.shape))
        return TrainingStepOutput(loss: loss, logits: logits)
    }

    /// transformers' loss for `labels` (problem type inferred and kept, as `computeLoss`) and its
    /// gradient with respect to the logits.
    public func lossAndGradient(logits: Tensor, labels: Labels) throws -> (loss: Float, gradient: Tensor) {
        let loss = try computeLoss(logits: logits, labels: labels)
        let g = Tensor(uninitialized: logits.shape)
        switch config.problemType {
        case "regression":
            let y = try labelValues(labels)
            try Losses.mseGradient(logits.scalars, y, into: g.unsafePointer)
        case "single_label_classification":
            guard case .classIndices(let idx) = labels else { throw CvtInputError("single_label_classification needs integer class labels") }
            try Losses.crossEntropyGradient(logits: logits, labels: idx, into: g.unsafePointer)
        default:
            let y = try labelValues(labels)
            try Losses.bceWithLogitsGradient(logits.scalars, y, into: g.unsafePointer)
        }
        return (loss, g)
    }

    private func labelValues(_ labels: Labels) throws -> [Float] {
        switch labels {
        case .classIndices(let v): return v.map(Float.init)
        case .values(let t): return t.scalars
        }
    }
}
