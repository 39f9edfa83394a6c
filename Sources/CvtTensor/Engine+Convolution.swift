import CDNNL
import CKernels
import Foundation

// Convolutions: oneDNN's, im2col on our AVX2 GEMM, and our depthwise kernel.
extension Engine {
    // MARK: - convolution
    /// Pixels per output channel from which a convolution runs fused per pixel block (`ck_conv_nhwc`)
    /// rather than as one im2col and one GEMM split by weight panels.
    static let fusedConvPixelsPerChannel = 8

    /// 2-D convolution (groups allowed, zero padding, bias optional). `src` is `[N, C, H, W]` dims
    /// stored NCHW (`srcNCHW`) or NHWC; `dst` is dense NHWC `[N, H', W', O]`.
    public func conv2d(src: UnsafeMutablePointer<Float>, srcDims: [Int], srcNCHW: Bool, weights: ConvWeights,
                       stride: (Int, Int), padding: (Int, Int), dst: UnsafeMutablePointer<Float>, dstHW: (Int, Int)) throws {
        let w = weights.weight.shape
        guard srcDims.count == 4, w.count == 4, srcDims[1] == w[1] * weights.groups, w[0] % weights.groups == 0 else {
            throw TensorError("conv2d: input \(srcDims) does not fit weights \(w) with \(weights.groups) groups")
        }
        let dstDims = [srcDims[0], w[0], dstHW.0, dstHW.1]
        if dstDims.contains(0) { return }
        // Also the 3-channel pixels' conv, though oneDNN's alone is a little faster: oneDNN's OpenMP
        // threads would otherwise wait beside our team's in every pass.
        if linearKernel == .avx2, weights.groups == 1, !srcNCHW, stride.0 == stride.1, padding.0 == padding.1, w[2] == w[3] {
            try im2colConv(src: src, srcDims: srcDims, weights: weights, stride: stride.0, padding: padding.0, dst: dst, dstHW: dstHW)
            return
        }
        let g = weights.groups
        let weiDims = g == 1 ? w : [g, w[0] / g, w[1], w[2], w[3]]
        let key = ConvKey(src: srcDims, srcNCHW: srcNCHW, wei: weiDims, groups: g, stride: [stride.0, stride.1],
                          padding: [padding.0, padding.1], dst: dstDims, bias: weights.bias != nil)
        lock.lock(); defer { lock.unlock() }
        let srcMD = try md(srcDims, tag: srcNCHW ? dnnl_nchw : dnnl_nhwc)
        let dstMD = try md(dstDims, tag: dnnl_nhwc)
        let biasMD = try md([w[0]], tag: dnnl_a)
        let userWeiMD = try md(weiDims, tag: g == 1 ? dnnl_oihw : dnnl_goihw)
        let p: Primitive
        if let cached = convs[key] {
            p = cached
        } else {
            let anyWei = try md(weiDims, tag: dnnl_format_tag_any)
            p = try makePrimitive({ pd in
                var desc = dnnl_convolution_desc_t()
                var s = srcMD, wd = anyWei, d = dstMD, b = biasMD
                let st = [Int64(stride.0), Int64(stride.1)], pad = [Int64(padding.0), Int64(padding.1)]
                let status = weights.bias != nil
                    ? dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct,
                                                         &s, &wd, &b, &d, st, pad, pad)
                    : dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct,
                                                         &s, &wd, nil, &d, st, pad, pad)
                try check(status, "conv desc \(srcDims) w\(weiDims)")
                let attr = try makeAttr([])
                defer { dnnl_primitive_attr_destroy(attr) }
                try check(dnnl_primitive_desc_create(&pd, &desc, attr, engine, nil), "conv primitive \(srcDims) w\(weiDims)")
            }, "conv")
            if let q = dnnl_primitive_desc_query_md(p.pd, dnnl_query_weights_md, 0) { p.weightsMD = q.pointee }
            convs[key] = p
        }
        guard let packedMD = p.weightsMD else { throw EngineError(operation: "conv", status: "no weights layout") }
        // Weights are converted to the primitive's preferred (blocked) layout once and kept.
        let packed: Tensor = try {
            weights.lock.lock()
            defer { weights.lock.unlock() }
            if let cached = weights.packed.first(where: { sameLayout($0.layout, packedMD) }) { return cached.weights }
            var pm = packedMD
            let bytes = dnnl_memory_desc_get_size(&pm)
            let t = Tensor(zeros: [bytes / 4 + 16])
            try reorder(from: userWeiMD, UnsafeMutableRawPointer(weights.weight.unsafePointer), to: packedMD, UnsafeMutableRawPointer(t.unsafePointer))
            weights.packed.append((packedMD, t))
            return t
        }()
        var args: [(Int32, dnnl_memory_desc_t, UnsafeMutableRawPointer?)] = [
            (DNNL_ARG_SRC, srcMD, UnsafeMutableRawPointer(src)),
            (DNNL_ARG_WEIGHTS, packedMD, UnsafeMutableRawPointer(packed.unsafePointer)),
            (DNNL_ARG_DST, dstMD, UnsafeMutableRawPointer(dst)),
        ]
        if let b = weights.bias { args.append((DNNL_ARG_BIAS, biasMD, UnsafeMutableRawPointer(b.unsafePointer))) }
        try run(p, args, "conv \(srcDims) w\(weiDims)")
    }

    /// A dense convolution on our AVX2 GEMM: per image, the patches as rows `[H'·W', kh·kw·in]`
    /// times the weights `[kh·kw·in, out]` (bias fused), written straight into NHWC `dst`: faster
    /// than oneDNN 2.6's AVX2 convolution, patch copy included.
    private func im2colConv(src: UnsafeMutablePointer<Float>, srcDims: [Int], weights: ConvWeights, stride: Int, padding: Int,
                            dst: UnsafeMutablePointer<Float>, dstHW: (Int, Int)) throws {
        let w = weights.weight.shape
        let (n, cin, h, wd) = (srcDims[0], srcDims[1], srcDims[2], srcDims[3])
        let (cout, k) = (w[0], w[2])
        let rowLength = k * k * cin, pixels = dstHW.0 * dstHW.1
        let panels: UnsafeMutableRawPointer = {
            weights.lock.lock(); defer { weights.lock.unlock() }
            if let p = weights.panels { return p.pointer }
            // [out, in, kh, kw] → [(ky·kw + kx)·in + ci, out], the order of the patch rows.
            let b = Tensor(uninitialized: [rowLength, cout])
            let wp = weights.weight.unsafePointer, bp = b.unsafePointer
            for co in 0..<cout { for ci in 0..<cin { for ky in 0..<k { for kx in 0..<k {
                bp[((ky * k + kx) * cin + ci) * cout + co] = wp[((co * cin + ci) * k + ky) * k + kx]
            } } } }
            let bytes = ck_gemm_packed_count(Int32(rowLength), Int32(cout)) * 4
            let (ptr, _) = RawMemory.allocate(bytes: bytes)
            ck_gemm_pack(bp, cout, 1, Int32(rowLength), Int32(cout), ptr.assumingMemoryBound(to: Float.self))
            weights.panels = (ptr, bytes)
            return ptr
        }()
        let t0 = profile ? DispatchTime.now().uptimeNanoseconds : 0
        let bias = weights.bias.map { UnsafePointer($0.unsafePointer) }
        let packed = panels.assumingMemoryBound(to: Float.self)
        if pixels >= Engine.fusedConvPixelsPerChannel * cout {
            // Many pixels, few channels (stage 1: 3136 × 147 patches, [147, 64] weights): each
            // thread convolves its own pixels block by block, so the patches never leave cache.
            for i in 0..<n {
                let status = ck_conv_nhwc(src + i * h * wd * cin, Int32(h), Int32(wd), Int32(cin), Int32(k), Int32(stride), Int32(padding),
                                          Int32(dstHW.0), Int32(dstHW.1), packed, bias, Int32(cout), dst + i * pixels * cout)
                guard status == 0 else { throw EngineError(operation: "conv \(srcDims) w\(w)", status: "AVX2 convolution failed") }
            }
        } else {
            // Wide weights: all patches first, then one GEMM whose threads split the weights.
            let patches = Tensor(uninitialized: [pixels, rowLength])
            for i in 0..<n {
                ck_im2col_nhwc(src + i * h * wd * cin, Int32(h), Int32(wd), Int32(cin), Int32(k), Int32(k), Int32(stride), Int32(padding),
                               Int32(dstHW.0), Int32(dstHW.1), patches.unsafePointer)
                let status = ck_gemm(Int32(pixels), Int32(cout), Int32(rowLength), patches.unsafePointer, rowLength,
                                     packed, bias, dst + i * pixels * cout, cout, nil, nil, 0)
                guard status == 0 else { throw EngineError(operation: "conv \(srcDims) w\(w)", status: "AVX2 GEMM failed") }
            }
        }
        if profile {
            lock.lock(); defer { lock.unlock() }
            record("conv", "conv \(srcDims) w\(w) (im2col)", since: t0)
        }
    }

    /// Depthwise convolution (`weights` `[C, 1, k, k]`, groups C) of `n` NHWC images `[h, w, C]`
    /// whose first pixel is `srcImageStride` floats after the previous image's (they may sit inside
    /// a larger token buffer, e.g. after a CLS row), into NHWC `[H', W', C]` images `dstImageStride`
    /// floats apart. With the AVX2 kernels: our kernel, straight from and into the token buffers;
    /// otherwise oneDNN's conv on dense copies.
    public func depthwiseConv2d(src: UnsafeMutablePointer<Float>, srcImageStride: Int, n: Int, c: Int, h: Int, w: Int,
                                weights: ConvWeights, stride: Int, padding: Int,
                                dst: UnsafeMutablePointer<Float>, dstImageStride: Int, dstHW: (Int, Int)) throws {
        let shape = weights.weight.shape
        guard shape.count == 4, shape[0] == c, shape[1] == 1, weights.groups == c, shape[2] == shape[3] else {
            throw TensorError("depthwiseConv2d: weights \(shape) with \(weights.groups) groups are not depthwise for \(c) channels")
        }
        let (ho, wo) = dstHW, k = shape[2]
        guard srcImageStride >= h * w * c, dstImageStride >= ho * wo * c else {
            throw TensorError("depthwiseConv2d: image strides \(srcImageStride), \(dstImageStride) are shorter than the images")
        }
        if n == 0 || ho == 0 || wo == 0 { return }
        if depthwiseKernel == .avx2 {
            let taps: UnsafePointer<Float> = {
                weights.lock.lock(); defer { weights.lock.unlock() }
                if let t = weights.depthwiseTaps { return UnsafePointer(t.unsafePointer) }
                // [C, 1, kh, kw] → [(ky·kw + kx), C]: a tap's channels side by side, as the pixels are.
                let t = Tensor(uninitialized: [k * k, c])
                let wp = weights.weight.unsafePointer, tp = t.unsafePointer
                for ch in 0..<c { for i in 0..<(k * k) { tp[i * c + ch] = wp[ch * k * k + i] } }
                weights.depthwiseTaps = t
                return UnsafePointer(t.unsafePointer)
            }()
            let t0 = profile ? DispatchTime.now().uptimeNanoseconds : 0
            let status = ck_depthwise_nhwc(src, srcImageStride, Int32(n), Int32(h), Int32(w), Int32(c), taps,
                                           weights.bias.map { UnsafePointer($0.unsafePointer) }, Int32(k), Int32(k),
                                           Int32(stride), Int32(padding), Int32(ho), Int32(wo), dst, dstImageStride)
            guard status == 0 else { throw EngineError(operation: "depthwise conv [\(n), \(c), \(h), \(w)]", status: "AVX2 kernel unavailable") }
            if profile {
                lock.lock(); defer { lock.unlock() }
                record("conv", "conv [\(n), \(c), \(h), \(w)] w\(shape) (depthwise)", since: t0)
            }
            return
        }
        let dense = srcImageStride == h * w * c && dstImageStride == ho * wo * c
        if dense {
            try conv2d(src: src, srcDims: [n, c, h, w], srcNCHW: false, weights: weights, stride: (stride, stride),
                       padding: (padding, padding), dst: dst, dstHW: dstHW)
            return
        }
        // oneDNN wants dense images: gather, convolve, scatter.
        let input = Tensor(uninitialized: [n, h, w, c]), output = Tensor(uninitialized: [n, ho, wo, c])
        timed("copy") {
            for i in 0..<n { (input.unsafePointer + i * h * w * c).update(from: src + i * srcImageStride, count: h * w * c) }
        }
        try conv2d(src: input.unsafePointer, srcDims: [n, c, h, w], srcNCHW: false, weights: weights, stride: (stride, stride),
                   padding: (padding, padding), dst: output.unsafePointer, dstHW: dstHW)
        timed("copy") {
            for i in 0..<n { (dst + i * dstImageStride).update(from: output.unsafePointer + i * ho * wo * c, count: ho * wo * c) }
        }
    }
}
