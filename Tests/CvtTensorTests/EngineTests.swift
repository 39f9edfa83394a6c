import CKernels
import CvtTensor
import Foundation
import XCTest

/// Backend ops against naive double-precision loops.
final class EngineTests: XCTestCase {
    var engine: Engine!
    override func setUpWithError() throws { engine = try Engine.shared() }

    func values(_ n: Int, seed: Double) -> [Float] { (0..<n).map { Float(sin(Double($0) * 0.37 + seed) * 1.5) } }

    func assertClose(_ a: [Float], _ b: [Double], tol: Double, _ name: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, name, file: file, line: line)
        var worst = 0.0
        for (x, y) in zip(a, b) { worst = max(worst, abs(Double(x) - y)) }
        XCTAssertLessThanOrEqual(worst, tol, "\(name): max abs error \(worst); first \(Array(a.prefix(4))) vs \(Array(b.prefix(4)))", file: file, line: line)
    }

    func testLinearMatmulWithTransposedWeightsBiasAndPostOps() throws {
        let m = 5, k = 7, n = 3
        let x = try Tensor(shape: [m, k], scalars: values(m * k, seed: 0))
        let w = try Tensor(shape: [n, k], scalars: values(n * k, seed: 1))  // PyTorch [out, in]
        let b = try Tensor(shape: [n], scalars: [0.1, -0.2, 0.3])
        let old = try Tensor(shape: [m, n], scalars: values(m * n, seed: 2))
        func reference(_ post: (Double, Int) -> Double) -> [Double] {
            var r = [Double](repeating: 0, count: m * n)
            for i in 0..<m { for j in 0..<n {
                var s = Double(b[flat: j])
                for q in 0..<k { s += Double(x[flat: i * k + q]) * Double(w[flat: j * k + q]) }
                r[i * n + j] = post(s, i * n + j)
            } }
            return r
        }
        for (ops, post) in [([PostOp](), { (s: Double, _: Int) in s }),
                            ([.gelu], { (s: Double, _: Int) in 0.5 * s * (1 + erf(s / 2.0.squareRoot())) }),
                            ([.scale(0.125)], { (s: Double, _: Int) in s * 0.125 }),
                            ([.accumulate], { (s: Double, i: Int) in s + Double(old[flat: i]) })] {
            var dst = old
            dst.makeUnique()
            try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]),
                              weights: StridedView(w.unsafePointer, dims: [k, n], strides: [1, k]),
                              bias: UnsafePointer(b.unsafePointer), dst: StridedView(dense: dst.unsafePointer, dims: [m, n]), postOps: ops)
            assertClose(dst.scalars, reference(post), tol: 1e-5, "matmul \(ops)")
        }
    }

    /// Per-head attention matmuls read heads as strided views of [T, C] and write merged heads.
    func testBatchedHeadViews() throws {
        let t = 6, heads = 2, d = 3, c = heads * d, tk = 4
        let q = try Tensor(shape: [t, c], scalars: values(t * c, seed: 3))
        let kv = try Tensor(shape: [tk, c], scalars: values(tk * c, seed: 4))
        let scores = Tensor(zeros: [heads, t, tk])
        try engine.matmul(src: StridedView(q.unsafePointer, dims: [heads, t, d], strides: [d, c, 1]),
                          weights: StridedView(kv.unsafePointer, dims: [heads, d, tk], strides: [d, 1, c]),
                          dst: StridedView(dense: scores.unsafePointer, dims: [heads, t, tk]))
        var expected = [Double]()
        for h in 0..<heads { for i in 0..<t { for j in 0..<tk {
            var s = 0.0
            for e in 0..<d { s += Double(q[flat: i * c + h * d + e]) * Double(kv[flat: j * c + h * d + e]) }
            expected.append(s)
        } } }
        assertClose(scores.scalars, expected, tol: 1e-5, "Q·Kᵀ per head")
        let ctx = Tensor(zeros: [t, c])
        try engine.matmul(src: StridedView(dense: scores.unsafePointer, dims: [heads, t, tk]),
                          weights: StridedView(kv.unsafePointer, dims: [heads, tk, d], strides: [d, c, 1]),
                          dst: StridedView(ctx.unsafePointer, dims: [heads, t, d], strides: [d, c, 1]))
        var merged = [Double](repeating: 0, count: t * c)
        for h in 0..<heads { for i in 0..<t { for e in 0..<d {
            var s = 0.0
            for j in 0..<tk { s += Double(scores[flat: (h * t + i) * tk + j]) * Double(kv[flat: j * c + h * d + e]) }
            merged[i * c + h * d + e] = s
        } } }
        assertClose(ctx.scalars, merged, tol: 1e-5, "P·V merged heads")
    }

    func naiveConv(_ x: Tensor, n: Int, c: Int, h: Int, w: Int, nchw: Bool, weight: Tensor, bias: Tensor?, groups: Int,
                   stride: Int, pad: Int) -> ([Double], Int, Int) {
        let o = weight.shape[0], cg = weight.shape[1], k = weight.shape[2]
        let ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1
        var out = [Double](repeating: 0, count: n * ho * wo * o)
        for b in 0..<n { for oc in 0..<o { for y in 0..<ho { for xx in 0..<wo {
            var s = bias.map { Double($0[flat: oc]) } ?? 0
            let g = oc / (o / groups)
            for ic in 0..<cg { for ky in 0..<k { for kx in 0..<k {
                let iy = y * stride - pad + ky, ix = xx * stride - pad + kx
                if iy < 0 || iy >= h || ix < 0 || ix >= w { continue }
                let ch = g * cg + ic
                let xi = nchw ? ((b * c + ch) * h + iy) * w + ix : ((b * h + iy) * w + ix) * c + ch
                s += Double(x[flat: xi]) * Double(weight[flat: ((oc * cg + ic) * k + ky) * k + kx])
            } } }
            out[((b * ho + y) * wo + xx) * o + oc] = s
        } } } }
        return (out, ho, wo)
    }

    func testDenseAndDepthwiseConvolutions() throws {
        for (c, o, groups, k, stride, pad, h, w) in [(3, 8, 1, 7, 4, 2, 19, 23), (8, 16, 1, 3, 2, 1, 9, 8),
                                                    (16, 16, 16, 3, 1, 1, 7, 5), (16, 16, 16, 3, 2, 1, 7, 6), (5, 5, 5, 3, 1, 0, 4, 4),
                                                    (3, 16, 1, 7, 4, 2, 40, 48), (16, 32, 1, 3, 2, 1, 10, 12), (32, 64, 1, 3, 2, 1, 5, 6),
                                                    (64, 64, 64, 3, 1, 1, 3, 3), (64, 64, 64, 3, 2, 1, 3, 3)] {
            let n = 2
            let x = try Tensor(shape: [n * h * w * c], scalars: values(n * h * w * c, seed: Double(c)))
            let weight = try Tensor(shape: [o, c / groups, k, k], scalars: values(o * c / groups * k * k, seed: 9))
            let bias = try Tensor(shape: [o], scalars: values(o, seed: 5))
            let cw = ConvWeights(weight: weight, bias: bias, groups: groups)
            let (expected, ho, wo) = naiveConv(x, n: n, c: c, h: h, w: w, nchw: false, weight: weight, bias: bias, groups: groups, stride: stride, pad: pad)
            let dst = Tensor(zeros: [n * ho * wo * o])
            try engine.conv2d(src: x.unsafePointer, srcDims: [n, c, h, w], srcNCHW: false, weights: cw,
                              stride: (stride, stride), padding: (pad, pad), dst: dst.unsafePointer, dstHW: (ho, wo))
            assertClose(dst.scalars, expected, tol: 1e-4, "conv c\(c) o\(o) g\(groups) k\(k) s\(stride) p\(pad)")
            // A second call reuses the packed weights and the cached primitive.
            try engine.conv2d(src: x.unsafePointer, srcDims: [n, c, h, w], srcNCHW: false, weights: cw,
                              stride: (stride, stride), padding: (pad, pad), dst: dst.unsafePointer, dstHW: (ho, wo))
            assertClose(dst.scalars, expected, tol: 1e-4, "conv (cached)")
            // Same shape in a single-threaded batch worker: its primitive may want another weights
            // layout than the all-threads one, and must not be handed weights packed for that one.
            let one = Tensor(zeros: [n * ho * wo * o])
            try engine.concurrently(1) { _, worker in
                try worker.conv2d(src: x.unsafePointer, srcDims: [n, c, h, w], srcNCHW: false, weights: cw,
                                  stride: (stride, stride), padding: (pad, pad), dst: one.unsafePointer, dstHW: (ho, wo))
            }
            assertClose(one.scalars, expected, tol: 1e-4, "conv on one thread after two")
        }
        XCTAssertThrowsError(try engine.conv2d(src: Tensor(zeros: [8]).unsafePointer, srcDims: [1, 4, 1, 2], srcNCHW: false,
                                               weights: ConvWeights(weight: Tensor(zeros: [2, 3, 1, 1]), bias: nil, groups: 1),
                                               stride: (1, 1), padding: (0, 0), dst: Tensor(zeros: [4]).unsafePointer, dstHW: (1, 2)))
    }

    func testSoftmaxRows() throws {
        let rows = 3, cols = 5
        var x = try Tensor(shape: [rows, cols], scalars: values(rows * cols, seed: 6).map { $0 * 10 })
        let before = x.scalars
        try x.withUnsafeMutableBufferPointer { try engine.softmax($0.baseAddress!, rows: rows, cols: cols) }
        var expected = [Double]()
        for r in 0..<rows {
            let row = before[(r * cols)..<(r * cols + cols)].map(Double.init)
            let m = row.max()!, e = row.map { exp($0 - m) }, s = e.reduce(0, +)
            expected += e.map { $0 / s }
        }
        assertClose(x.scalars, expected, tol: 1e-6, "softmax")
    }

    func testLayerNorm() {
        let rows = 3, cols = 37  // not a multiple of the SIMD width
        let x = values(rows * cols, seed: 7).map { $0 * 3 + 1 }
        let w = values(cols, seed: 8), b = values(cols, seed: 9)
        var y = [Float](repeating: 0, count: rows * cols)
        Kernels.layerNorm(x, &y, rows: rows, cols: cols, weight: w, bias: b, eps: 1e-5)
        var expected = [Double]()
        for r in 0..<rows {
            let row = x[(r * cols)..<(r * cols + cols)].map(Double.init)
            let mean = row.reduce(0, +) / Double(cols)
            let v = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(cols)
            for (i, value) in row.enumerated() { expected.append((value - mean) / (v + 1e-5).squareRoot() * Double(w[i]) + Double(b[i])) }
        }
        assertClose(y, expected, tol: 1e-5, "layerNorm")
    }

    /// AvgPool2d(3, stride 2, padding 1, ceil_mode) on a 4×4 map: PyTorch gives a 3×3 output whose
    /// last row/column windows hang over the padding and divide by the clipped window size.
    func testAvgPoolCeilModeMatchesPyTorch() {
        XCTAssertEqual(Kernels.avgPoolOutputSize(4, kernel: 3, stride: 2, padding: 1), 3)
        XCTAssertEqual(Kernels.avgPoolOutputSize(5, kernel: 3, stride: 2, padding: 1), 3)
        XCTAssertEqual(Kernels.avgPoolOutputSize(14, kernel: 3, stride: 2, padding: 1), 8)
        XCTAssertEqual(Kernels.avgPoolOutputSize(1, kernel: 3, stride: 2, padding: 1), 1)
        let x = (0..<16).map(Float.init)  // 4×4, one channel
        var y = [Float](repeating: 0, count: 9)
        Kernels.avgPool2dNHWC(x, n: 1, h: 4, w: 4, c: 1, kernel: 3, stride: 2, padding: 1, &y, ho: 3, wo: 3)
        // torch 2.13: nn.AvgPool2d(3, 2, 1, ceil_mode=True)(torch.arange(16.).view(1,1,4,4)).flatten()
        let expected: [Double] = [1.1111111640930176, 2.6666667461395264, 1.6666666269302368, 5.666666507720947, 10.0, 5.5, 4.166666507720947, 7.0, 3.75]
        assertClose(y, expected, tol: 1e-6, "avg pool")
    }

    /// An engine's thread count is its own: setting it changes no other engine, and it applies to
    /// the calling thread's kernels only during the engine's calls.
    func testThreadCountBelongsToTheEngine() throws {
        let one = try Engine(threads: 1), three = try Engine(threads: 3)
        let shared = try Engine.shared(), sharedBefore = shared.threads
        XCTAssertEqual(one.threads, 1)
        XCTAssertEqual(three.threads, 3)
        XCTAssertEqual(shared.threads, sharedBefore, "creating engines changed the shared one")
        let outside = ck_team_threads()
        XCTAssertEqual(one.exclusively { ck_team_threads() }, 1)
        XCTAssertEqual(three.exclusively { ck_team_threads() }, 3)
        XCTAssertEqual(three.exclusively { one.exclusively { ck_team_threads() } }, 1, "nested calls: the inner engine's count")
        XCTAssertEqual(ck_team_threads(), outside, "a call left its thread count behind")
        one.threads = 2
        XCTAssertEqual(three.threads, 3)
        XCTAssertEqual(one.threads, 2)
        one.threads = 0
        XCTAssertEqual(one.threads, 1, "counts are clamped to at least one thread")
    }
}

/// bfloat16 activations: rounding, bf16-in/bf16-out matmuls and softmax, and the buffer pool.
final class BFloat16KernelTests: XCTestCase {
    func testRoundingIsNearestEven() {
        // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6 and goes to 1 + 2^-6.
        let values: [Float] = [1, 1 + 0x1p-8, 1 + 3 * 0x1p-8, 1 + 0x1p-8 + 0x1p-20, -2.5, .infinity, 0x1p-130, .nan, 3.0e38]
        var bits = [UInt16](repeating: 0, count: values.count * 3)
        // 27 values exercise both the 16-wide and the scalar path.
        let src = values + values + values
        src.withUnsafeBufferPointer { s in bits.withUnsafeMutableBytes { Kernels.toBFloat16(s.baseAddress!, $0.baseAddress!, count: src.count) } }
        let expected: [UInt16] = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC020, 0x7F80, 0x0000 | UInt16(Float(0x1p-130).bitPattern >> 16), 0x7FC0, 0x7F62]
        for r in 0..<3 {
            XCTAssertEqual(Array(bits[r * values.count ..< (r + 1) * values.count]), expected, "pass \(r)")
        }
        var back = [Float](repeating: 0, count: 3)
        bits.withUnsafeBytes { b in back.withUnsafeMutableBufferPointer { Kernels.fromBFloat16(b.baseAddress!, $0.baseAddress!, count: 3) } }
        XCTAssertEqual(back, [1, 1, 1 + 0x1p-6])
    }

    /// Large conversions are split across the threads: every value, including the split points and
    /// an odd tail, converts as the scalar rule says.
    func testLargeConversionsMatchTheScalarRule() throws {
        let n = 200_003
        let src = (0..<n).map { i -> Float in
            let base = Float(sin(Double(i) * 0.731) * 3)
            let wiggle: Float = 1 + Float(i % 7) * 0x1p-9
            return base * wiggle
        }
        let want = src.map { x -> UInt16 in
            let b = x.bitPattern
            return UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
        }
        XCTAssertGreaterThan(try Engine.shared().threads, 1, "the split needs more than one thread")
        var bits = [UInt16](repeating: 0, count: n)
        src.withUnsafeBufferPointer { s in bits.withUnsafeMutableBytes { Kernels.toBFloat16(s.baseAddress!, $0.baseAddress!, count: n) } }
        XCTAssertEqual(bits.indices.first { bits[$0] != want[$0] }, nil, "toBFloat16")
        var rounded = [Float](repeating: 0, count: n)
        src.withUnsafeBufferPointer { s in rounded.withUnsafeMutableBufferPointer { Kernels.roundToBFloat16(s.baseAddress!, $0.baseAddress!, count: n) } }
        XCTAssertEqual(rounded.indices.first { rounded[$0].bitPattern != UInt32(want[$0]) << 16 }, nil, "roundToBFloat16")
        var widened = [Float](repeating: 0, count: n)
        bits.withUnsafeBytes { b in widened.withUnsafeMutableBufferPointer { Kernels.fromBFloat16(b.baseAddress!, $0.baseAddress!, count: n) } }
        XCTAssertEqual(widened.indices.first { widened[$0].bitPattern != UInt32(want[$0]) << 16 }, nil, "fromBFloat16")
    }

    func testLayerNormBFloat16IsRoundedLayerNorm() {
        let rows = 3, cols = 37
        let x = Tensor(shape: [rows, cols]) { Float(($0 * 7919) % 101) / 13 - 3 }
        let w = Tensor(shape: [cols]) { 0.5 + Float($0) / 40 }, b = Tensor(shape: [cols]) { Float($0) / 50 - 0.3 }
        let ref = Tensor(uninitialized: [rows, cols])
        Kernels.layerNorm(x.unsafePointer, ref.unsafePointer, rows: rows, cols: cols, weight: w.unsafePointer, bias: b.unsafePointer, eps: 1e-5)
        var expected = [UInt16](repeating: 0, count: rows * cols)
        expected.withUnsafeMutableBytes { Kernels.toBFloat16(ref.unsafePointer, $0.baseAddress!, count: rows * cols) }
        var got = [UInt16](repeating: 0, count: rows * cols)
        got.withUnsafeMutableBytes {
            Kernels.layerNormBFloat16(x.unsafePointer, $0.baseAddress!, rows: rows, cols: cols, weight: w.unsafePointer, bias: b.unsafePointer, eps: 1e-5)
        }
        XCTAssertEqual(got, expected)
    }

    func testBFloat16OperandsAndOutputs() throws {
        let engine = try Engine()
        let m = 19, k = 40, n = 24
        let x = Tensor(shape: [m, k]) { Float(($0 * 31) % 17) / 8 - 1 }
        let w = Tensor(shape: [k, n]) { Float(($0 * 13) % 23) / 11 - 1 }
        let ref = Tensor(uninitialized: [m, n])
        try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), weights: StridedView(dense: w.unsafePointer, dims: [k, n]),
                          dst: StridedView(dense: ref.unsafePointer, dims: [m, n]))
        // A float32 engine refuses bf16 operands instead of misreading them.
        let xb = TypedBuffer(type: .bfloat16, count: m * k)
        Kernels.toBFloat16(x.unsafePointer, xb.raw, count: m * k)
        let out = TypedBuffer(type: .bfloat16, count: m * n)
        XCTAssertThrowsError(try engine.matmul(src: xb.view([m, k]), weights: StridedView(dense: w.unsafePointer, dims: [k, n]), dst: out.view([m, n])))
        engine.precision = .bfloat16
        try engine.matmul(src: xb.view([m, k]), weights: StridedView(dense: w.unsafePointer, dims: [k, n]), dst: out.view([m, n]))
        let got = Tensor(uninitialized: [m, n])
        Kernels.fromBFloat16(out.raw, got.unsafePointer, count: m * n)
        // Inputs are exact in bf16 (multiples of 1/8 and 1/11 rounded once); errors come from
        // rounding w and the output: relative ~2^-8 of values up to ~40.
        XCTAssertLessThan(got.maxAbsDifference(ref), 0.5)
        XCTAssertGreaterThan(got.maxAbsDifference(ref), 0, "bf16 output should be rounded")

        // Softmax into bf16 equals the float32 softmax rounded.
        let s = Tensor(shape: [5, 33]) { Float(($0 * 7) % 29) / 5 }
        let probs = TypedBuffer(type: .bfloat16, count: 5 * 33)
        try engine.softmax(s.unsafePointer, rows: 5, cols: 33, dst: probs.raw, dstType: .bfloat16)
        var f32 = s
        try f32.withUnsafeMutableBufferPointer { try engine.softmax($0.baseAddress!, rows: 5, cols: 33) }
        let back = Tensor(uninitialized: [5, 33])
        Kernels.fromBFloat16(probs.raw, back.unsafePointer, count: 5 * 33)
        XCTAssertLessThan(back.maxAbsDifference(f32), 0.004)
    }

    /// bfloat16 precision means the same arithmetic with native kernels (avx512_bf16) and without
    /// (emulated in float32 kernels): operands rounded to bf16 (nearest even), products summed in
    /// float32, a bf16 output rounded once after the epilogue.
    func testBFloat16MatmulIsRoundedOperandsWithFloat32Accumulation() throws {
        let engine = try Engine()
        engine.precision = .bfloat16
        let m = 7, k = 300, n = 20
        let x = Tensor(shape: [m, k]) { Float(sin(Double($0) * 0.37)) * 1.3 }
        let w = Tensor(shape: [k, n]) { Float(cos(Double($0) * 0.11)) * 0.7 }
        func rounded(_ t: Tensor) -> [Float] {
            var bits = [UInt16](repeating: 0, count: t.count), out = [Float](repeating: 0, count: t.count)
            bits.withUnsafeMutableBytes { Kernels.toBFloat16(t.unsafePointer, $0.baseAddress!, count: t.count) }
            bits.withUnsafeBytes { b in out.withUnsafeMutableBufferPointer { Kernels.fromBFloat16(b.baseAddress!, $0.baseAddress!, count: t.count) } }
            return out
        }
        let xr = rounded(x), wr = rounded(w), xs = x.scalars, ws = w.scalars
        var exact = [Double](repeating: 0, count: m * n), unrounded = exact, scale = exact
        for i in 0..<m { for j in 0..<n { for p in 0..<k {
            exact[i * n + j] += Double(xr[i * k + p]) * Double(wr[p * n + j])
            unrounded[i * n + j] += Double(xs[i * k + p]) * Double(ws[p * n + j])
            scale[i * n + j] += abs(Double(xr[i * k + p]) * Double(wr[p * n + j]))
        } } }
        // The plain weights (oneDNN), and, where bf16 is emulated on our AVX2 GEMM, bf16 weights in
        // its 16-bit panels: the same semantics.
        try checkBFloat16Matmul(engine, x: x, m: m, k: k, n: n, exact: exact, unrounded: unrounded, scale: scale) { src, dst, ops in
            try engine.matmul(src: src, weights: StridedView(dense: w.unsafePointer, dims: [k, n]), dst: dst, postOps: ops)
        }
        guard LinearKernel.avx2.isSupported else { return }
        engine.linearKernel = .avx2
        guard engine.packingKernel(.bfloat16) == .avx2 else { return }
        let wbits = TypedBuffer(type: .bfloat16, count: k * n)
        Kernels.toBFloat16(w.unsafePointer, wbits.raw, count: k * n)
        let packed = try engine.packWeights(wbits.view([k, n]))
        XCTAssertEqual(packed.kernel, .avx2)
        XCTAssertEqual(packed.bytes, ck_gemm_packed_count(Int32(k), Int32(n)) * 2, "16-bit panels")
        try checkBFloat16Matmul(engine, x: x, m: m, k: k, n: n, exact: exact, unrounded: unrounded, scale: scale) { src, dst, ops in
            try engine.matmul(src: src, packed: packed, dst: dst, postOps: ops)
        }
    }

    func checkBFloat16Matmul(_ engine: Engine, x: Tensor, m: Int, k: Int, n: Int, exact: [Double], unrounded: [Double], scale: [Double],
                             file: StaticString = #filePath, line: UInt = #line,
                             _ matmul: (StridedView, StridedView, [PostOp]) throws -> Void) throws {
        let xs = x.scalars
        // float32 output, src given as a transposed (strided) view of x stored [k, m].
        let xt = Tensor(uninitialized: [k, m])
        for i in 0..<m { for p in 0..<k { xt.unsafePointer[p * m + i] = xs[i * k + p] } }
        let out = Tensor(uninitialized: [m, n])
        try matmul(StridedView(xt.unsafePointer, dims: [m, k], strides: [1, m]), StridedView(dense: out.unsafePointer, dims: [m, n]), [])
        var worstSum = 0.0, worstRounding = 0.0
        for (i, v) in out.scalars.enumerated() {
            worstSum = max(worstSum, abs(Double(v) - exact[i]) / scale[i])
            worstRounding = max(worstRounding, abs(exact[i] - unrounded[i]))
        }
        XCTAssertLessThan(worstSum, 1e-6, "float32 summation of the bf16-rounded products (native: \(Engine.hasNativeBFloat16))", file: file, line: line)
        XCTAssertGreaterThan(zip(out.scalars, unrounded).map { abs(Double($0) - $1) }.max() ?? 0, worstRounding / 4,
                             "the operands must really be rounded to bf16", file: file, line: line)
        // bf16 output accumulated onto its previous contents: round(old + x·w), once.
        let old = Tensor(shape: [m, n]) { Float($0 % 5) - 2 }
        let dst = TypedBuffer(type: .bfloat16, count: m * n)
        Kernels.toBFloat16(old.unsafePointer, dst.raw, count: m * n)
        try matmul(StridedView(dense: x.unsafePointer, dims: [m, k]), dst.view([m, n]), [.accumulate])
        let got = Tensor(uninitialized: [m, n])
        Kernels.fromBFloat16(dst.raw, got.unsafePointer, count: m * n)
        let oldValues = old.scalars
        for (i, v) in got.scalars.enumerated() {
            let expected = exact[i] + Double(oldValues[i])
            // One bf16 rounding: within half a bf16 ulp (at most 2^-8 relative), plus the summation error.
            XCTAssertLessThanOrEqual(abs(Double(v) - expected), abs(expected) * 0x1p-8 + scale[i] * 1e-6 + 1e-30, "element \(i)", file: file, line: line)
        }
    }

    func testNativeBFloat16ProbeMatchesTheCPU() throws {
        let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let line = try XCTUnwrap(cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") })
        let flags = Set(line.split(separator: " ").map(String.init))
        if flags.contains("avx512_bf16") || flags.contains("amx_bf16") {
            XCTAssertTrue(Engine.hasNativeBFloat16, "this CPU has bf16 instructions")
        } else if !flags.contains("avx512f") {
            XCTAssertFalse(Engine.hasNativeBFloat16, "oneDNN 2.6 has no bf16 matmul without AVX-512")
        }
        let engine = try Engine()
        XCTAssertFalse(engine.emulatesBFloat16, "float32 precision emulates nothing")
        engine.precision = .bfloat16
        XCTAssertEqual(engine.emulatesBFloat16, !Engine.hasNativeBFloat16)
        XCTAssertEqual(engine.kernelOperandType, Engine.hasNativeBFloat16 ? .bfloat16 : .float32)
    }

    func testBufferPoolReusesFreedBuffers() {
        let count = 1 << 18 + 3  // just over 1 MB: pooled, and a size nothing else uses
        let pool = BufferPool.shared
        pool.drain()  // earlier tests may have filled it to capacity
        var first: UnsafeMutablePointer<Float>?
        let before = pool.pooledByteCount
        do {
            let t = Tensor(uninitialized: [count])
            first = t.unsafePointer
            XCTAssertEqual(pool.pooledByteCount, before)
        }
        // Kept at its size class: 1 MB + 12 bytes rounds up to the next eighth of 1 MB.
        XCTAssertEqual(pool.pooledByteCount, before + (1 << 20) + (1 << 17), "a freed large buffer is kept")
        let again = Tensor(uninitialized: [count])
        XCTAssertEqual(again.unsafePointer, first, "a freed buffer of the same size is handed out again")
        XCTAssertEqual(pool.pooledByteCount, before)
        do {
            // A slightly larger request of the same class reuses it too.
            let t = Tensor(uninitialized: [count])
            first = t.unsafePointer
        }
        let larger = Tensor(uninitialized: [count + 1000])
        XCTAssertEqual(larger.unsafePointer, first, "a request in the same size class reuses the buffer")
        let zeros = Tensor(zeros: [count])
        XCTAssertEqual(zeros.scalars.max(), 0, "reused storage is still initialized when asked")
    }

    /// With `boundsIdleAtPeak`, a request no idle buffer serves releases the longest-idle ones
    /// first, so that in use plus idle stays within the peak in use (plus 1/16); without it, idle
    /// buffers of other sizes stay pooled.
    func testBufferPoolBoundsIdleMemoryAtThePeak() {
        let mb = 1 << 20
        for bounded in [false, true] {
            let pool = BufferPool()
            pool.capacityBytes = 1 << 30
            pool.boundsIdleAtPeak = bounded
            // Four 1 MB buffers in use at once (the peak), then idle, the first freed first.
            let small = (0..<4).map { _ in pool.takeFitting(bytes: mb) }
            XCTAssertEqual(small.map(\.1), [mb, mb, mb, mb])
            for (p, n) in small { pool.give(p, bytes: n) }
            XCTAssertEqual(pool.pooledByteCount, 4 * mb)
            // A 3 MB request fits no idle buffer (more than twice 1 MB away).
            let (big, bigBytes) = pool.takeFitting(bytes: 3 * mb)
            XCTAssertEqual(bigBytes, 3 * mb)
            if bounded {
                // In use 3 MB + idle ≤ 4 MB + 1/16: three idle buffers go, the oldest first.
                XCTAssertEqual(pool.pooledByteCount, mb)
                let (reused, _) = pool.takeFitting(bytes: mb)
                XCTAssertEqual(reused, small[3].0, "the newest idle buffer is the one kept")
                pool.give(reused, bytes: mb)
            } else {
                XCTAssertEqual(pool.pooledByteCount, 4 * mb)
            }
            pool.give(big, bytes: bigBytes)
            pool.drain()
            XCTAssertEqual(pool.pooledByteCount, 0)
        }
    }
}

final class Float16Tests: XCTestCase {
    func testFloat16ConversionIsExactBothWays() {
        // Normals, subnormals, zero signs, infinities: float16 → float32 is exact.
        let halves: [Float16] = [0, -0, 1, -2.5, 65504, 0x1p-14, 0x1p-24, 3 * 0x1p-24, .infinity, -.infinity, 0.1, 1000.5]
        var bits = halves.map(\.bitPattern)
        // Repeat to cover the 8-wide and the tail paths.
        bits += bits
        var out = [Float](repeating: 0, count: bits.count)
        bits.withUnsafeBytes { b in out.withUnsafeMutableBufferPointer { Kernels.fromFloat16(b.baseAddress!, $0.baseAddress!, count: bits.count) } }
        XCTAssertEqual(out, (halves + halves).map(Float.init))
        var nan: [UInt16] = [Float16.nan.bitPattern]
        var f: [Float] = [0]
        nan.withUnsafeMutableBytes { b in f.withUnsafeMutableBufferPointer { Kernels.fromFloat16(b.baseAddress!, $0.baseAddress!, count: 1) } }
        XCTAssertTrue(f[0].isNaN)
        // Large inputs go through the two-thread path.
        let n = 1 << 17 + 5
        let big = (0..<n).map { Float16(Float($0 % 2000) / 8 - 100) }
        var bigOut = [Float](repeating: 0, count: n)
        big.map(\.bitPattern).withUnsafeBytes { b in bigOut.withUnsafeMutableBufferPointer { Kernels.fromFloat16(b.baseAddress!, $0.baseAddress!, count: n) } }
        XCTAssertEqual(bigOut, big.map(Float.init))
    }

    func testFloat16WeightsInAFloat32Matmul() throws {
        let engine = try Engine()
        let m = 5, k = 12, n = 7
        let x = Tensor(shape: [m, k]) { Float($0 % 9) / 4 - 1 }
        let w = Tensor(shape: [k, n]) { Float($0 % 7) / 8 - 0.5 }  // exact in float16
        let wh = TypedBuffer(type: .float16, count: k * n, pooled: false)
        Kernels.toFloat16(w.unsafePointer, wh.raw, count: k * n)
        let ref = Tensor(uninitialized: [m, n]), got = Tensor(uninitialized: [m, n])
        try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), weights: StridedView(dense: w.unsafePointer, dims: [k, n]),
                          dst: StridedView(dense: ref.unsafePointer, dims: [m, n]))
        try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), weights: ConstantWeights(wh.view([k, n]), owner: wh),
                          dst: StridedView(dense: got.unsafePointer, dims: [m, n]))
        XCTAssertEqual(got.maxAbsDifference(ref), 0)
    }
}

final class ParallelKernelTests: XCTestCase {
    /// Large inputs are split across threads; every row must come out as the one-thread result.
    func testParallelLayerNormEqualsSerial() throws {
        let engine = try Engine(threads: 2)
        let rows = 1001, cols = 96  // above the split threshold, odd row count
        let x = Tensor(shape: [rows, cols]) { Float(($0 * 7919) % 1013) / 97 - 5 }
        let w = Tensor(shape: [cols]) { 0.5 + Float($0) / 50 }, b = Tensor(shape: [cols]) { Float($0) / 70 - 0.4 }
        let par = Tensor(uninitialized: [rows, cols]), ser = Tensor(uninitialized: [rows, cols])
        Kernels.layerNorm(x.unsafePointer, par.unsafePointer, rows: rows, cols: cols, weight: w.unsafePointer, bias: b.unsafePointer, eps: 1e-5)
        for r in 0..<rows {
            Kernels.layerNorm(x.unsafePointer + r * cols, ser.unsafePointer + r * cols, rows: 1, cols: cols, weight: w.unsafePointer, bias: b.unsafePointer, eps: 1e-5)
        }
        XCTAssertEqual(par.maxAbsDifference(ser), 0)
        var pb = [UInt16](repeating: 0, count: rows * cols), sb = [UInt16](repeating: 0, count: rows * cols)
        pb.withUnsafeMutableBytes { Kernels.layerNormBFloat16(x.unsafePointer, $0.baseAddress!, rows: rows, cols: cols, weight: w.unsafePointer, bias: b.unsafePointer, eps: 1e-5) }
        sb.withUnsafeMutableBytes { Kernels.toBFloat16(ser.unsafePointer, $0.baseAddress!, count: rows * cols) }
        XCTAssertEqual(pb, sb)
    }
}

final class PrimitiveReuseTests: XCTestCase {
    /// A cached primitive keeps its memory objects and only swaps data pointers: a second call on
    /// other buffers must read and write those, and leave the first call's output alone.
    func testSameShapeOnOtherBuffersUsesThoseBuffers() throws {
        let engine = try Engine()
        let m = 6, k = 5, n = 4
        let w = Tensor(shape: [k, n]) { Float($0 % 7) - 3 }
        let x1 = Tensor(shape: [m, k]) { Float($0 % 5) }, x2 = Tensor(shape: [m, k]) { -Float($0 % 3) }
        let y1 = Tensor(zeros: [m, n]), y2 = Tensor(zeros: [m, n])
        func run(_ x: Tensor, _ y: Tensor) throws {
            try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), weights: StridedView(dense: w.unsafePointer, dims: [k, n]),
                              dst: StridedView(dense: y.unsafePointer, dims: [m, n]))
        }
        func reference(_ x: Tensor) -> [Float] {
            (0..<m).flatMap { i in (0..<n).map { j in (0..<k).reduce(Float(0)) { $0 + x[i, $1] * w[$1, j] } } }
        }
        try run(x1, y1)
        let first = y1.scalars
        try run(x2, y2)
        XCTAssertEqual(y1.scalars, first)
        XCTAssertEqual(first, reference(x1))
        XCTAssertEqual(y2.scalars, reference(x2))
    }
}

/// Matmul weights packed once into oneDNN's blocked layout (`Engine.packWeights`).
final class PackedWeightsTests: XCTestCase {
    /// Shapes on and off the kernels' block sizes (16/32/48/64 columns, K not a multiple of 16).
    let shapes: [(m: Int, k: Int, n: Int)] = [(5, 7, 3), (197, 64, 64), (33, 100, 1000), (9, 384, 1536), (40, 1536, 48), (1, 3, 17)]

    func data(_ count: Int, _ seed: Int) -> Tensor { Tensor(shape: [count]) { Float((($0 + seed) * 37) % 101) / 50 - 1 } }

    /// Both kernels for packed weights where this CPU runs them (oneDNN's; our AVX2 GEMM).
    var kernels: [LinearKernel] { [LinearKernel.onednn, .avx2].filter(\.isSupported) }

    func testPackedEqualsPlainAndUnpacksExactly() throws {
        for kernel in kernels { try packedEqualsPlain(kernel) }
    }

    func packedEqualsPlain(_ kernel: LinearKernel) throws {
        let engine = try Engine()
        engine.linearKernel = kernel
        for (m, k, n) in shapes {
            let x = data(m * k, 1), w = data(n * k, 2), b = data(n, 3), old = data(m * n, 4)
            // PyTorch [out, in] viewed as Wᵀ [in, out], as Linear does.
            let wt = StridedView(w.unsafePointer, dims: [k, n], strides: [1, k])
            let packed = try engine.packWeights(wt)
            XCTAssertEqual(packed.kernel, kernel)
            XCTAssertEqual(packed.dims, [k, n])
            XCTAssertGreaterThanOrEqual(packed.bytes, k * n * 4)
            for ops in [[PostOp](), [.gelu], [.accumulate]] {
                var plain = old, fast = old
                plain.makeUnique(); fast.makeUnique()
                try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), weights: wt, bias: UnsafePointer(b.unsafePointer),
                                  dst: StridedView(dense: plain.unsafePointer, dims: [m, n]), postOps: ops)
                try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), packed: packed, bias: UnsafePointer(b.unsafePointer),
                                  dst: StridedView(dense: fast.unsafePointer, dims: [m, n]), postOps: ops)
                let err = fast.maxAbsDifference(plain)
                // oneDNN's packed kernels sum in the plain ones' order (2e-5); ours in its own:
                // float32 rounding grows with the K terms (magnitude ≤ 1) of each sum.
                XCTAssertLessThanOrEqual(err, kernel == .onednn ? 2e-5 : 2e-6 * Float(k) + 2e-5, "\(kernel) [\(m), \(k)]x[\(k), \(n)] \(ops): max abs error \(err); first \(Array(fast.scalars.prefix(4))) vs \(Array(plain.scalars.prefix(4)))")
            }
            // Unpacking gives back every weight bit for bit, in any layout.
            let back = Tensor(zeros: [n, k])
            try packed.unpack(into: StridedView(back.unsafePointer, dims: [k, n], strides: [1, k]))
            XCTAssertEqual(back.scalars, w.scalars, "unpack [\(k), \(n)]")
        }
    }

    /// A few rows picked out of a larger buffer (the CLS rows of a batch of token grids): row
    /// strides on both sides, fewer rows than the blocked kernels take, residual accumulation.
    func testFewStridedRowsIntoStridedRows() throws {
        for kernel in kernels {
            let engine = try Engine()
            engine.linearKernel = kernel
            let (m, k, n, gap) = (3, 384, 40, 5)
            let x = data(m * gap * k, 7), w = data(k * n, 8), b = data(n, 9), old = data(m * gap * n, 10)
            let packed = try engine.packWeights(StridedView(dense: w.unsafePointer, dims: [k, n]))
            var plain = old, fast = old
            plain.makeUnique(); fast.makeUnique()
            let src = StridedView(x.unsafePointer, dims: [m, k], strides: [gap * k, 1])
            try engine.matmul(src: src, weights: StridedView(dense: w.unsafePointer, dims: [k, n]), bias: UnsafePointer(b.unsafePointer),
                              dst: StridedView(plain.unsafePointer, dims: [m, n], strides: [gap * n, 1]), postOps: [.accumulate])
            try engine.matmul(src: src, packed: packed, bias: UnsafePointer(b.unsafePointer),
                              dst: StridedView(fast.unsafePointer, dims: [m, n], strides: [gap * n, 1]), postOps: [.accumulate])
            XCTAssertLessThanOrEqual(fast.maxAbsDifference(plain), 2e-6 * Float(k) + 2e-5, "\(kernel)")
            // Rows between the picked ones are untouched.
            XCTAssertEqual(fast.scalars[n..<(gap * n)], old.scalars[n..<(gap * n)])
        }
    }

    func testBFloat16PackingNeedsABFloat16Engine() throws {
        let engine = try Engine()
        let (m, k, n) = (19, 40, 72)
        let x = data(m * k, 5), w = data(k * n, 6)
        let wb = TypedBuffer(type: .bfloat16, count: k * n, pooled: false)
        Kernels.toBFloat16(w.unsafePointer, wb.raw, count: k * n)
        XCTAssertThrowsError(try engine.packWeights(wb.view([k, n]))) { XCTAssertTrue("\($0)".contains("bfloat16"), "\($0)") }
        let packed32 = try engine.packWeights(StridedView(dense: w.unsafePointer, dims: [k, n]))
        engine.precision = .bfloat16
        // Weights packed for float32 kernels do not fit bf16 ones: refused, not misread.
        let out = Tensor(zeros: [m, n])
        XCTAssertThrowsError(try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), packed: packed32,
                                               dst: StridedView(dense: out.unsafePointer, dims: [m, n])))
        let packed = try engine.packWeights(wb.view([k, n]))
        let plain = Tensor(zeros: [m, n]), fast = Tensor(zeros: [m, n])
        // float32 src (converted per call) and bf16 src both work.
        try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), weights: wb.view([k, n]), dst: StridedView(dense: plain.unsafePointer, dims: [m, n]))
        try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), packed: packed, dst: StridedView(dense: fast.unsafePointer, dims: [m, n]))
        XCTAssertLessThanOrEqual(fast.maxAbsDifference(plain), 1e-5)
        let xb = TypedBuffer(type: .bfloat16, count: m * k)
        Kernels.toBFloat16(x.unsafePointer, xb.raw, count: m * k)
        let outB = TypedBuffer(type: .bfloat16, count: m * n), outPlainB = TypedBuffer(type: .bfloat16, count: m * n)
        try engine.matmul(src: xb.view([m, k]), packed: packed, dst: outB.view([m, n]))
        try engine.matmul(src: xb.view([m, k]), weights: wb.view([k, n]), dst: outPlainB.view([m, n]))
        let a = Tensor(uninitialized: [m, n]), c = Tensor(uninitialized: [m, n])
        Kernels.fromBFloat16(outB.raw, a.unsafePointer, count: m * n); Kernels.fromBFloat16(outPlainB.raw, c.unsafePointer, count: m * n)
        XCTAssertLessThanOrEqual(a.maxAbsDifference(c), 0.02, "bf16 outputs differ by at most one bf16 rounding")
        // bf16 weights unpack exactly, to bf16 or widened to float32.
        let back = Tensor(zeros: [k, n])
        try packed.unpack(into: StridedView(dense: back.unsafePointer, dims: [k, n]))
        let widened = Tensor(uninitialized: [k, n])
        Kernels.fromBFloat16(wb.raw, widened.unsafePointer, count: k * n)
        XCTAssertEqual(back.scalars, widened.scalars)
    }

    func testBadShapesAreErrors() throws {
        let engine = try Engine()
        let w = data(12, 0)
        XCTAssertThrowsError(try engine.packWeights(StridedView(dense: w.unsafePointer, dims: [12])))
        XCTAssertThrowsError(try engine.packWeights(StridedView(dense: w.unsafePointer, dims: [0, 12])))
        let packed = try engine.packWeights(StridedView(dense: w.unsafePointer, dims: [3, 4]))
        let x = data(10, 1), out = Tensor(zeros: [10])
        XCTAssertThrowsError(try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [2, 5]), packed: packed,
                                               dst: StridedView(dense: out.unsafePointer, dims: [2, 4]))) {
            XCTAssertTrue("\($0)".contains("[2, 5] x packed [3, 4]"), "\($0)")
        }
        XCTAssertThrowsError(try packed.unpack(into: StridedView(dense: out.unsafePointer, dims: [4, 3])))
        // Every CPU engine of the process reads the same layouts (batch workers share packed weights).
        let other = try Engine()
        let mine = Tensor(zeros: [8])
        try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [2, 3]), packed: packed, dst: StridedView(dense: mine.unsafePointer, dims: [2, 4]))
        try other.matmul(src: StridedView(dense: x.unsafePointer, dims: [2, 3]), packed: packed, dst: StridedView(dense: out.unsafePointer, dims: [2, 4]))
        XCTAssertEqual(Array(out.scalars.prefix(8)), mine.scalars)
    }
}

/// `Engine.concurrently`: every part runs once, on its own worker engine, errors come back.
/// Our AVX2 GEMM (CKernels/gemm.c) against oneDNN's matmul on plain weights: every tile
/// remainder, K split into several blocks, padded rows, every epilogue, 1 and 2 threads.
final class AVX2GemmTests: XCTestCase {
    func data(_ count: Int, _ seed: Int) -> Tensor { Tensor(shape: [count]) { Float(sin(Double($0 * 7 + seed) * 0.731)) } }

    func testMatchesOneDNNOnEveryRemainderAndEpilogue() throws {
        guard LinearKernel.avx2.isSupported else {
            // Not an x86 CPU with AVX2+FMA: the engine must refuse the kernel, not misuse it.
            let e = try Engine(); e.linearKernel = .avx2
            XCTAssertEqual(e.linearKernel, .onednn)
            return
        }
        let engine = try Engine()
        engine.linearKernel = .avx2
        let reference = try Engine()
        reference.linearKernel = .onednn
        let shapes: [(m: Int, k: Int, n: Int)] = [(1, 1, 1), (5, 7, 3), (6, 16, 16), (7, 33, 17), (13, 300, 40), (72, 64, 31),
                                                 (79, 600, 48), (197, 384, 96), (3, 1536, 20), (250, 20, 100)]
        for threads in [1, 2] {
            engine.threads = threads
            for (m, k, n) in shapes {
                // Rows of src and dst padded (lda = k + 3, ldc = n + 5), as views of wider buffers.
                let lda = k + 3, ldc = n + 5
                let x = data(m * lda, 1), w = data(k * n, 2), b = data(n, 3), old = data(m * ldc, 4)
                let wv = StridedView(dense: w.unsafePointer, dims: [k, n])
                let packed = try engine.packWeights(wv)
                XCTAssertEqual(packed.kernel, .avx2)
                let cases: [[PostOp]] = [[], [.gelu], [.accumulate], [.scale(0.125)], [.accumulate, .gelu]]
                for ops in cases {
                    for withBias in [true, false] {
                        var want = old, got = old
                        want.makeUnique(); got.makeUnique()
                        let bias = withBias ? UnsafePointer(b.unsafePointer) : nil
                        try reference.matmul(src: StridedView(x.unsafePointer, dims: [m, k], strides: [lda, 1]), weights: wv, bias: bias,
                                             dst: StridedView(want.unsafePointer, dims: [m, n], strides: [ldc, 1]), postOps: ops)
                        try engine.matmul(src: StridedView(x.unsafePointer, dims: [m, k], strides: [lda, 1]), packed: packed, bias: bias,
                                          dst: StridedView(got.unsafePointer, dims: [m, n], strides: [ldc, 1]), postOps: ops)
                        // Relative to the size of the sums (K terms of magnitude ≤ 1).
                        let err = got.maxAbsDifference(want)
                        XCTAssertLessThanOrEqual(err, 2e-6 * Float(k) + 1e-6,
                                                 "[\(m), \(k)]x[\(k), \(n)] \(ops) bias \(withBias) threads \(threads): max abs error \(err); first \(Array(got.scalars.prefix(4))) vs \(Array(want.scalars.prefix(4)))")
                        // The padding between rows is never written.
                        for i in 0..<m { for j in n..<ldc { XCTAssertEqual(got[flat: i * ldc + j], old[flat: i * ldc + j]) } }
                    }
                }
            }
        }
        // A residual added after the epilogue cannot be folded into the accumulators: refused.
        let w = data(16 * 16, 1), x = data(4 * 16, 2), out = Tensor(zeros: [4, 16])
        let packed = try engine.packWeights(StridedView(dense: w.unsafePointer, dims: [16, 16]))
        XCTAssertThrowsError(try engine.matmul(src: StridedView(dense: x.unsafePointer, dims: [4, 16]), packed: packed,
                                               dst: StridedView(dense: out.unsafePointer, dims: [4, 16]), postOps: [.gelu, .accumulate]))
    }

    /// The fused attention kernel against softmax(scale·QKᵀ)·V in double precision, per image and
    /// head, on one and two threads and inside batch workers (where each worker runs it alone).
    /// softmax(scale · Q_h·K_hᵀ)·V_h in double precision over `[b, T, heads·d]` tokens, with the
    /// probabilities passed through `roundProbability` first (identity: the definition).
    func referenceAttention(_ q: Tensor, _ k: Tensor, _ v: Tensor, b: Int, heads: Int, tq: Int, tk: Int, d: Int, scale: Float,
                            roundProbability: (Double) -> Double = { $0 }) -> [Double] {
        let c = heads * d
        let qs = q.scalars, ks = k.scalars, vs = v.scalars
        var out = [Double](repeating: 0, count: b * tq * c)
        for i in 0..<b { for h in 0..<heads { for r in 0..<tq {
            var s = [Double](repeating: 0, count: tk)
            for j in 0..<tk {
                for e in 0..<d { s[j] += Double(qs[(i * tq + r) * c + h * d + e]) * Double(ks[(i * tk + j) * c + h * d + e]) }
                s[j] *= Double(scale)
            }
            let m = s.max() ?? 0
            let p = s.map { Foundation.exp($0 - m) }, sum = p.reduce(0, +)
            let probabilities: [Double] = p.map { roundProbability($0 / sum) }
            for e in 0..<d {
                var x = 0.0
                for j in 0..<tk { x += probabilities[j] * Double(vs[(i * tk + j) * c + h * d + e]) }
                out[(i * tq + r) * c + h * d + e] = x
            }
        } } }
        return out
    }

    func testFusedAttentionMatchesTheDefinition() throws {
        guard LinearKernel.avx2.isSupported else { throw XCTSkip("this CPU has no AVX2 + FMA: our kernels do not run here") }
        let engine = try Engine()
        engine.linearKernel = .avx2
        XCTAssertTrue(engine.fusesAttention)
        let shapes: [(b: Int, heads: Int, tq: Int, tk: Int, d: Int)] = [(1, 1, 20, 7, 16), (2, 3, 37, 50, 16), (2, 1, 120, 30, 16),
                                                                        (1, 6, 197, 50, 64), (3, 2, 10, 5, 24), (1, 1, 600, 300, 8)]
        for (b, heads, tq, tk, d) in shapes {
            let c = heads * d
            let q = data(b * tq * c, 1), k = data(b * tk * c, 2), v = data(b * tk * c, 3)
            let scale = 1 / Float(c).squareRoot()
            let want = referenceAttention(q, k, v, b: b, heads: heads, tq: tq, tk: tk, d: d, scale: scale)
            func check(_ ctx: Tensor, _ label: String) {
                let err = zip(ctx.scalars, want).map { abs(Double($0) - $1) }.max() ?? 0
                XCTAssertLessThan(err, 2e-6, "\(label) [b \(b), heads \(heads), tq \(tq), tk \(tk), d \(d)]: max abs error \(err); first \(Array(ctx.scalars.prefix(3))) vs \(Array(want.prefix(3)))")
            }
            for threads in [1, 2] {
                engine.threads = threads
                let ctx = Tensor(zeros: [b * tq * c])
                try engine.attention(q: q.unsafePointer, k: k.unsafePointer, v: v.unsafePointer, ctx: ctx.unsafePointer,
                                     batch: b, heads: heads, tq: tq, tk: tk, channels: c, scale: scale)
                check(ctx, "\(threads) threads")
            }
            // Two batch workers, each running the whole problem alone at once.
            engine.threads = 2
            let outs = [Tensor(zeros: [b * tq * c]), Tensor(zeros: [b * tq * c])]
            try engine.concurrently(2) { i, worker in
                try worker.attention(q: q.unsafePointer, k: k.unsafePointer, v: v.unsafePointer, ctx: outs[i].unsafePointer,
                                     batch: b, heads: heads, tq: tq, tk: tk, channels: c, scale: scale)
            }
            for (i, o) in outs.enumerated() { check(o, "batch worker \(i)") }
        }
    }

    /// Scores spread over [−200, 200] (exp's argument down to −400: every power of two the kernel's
    /// exp builds, and underflow), row lengths with and without a tail of fewer than 8, and a NaN in
    /// one query: that query's row is NaN (as PyTorch's softmax gives), the others are not touched.
    func testFusedAttentionWideScoresAndNaN() throws {
        guard LinearKernel.avx2.isSupported else { throw XCTSkip("this CPU has no AVX2 + FMA: our kernels do not run here") }
        let d = 8
        for (tq, tk) in [(13, 8), (13, 16), (7, 45), (30, 197)] {
            let q = data(tq * d, 4), k = data(tk * d, 5), v = data(tk * d, 6)
            let scale: Float = 25
            let want = referenceAttention(q, k, v, b: 1, heads: 1, tq: tq, tk: tk, d: d, scale: scale)
            let ctx = Tensor(zeros: [tq * d])
            XCTAssertEqual(ck_attention(1, 1, Int32(tq), Int32(tk), Int32(d), q.unsafePointer, tq * d, d, k.unsafePointer, tk * d, d,
                                        v.unsafePointer, tk * d, d, ctx.unsafePointer, tq * d, d, scale, 0), 0)
            let err = zip(ctx.scalars, want).map { abs(Double($0) - $1) }.max() ?? .infinity
            XCTAssertLessThan(err, 2e-6, "wide scores, tq \(tq), tk \(tk): max abs error \(err); first \(Array(ctx.scalars.prefix(3))) vs \(Array(want.prefix(3)))")

            let row = tq / 2
            q.unsafePointer[row * d + 3] = .nan
            let withNaN = Tensor(zeros: [tq * d])
            XCTAssertEqual(ck_attention(1, 1, Int32(tq), Int32(tk), Int32(d), q.unsafePointer, tq * d, d, k.unsafePointer, tk * d, d,
                                        v.unsafePointer, tk * d, d, withNaN.unsafePointer, tq * d, d, scale, 0), 0)
            for r in 0..<tq {
                let values = Array(withNaN.scalars[(r * d)..<((r + 1) * d)])
                if r == row {
                    XCTAssertTrue(values.allSatisfy { $0.isNaN }, "tk \(tk): the NaN query's row must be NaN, got \(values)")
                } else {
                    XCTAssertEqual(values, Array(ctx.scalars[(r * d)..<((r + 1) * d)]), "tk \(tk): row \(r) changed by another row's NaN")
                }
            }
        }
    }

    /// Emulated bf16 attention: with `round_p` the kernel's P·V uses the probabilities rounded to
    /// bfloat16 (as a bf16 softmax output stores them), and only then; and the engine's typed entry
    /// point runs it for bf16 tokens in emulated bf16 precision.
    func testFusedAttentionRoundsProbabilitiesForBFloat16() throws {
        guard LinearKernel.avx2.isSupported else { throw XCTSkip("this CPU has no AVX2 + FMA: our kernels do not run here") }
        let (b, heads, tq, tk, d) = (2, 3, 37, 50, 16)
        let c = heads * d
        let q = data(b * tq * c, 1), k = data(b * tk * c, 2), v = data(b * tk * c, 3)
        let scale: Float = 0.9
        func bf16(_ x: Double) -> Double {
            let bits: UInt32 = Float(x).bitPattern
            return Double(Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF0000))
        }
        let exact = referenceAttention(q, k, v, b: b, heads: heads, tq: tq, tk: tk, d: d, scale: scale)
        let rounded = referenceAttention(q, k, v, b: b, heads: heads, tq: tq, tk: tk, d: d, scale: scale, roundProbability: bf16)
        for round in [Int32(0), 1] {
            let ctx = Tensor(zeros: [b * tq * c])
            XCTAssertEqual(ck_attention(Int32(b), Int32(heads), Int32(tq), Int32(tk), Int32(d), q.unsafePointer, tq * c, c, k.unsafePointer, tk * c, c,
                                        v.unsafePointer, tk * c, c, ctx.unsafePointer, tq * c, c, scale, round), 0)
            let toRounded = zip(ctx.scalars, rounded).map { abs(Double($0) - $1) }.max() ?? 0
            let toExact = zip(ctx.scalars, exact).map { abs(Double($0) - $1) }.max() ?? 0
            if round == 1 {
                // A probability whose float32 value sits on a bf16 rounding boundary may round the
                // other way than from the double one: allow one bf16 ulp of one probability.
                let bound: Double = 4e-2 / 256
                XCTAssertLessThan(toRounded, bound, "rounded probabilities: max abs error \(toRounded)")
                XCTAssertGreaterThan(toExact, 1e-4, "the probabilities must really be rounded (error to unrounded \(toExact))")
            } else {
                XCTAssertLessThan(toExact, 2e-6, "float32 attention unchanged: max abs error \(toExact)")
            }
        }
        // The typed entry point: bf16 tokens in emulated bf16 precision.
        let engine = try Engine()
        engine.linearKernel = .avx2; engine.precision = .bfloat16
        guard engine.emulatesBFloat16 else { return }
        XCTAssertTrue(engine.fusesAttention)
        let buffers = [q, k, v].map { t -> TypedBuffer in
            let buffer = TypedBuffer(type: .bfloat16, count: t.count)
            Kernels.toBFloat16(t.unsafePointer, buffer.raw, count: t.count)
            return buffer
        }
        let ctx = TypedBuffer(type: .bfloat16, count: b * tq * c)
        try engine.attention(q: buffers[0], k: buffers[1], v: buffers[2], ctx: ctx, batch: b, heads: heads, tq: tq, tk: tk, channels: c, scale: scale)
        let got = Tensor(uninitialized: [b * tq * c])
        Kernels.fromBFloat16(ctx.raw, got.unsafePointer, count: got.count)
        // Inputs and output in bf16 now: within a few bf16 ulps of the rounded reference.
        var err = 0.0
        for (x, want) in zip(got.scalars, rounded) { err = max(err, abs(Double(x) - want) / max(abs(want), 0.05)) }
        let relBound: Double = 8.0 / 256
        XCTAssertLessThan(err, relBound, "bf16 tokens: max relative error \(err)")
        XCTAssertThrowsError(try engine.attention(q: buffers[0], k: buffers[1], v: buffers[2], ctx: TypedBuffer(type: .float32, count: b * tq * c),
                                                  batch: b, heads: heads, tq: tq, tk: tk, channels: c, scale: scale), "mixed types")
    }

    /// Dense convolutions as im2col + our GEMM against oneDNN's convolution: kernel sizes,
    /// strides, paddings, batches, non-square images; with few output channels per pixel, fused
    /// per pixel block (`ck_conv_nhwc`; cvt-13's stage-1 embedding, several blocks per thread).
    func testIm2colConvolutionMatchesOneDNN() throws {
        guard LinearKernel.avx2.isSupported else { throw XCTSkip("this CPU has no AVX2 + FMA: our kernels do not run here") }
        let ours = try Engine(), reference = try Engine()
        ours.linearKernel = .avx2; reference.linearKernel = .onednn
        let cases: [(n: Int, cin: Int, cout: Int, h: Int, w: Int, k: Int, stride: Int, pad: Int)] = [
            (2, 16, 24, 9, 7, 3, 2, 1), (1, 64, 192, 14, 14, 3, 2, 1), (3, 20, 17, 11, 13, 5, 1, 2), (1, 16, 40, 8, 8, 3, 1, 0),
            (2, 32, 16, 15, 10, 7, 4, 3), (2, 3, 4, 40, 36, 7, 4, 2), (1, 5, 3, 30, 31, 3, 1, 1), (1, 3, 64, 224, 224, 7, 4, 2)]
        for (n, cin, cout, h, w, k, stride, pad) in cases {
            let x = data(n * h * w * cin, 1)
            let weights = ConvWeights(weight: try Tensor(shape: [cout, cin, k, k], scalars: data(cout * cin * k * k, 2).scalars),
                                      bias: data(cout, 3), groups: 1)
            let ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1
            let want = Tensor(zeros: [n * ho * wo * cout]), got = Tensor(zeros: [n * ho * wo * cout])
            for (e, out) in [(reference, want), (ours, got)] {
                try e.conv2d(src: x.unsafePointer, srcDims: [n, cin, h, w], srcNCHW: false, weights: weights,
                             stride: (stride, stride), padding: (pad, pad), dst: out.unsafePointer, dstHW: (ho, wo))
            }
            let err = got.maxAbsDifference(want)
            XCTAssertLessThanOrEqual(err, 2e-6 * Float(cin * k * k) + 1e-6,
                                     "conv n\(n) \(cin)→\(cout) \(h)x\(w) k\(k) s\(stride) p\(pad): max abs error \(err); first \(Array(got.scalars.prefix(3))) vs \(Array(want.scalars.prefix(3)))")
        }
    }

    /// Depthwise convolution read from and written into token buffers (images further apart than
    /// their pixels, after a CLS row): our kernel and oneDNN's conv on gathered copies both give
    /// oneDNN's dense result, and leave every float outside the output images alone.
    func testDepthwiseConvolutionWithImageStridesMatchesOneDNN() throws {
        guard LinearKernel.avx2.isSupported else { throw XCTSkip("this CPU has no AVX2 + FMA: only oneDNN's depthwise convolution runs") }
        let ours = try Engine(), reference = try Engine()
        ours.depthwiseKernel = .avx2; reference.depthwiseKernel = .onednn
        // Whatever the Linear kernel (AVX-512 CPUs run oneDNN's matmuls with our depthwise kernel).
        ours.linearKernel = .onednn
        let cases: [(n: Int, c: Int, h: Int, w: Int, k: Int, stride: Int, pad: Int, bias: Bool)] = [
            (2, 384, 14, 14, 3, 1, 1, true), (2, 384, 14, 14, 3, 2, 1, true), (1, 64, 9, 7, 3, 2, 1, false),
            (3, 72, 5, 6, 3, 1, 0, true), (1, 13, 6, 5, 5, 2, 2, true), (2, 200, 4, 4, 3, 2, 3, true), (1, 8, 1, 1, 3, 1, 1, true)]
        for (n, c, h, w, k, stride, pad, hasBias) in cases {
            let ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1
            let weights = ConvWeights(weight: try Tensor(shape: [c, 1, k, k], scalars: data(c * k * k, 2).scalars),
                                      bias: hasBias ? data(c, 3) : nil, groups: c)
            let dense = data(n * h * w * c, 1)
            let want = Tensor(zeros: [n * ho * wo * c])
            try reference.conv2d(src: dense.unsafePointer, srcDims: [n, c, h, w], srcNCHW: false, weights: weights,
                                 stride: (stride, stride), padding: (pad, pad), dst: want.unsafePointer, dstHW: (ho, wo))
            // Token buffers [n, 1 + pixels + 1, c]: a CLS row before each image and one spare row after.
            let srcStride = (h * w + 2) * c, dstStride = (ho * wo + 2) * c
            let src = Tensor(zeros: [n * srcStride], value: 1e6), sentinel: Float = -7
            for i in 0..<n { (src.unsafePointer + i * srcStride + c).update(from: dense.unsafePointer + i * h * w * c, count: h * w * c) }
            for (name, engine) in [("ours", ours), ("oneDNN on copies", reference)] {
                let dst = Tensor(zeros: [n * dstStride], value: sentinel)
                try engine.depthwiseConv2d(src: src.unsafePointer + c, srcImageStride: srcStride, n: n, c: c, h: h, w: w, weights: weights,
                                           stride: stride, padding: pad, dst: dst.unsafePointer + c, dstImageStride: dstStride, dstHW: (ho, wo))
                var worst: Float = 0, untouched = true
                for i in 0..<n {
                    for j in 0..<(ho * wo * c) { worst = max(worst, abs(dst.scalars[i * dstStride + c + j] - want.scalars[i * ho * wo * c + j])) }
                    for j in 0..<c { untouched = untouched && dst.scalars[i * dstStride + j] == sentinel && dst.scalars[i * dstStride + (ho * wo + 1) * c + j] == sentinel }
                }
                XCTAssertLessThanOrEqual(worst, 1e-5, "\(name): depthwise n\(n) c\(c) \(h)x\(w) k\(k) s\(stride) p\(pad): max abs error \(worst)")
                XCTAssertTrue(untouched, "\(name): depthwise n\(n) c\(c) wrote outside its output images")
            }
        }
        // Not depthwise weights, or strides shorter than an image: errors, not reads out of bounds.
        let x = Tensor(zeros: [64])
        XCTAssertThrowsError(try ours.depthwiseConv2d(src: x.unsafePointer, srcImageStride: 16, n: 1, c: 4, h: 2, w: 2,
                                                      weights: ConvWeights(weight: Tensor(zeros: [4, 2, 1, 1]), bias: nil, groups: 2),
                                                      stride: 1, padding: 0, dst: x.unsafePointer, dstImageStride: 16, dstHW: (2, 2)))
        XCTAssertThrowsError(try ours.depthwiseConv2d(src: x.unsafePointer, srcImageStride: 8, n: 2, c: 4, h: 2, w: 2,
                                                      weights: ConvWeights(weight: Tensor(zeros: [4, 1, 1, 1]), bias: nil, groups: 4),
                                                      stride: 1, padding: 0, dst: x.unsafePointer, dstImageStride: 16, dstHW: (2, 2)))
    }

    /// The kernels inside a team of batch workers with uneven thread shares (2, 1, 1) compute every
    /// output. (The kernels split work over the team OpenMP grants, which can be smaller than the
    /// one asked for under a nesting limit; libgomp here grants nested teams, so this test runs the
    /// 2-thread share with 2 threads.)
    func testKernelsInsideATeamOfWorkersComputeEverything() throws {
        guard LinearKernel.avx2.isSupported else { throw XCTSkip("this CPU has no AVX2 + FMA: our kernels do not run here") }
        let engine = try Engine()
        engine.linearKernel = .avx2
        engine.threads = 4
        let reference = try Engine()
        reference.linearKernel = .onednn
        let (m, k, n) = (97, 128, 256)
        let x = data(m * k, 1), w = data(k * n, 2)
        let packed = try engine.packWeights(StridedView(dense: w.unsafePointer, dims: [k, n]))
        let want = Tensor(zeros: [m * n])
        try reference.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), weights: StridedView(dense: w.unsafePointer, dims: [k, n]),
                             dst: StridedView(dense: want.unsafePointer, dims: [m, n]))
        let (tq, tk, c) = (64, 40, 32)
        let q = data(tq * c, 3), kk = data(tk * c, 4), v = data(tk * c, 5)
        let ctxAlone = Tensor(zeros: [tq * c])
        try engine.attention(q: q.unsafePointer, k: kk.unsafePointer, v: v.unsafePointer, ctx: ctxAlone.unsafePointer,
                             batch: 1, heads: 2, tq: tq, tk: tk, channels: c, scale: 0.2)
        // 3 parts on a 4-thread engine: a team of 3 workers, the first with a share of 2 threads.
        let outs = (0..<3).map { _ in Tensor(zeros: [m * n]) }, ctxs = (0..<3).map { _ in Tensor(zeros: [tq * c]) }
        try engine.concurrently(3) { i, worker in
            try worker.matmul(src: StridedView(dense: x.unsafePointer, dims: [m, k]), packed: packed,
                              dst: StridedView(dense: outs[i].unsafePointer, dims: [m, n]))
            try worker.attention(q: q.unsafePointer, k: kk.unsafePointer, v: v.unsafePointer, ctx: ctxs[i].unsafePointer,
                                 batch: 1, heads: 2, tq: tq, tk: tk, channels: c, scale: 0.2)
        }
        for i in 0..<3 {
            XCTAssertLessThanOrEqual(outs[i].maxAbsDifference(want), 2e-6 * Float(k) + 1e-6, "GEMM in worker \(i)")
            XCTAssertLessThanOrEqual(ctxs[i].maxAbsDifference(ctxAlone), 1e-6, "attention in worker \(i)")
        }
    }

    /// 16-bit panels: packing keeps the bits, unpacking gives them back or widens them, and the GEMM
    /// on them equals the float32 GEMM on the widened weights exactly (same kernel, same order).
    func testHalfPrecisionPanels() throws {
        guard LinearKernel.avx2.isSupported else { throw XCTSkip("this CPU has no AVX2 + FMA: our kernels do not run here") }
        let (m, k, n) = (37, 300, 45)  // K split in two blocks, a partial panel
        let a = data(m * k, 1), w = data(k * n, 2)
        for format in [Int32(CK_FLOAT16), Int32(CK_BFLOAT16)] where ck_gemm16_supported(format) != 0 {
            let bits: [UInt16] = w.scalars.map { format == Int32(CK_FLOAT16) ? Float16($0).bitPattern : UInt16(truncatingIfNeeded: $0.bitPattern >> 16) }
            let widened = Tensor(shape: [k, n]) { format == Int32(CK_FLOAT16) ? Float(Float16(bitPattern: bits[$0])) : Float(bitPattern: UInt32(bits[$0]) << 16) }
            var panels = [UInt16](repeating: 0xFFFF, count: ck_gemm_packed_count(Int32(k), Int32(n)))
            bits.withUnsafeBufferPointer { ck_gemm_pack16($0.baseAddress!, n, 1, Int32(k), Int32(n), &panels) }
            var back = [UInt16](repeating: 0, count: k * n), wide = [Float](repeating: 0, count: k * n)
            ck_gemm_unpack16(panels, format, Int32(k), Int32(n), &back, 0, n, 1)
            ck_gemm_unpack16(panels, format, Int32(k), Int32(n), &wide, 1, n, 1)
            XCTAssertEqual(back, bits, "format \(format): unpacked bits")
            XCTAssertEqual(wide, widened.scalars, "format \(format): widened")
            let f32 = UnsafeMutablePointer<Float>.allocate(capacity: ck_gemm_packed_count(Int32(k), Int32(n)) + 16)
            defer { f32.deallocate() }
            let aligned = UnsafeMutablePointer<Float>(bitPattern: (Int(bitPattern: f32) + 63) / 64 * 64)!
            ck_gemm_pack(widened.unsafePointer, n, 1, Int32(k), Int32(n), aligned)
            let want = Tensor(zeros: [m * n]), got = Tensor(zeros: [m * n])
            let bias = data(n, 3)
            var ops: [Int32] = [1], args: [Float] = [0]
            XCTAssertEqual(ck_gemm(Int32(m), Int32(n), Int32(k), a.unsafePointer, k, aligned, bias.unsafePointer, want.unsafePointer, n, &ops, &args, 1), 0)
            let status = panels.withUnsafeBufferPointer {
                ck_gemm16(Int32(m), Int32(n), Int32(k), a.unsafePointer, k, $0.baseAddress!, format, bias.unsafePointer, got.unsafePointer, n, &ops, &args, 1)
            }
            XCTAssertEqual(status, 0)
            XCTAssertEqual(got.maxAbsDifference(want), 0, "format \(format): GEMM on 16-bit panels")
        }
    }

    func testGELUIsExactErfGELU() throws {
        guard LinearKernel.avx2.isSupported else { throw XCTSkip("this CPU has no AVX2 + FMA: our kernels do not run here") }
        let xs = (0..<4001).map { Float($0 - 2000) / 200 } + [-80, -30, 30, 80, 0, -0.0]
        var ys = xs
        ys.withUnsafeMutableBufferPointer { ck_gelu($0.baseAddress!, $0.count) }
        for (x, y) in zip(xs, ys) {
            let want = 0.5 * Double(x) * (1 + erf(Double(x) / 2.squareRoot()))
            XCTAssertLessThanOrEqual(abs(Double(y) - want), 3e-7 * max(1, abs(Double(x))), "gelu(\(x)) = \(y), want \(want)")
        }
        // As PyTorch: NaN stays NaN, +∞ stays +∞ (and −∞ gives NaN, −∞ · 0).
        var special: [Float] = [.nan, .infinity, -.infinity, 5.5, -5.5]
        special.withUnsafeMutableBufferPointer { ck_gelu($0.baseAddress!, $0.count) }
        XCTAssertTrue(special[0].isNaN && special[2].isNaN, "\(special)")
        XCTAssertEqual(special[1], .infinity)
        XCTAssertEqual(special[3], 5.5)
        XCTAssertEqual(special[4], 0)
    }
}

final class ConcurrentlyTests: XCTestCase {
    struct PartFailed: Error {}

    func testEveryPartRunsOnceAndAWorkerRunsOnePartAtATime() throws {
        let engine = try Engine()
        let lock = NSLock()
        var seen: [Int: ObjectIdentifier] = [:], busy: Set<ObjectIdentifier> = [], overlaps = 0
        // 5 parts on the 2 threads: one worker (engine) per thread, each running its parts in turn.
        try engine.concurrently(5) { i, worker in
            XCTAssertFalse(worker === engine)
            let id = ObjectIdentifier(worker)
            lock.lock()
            XCTAssertNil(seen[i], "part \(i) ran twice"); seen[i] = id
            if busy.contains(id) { overlaps += 1 }
            busy.insert(id)
            lock.unlock()
            Thread.sleep(forTimeInterval: 0.01)
            lock.lock(); busy.remove(id); lock.unlock()
        }
        XCTAssertEqual(seen.keys.sorted(), [0, 1, 2, 3, 4])
        XCTAssertEqual(Set(seen.values).count, 2, "one worker per thread")
        XCTAssertEqual(overlaps, 0, "a worker engine never runs two parts at once")
        XCTAssertEqual(engine.threads, 2, "the caller's thread count is untouched")
        XCTAssertThrowsError(try engine.concurrently(2) { i, _ in if i == 1 { throw PartFailed() } }) { XCTAssertTrue($0 is PartFailed) }
    }
}
