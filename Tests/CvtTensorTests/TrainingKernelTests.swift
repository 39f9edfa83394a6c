import CKernels
import CvtTensor
import Foundation
import XCTest

/// The training kernels against straightforward double-precision loops, on the AVX2 path and the
/// scalar one (`ck_train_set_scalar`), at sizes that hit vector tails and, above 64k values, the
/// multi-threaded split.
final class TrainingKernelTests: XCTestCase {
    override func tearDown() { ck_train_set_scalar(0) }

    /// Odd widths (vector tails) and, for each, a small and a multi-threaded row count.
    let widths = [1, 7, 13, 48, 100]
    func rowCounts(_ cols: Int) -> [Int] { [3, 70_001 / cols + 1] }

    /// Runs `body` on the vector path and on the scalar one.
    func bothPaths(_ body: (String) throws -> Void) rethrows {
        for scalar in [false, true] {
            ck_train_set_scalar(scalar ? 1 : 0)
            defer { ck_train_set_scalar(0) }
            try body(scalar ? "scalar" : "avx2")
        }
    }

    // ---- helpers ----

    struct Rng {
        var state: UInt64
        init(_ seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        /// Uniform in [-1, 1).
        mutating func uniform() -> Float { Float(Double(next() >> 11) / Double(1 << 53) * 2 - 1) }
        mutating func values(_ n: Int, scale: Float = 1, offset: Float = 0) -> [Float] { (0..<n).map { _ in uniform() * scale + offset } }
    }

    /// A manually allocated float buffer: one pointer may be passed as two aliasing arguments.
    final class Buf {
        let p: UnsafeMutablePointer<Float>
        let count: Int
        init(_ v: [Float]) {
            count = v.count
            p = .allocate(capacity: max(count, 1))
            p.initialize(from: v, count: count)
        }
        convenience init(zeros n: Int) { self.init([Float](repeating: 0, count: n)) }
        convenience init(filled n: Int, _ v: Float) { self.init([Float](repeating: v, count: n)) }
        var values: [Float] { Array(UnsafeBufferPointer(start: p, count: count)) }
        deinit { p.deallocate() }
    }

    /// Fails unless |got − ref| ≤ atol[i] + rtol·|ref| everywhere (NaN fails), printing the kernel
    /// name, the max abs error and the first values.
    func expectClose(_ name: String, _ got: [Float], _ ref: [Double], rtol: Double, atol: [Double]? = nil, atolAll: Double = 0,
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, ref.count, "\(name): count", file: file, line: line)
        var worst = 0.0, bad = -1
        for i in 0..<min(got.count, ref.count) {
            let err = abs(Double(got[i]) - ref[i])
            let tol = (atol?[i] ?? 0) + atolAll + rtol * abs(ref[i])
            if !(err <= tol) && bad < 0 { bad = i }
            if err > worst || err.isNaN { worst = err.isNaN ? .nan : max(worst, err) }
        }
        if bad >= 0 {
            XCTFail("\(name): max abs error \(worst); first bad [\(bad)] got \(got[bad]) want \(ref[bad]); "
                    + "first \(Array(got.prefix(4))) vs \(Array(ref.prefix(4)))", file: file, line: line)
        }
    }

    func expectEqualBits(_ name: String, _ got: [Float], _ ref: [Float], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, ref.count, "\(name): count", file: file, line: line)
        if let i = zip(got, ref).enumerated().first(where: { $0.element.0.bitPattern != $0.element.1.bitPattern })?.offset {
            var worst: Float = 0
            for (a, b) in zip(got, ref) { worst = max(worst, abs(a - b)) }
            XCTFail("\(name): not bit-identical, max abs error \(worst); first diff [\(i)] got \(got[i]) want \(ref[i]); "
                    + "first \(Array(got.prefix(4))) vs \(Array(ref.prefix(4)))", file: file, line: line)
        }
    }

    // ---- LayerNorm ----

    func layerNormReference(_ x: [Float], rows: Int, cols: Int, w: [Float], b: [Float], eps: Float) -> (y: [Double], mean: [Double], rstd: [Double]) {
        var y = [Double](repeating: 0, count: rows * cols), mean = [Double](repeating: 0, count: rows), rstd = mean
        for r in 0..<rows {
            var s = 0.0
            for i in 0..<cols { s += Double(x[r * cols + i]) }
            let m = s / Double(cols)
            var v = 0.0
            for i in 0..<cols { let d = Double(x[r * cols + i]) - m; v += d * d }
            let rs = 1 / (v / Double(cols) + Double(eps)).squareRoot()
            mean[r] = m; rstd[r] = rs
            for i in 0..<cols { y[r * cols + i] = (Double(x[r * cols + i]) - m) * rs * Double(w[i]) + Double(b[i]) }
        }
        return (y, mean, rstd)
    }

    func testLayerNormForward() {
        var rng = Rng(1)
        bothPaths { path in
            for cols in widths { for rows in rowCounts(cols) {
                let name = "layerNormForward[\(path)] \(rows)x\(cols)"
                let x = rng.values(rows * cols, scale: 2, offset: 0.7), w = rng.values(cols, offset: 1), b = rng.values(cols)
                let ref = layerNormReference(x, rows: rows, cols: cols, w: w, b: b, eps: 1e-5)
                let xb = Buf(x), y = Buf(zeros: rows * cols), mean = Buf(zeros: rows), rstd = Buf(zeros: rows)
                Kernels.layerNormForward(xb.p, y.p, rows: rows, cols: cols, weight: w, bias: b, eps: 1e-5, mean: mean.p, rstd: rstd.p)
                expectClose(name + " y", y.values, ref.y, rtol: 1e-5, atolAll: 1e-5)
                expectClose(name + " mean", mean.values, ref.mean, rtol: 1e-6, atolAll: 1e-6)
                expectClose(name + " rstd", rstd.values, ref.rstd, rtol: 1e-5)
                if path == "avx2" {
                    // Same arithmetic as the inference LayerNorm.
                    let inference = Buf(zeros: rows * cols)
                    Kernels.layerNorm(xb.p, inference.p, rows: rows, cols: cols, weight: w, bias: b, eps: 1e-5)
                    expectEqualBits(name + " vs layerNorm", y.values, inference.values)
                }
                // In place.
                Kernels.layerNormForward(xb.p, xb.p, rows: rows, cols: cols, weight: w, bias: b, eps: 1e-5, mean: mean.p, rstd: rstd.p)
                expectEqualBits(name + " in place", xb.values, y.values)
            } }
        }
    }

    func testLayerNormBackward() {
        var rng = Rng(2)
        bothPaths { path in
            for cols in widths { for rows in rowCounts(cols) { for accumulate in [false, true] { for alias in [false, true] {
                if alias && accumulate { continue }  // dx = dy: an overwrite only
                let name = "layerNormBackward[\(path)] \(rows)x\(cols) accumulate \(accumulate) alias \(alias)"
                let x = rng.values(rows * cols, scale: 2, offset: 0.3), w = rng.values(cols, offset: 1)
                let dy = rng.values(rows * cols), dx0 = rng.values(rows * cols)
                let dw0 = rng.values(cols), db0 = rng.values(cols)
                let f = layerNormReference(x, rows: rows, cols: cols, w: w, b: [Float](repeating: 0, count: cols), eps: 1e-5)
                let mean = f.mean.map { Float($0) }, rstd = f.rstd.map { Float($0) }
                var refDx = [Double](repeating: 0, count: rows * cols), tolDx = refDx
                var refDw = dw0.map { Double($0) }, refDb = db0.map { Double($0) }
                var magDw = [Double](repeating: 0, count: cols), magDb = magDw
                for r in 0..<rows {
                    let m = Double(mean[r]), rs = Double(rstd[r])
                    var sg = 0.0, sgx = 0.0, mag = 0.0
                    for i in 0..<cols {
                        let xh = (Double(x[r * cols + i]) - m) * rs, g = Double(dy[r * cols + i]) * Double(w[i])
                        sg += g; sgx += g * xh; mag += abs(g) * (1 + abs(xh))
                        refDw[i] += Double(dy[r * cols + i]) * xh; refDb[i] += Double(dy[r * cols + i])
                        magDw[i] += abs(Double(dy[r * cols + i]) * xh); magDb[i] += abs(Double(dy[r * cols + i]))
                    }
                    for i in 0..<cols {
                        let k = r * cols + i
                        let xh = (Double(x[k]) - m) * rs, g = Double(dy[k]) * Double(w[i])
                        refDx[k] = rs * (g - sg / Double(cols) - xh * sgx / Double(cols)) + (accumulate ? Double(dx0[k]) : 0)
                        tolDx[k] = 1e-5 * rs * (abs(g) + mag / Double(cols))
                    }
                }
                let dyb = Buf(dy), dx = alias ? dyb : Buf(dx0), dw = Buf(dw0), db = Buf(db0)
                Kernels.layerNormBackward(dy: dyb.p, x: x, mean: mean, rstd: rstd, weight: w, rows: rows, cols: cols, dx: dx.p,
                                          accumulate: accumulate, dweight: dw.p, dbias: db.p)
                expectClose(name + " dx", dx.values, refDx, rtol: 1e-5, atol: tolDx)
                expectClose(name + " dweight", dw.values, refDw, rtol: 1e-5, atol: magDw.map { 1e-6 * $0 })
                expectClose(name + " dbias", db.values, refDb, rtol: 1e-5, atol: magDb.map { 1e-6 * $0 })
            } } } }
        }
    }

    // ---- GELU ----

    func phi(_ x: Double) -> Double { 0.5 * erfc(-x / 2.0.squareRoot()) }

    func geluInputs(_ rng: inout Rng, _ n: Int) -> [Float] {
        var x = rng.values(n, scale: 12)
        let specials: [Float] = [0, -0, 1e-30, -1e-30, 1e-8, -1e-8, -13, -12.5, -9, -5.5, -0.7518, 0.5, 5.5, 9, 20, -20, 1e4, -1e4]
        for (i, s) in specials.enumerated() where i < n { x[i] = s }
        return x
    }

    func testGelu() {
        var rng = Rng(3)
        bothPaths { path in
            for n in [1, 7, 13, 48, 100, 70_001] {
                let name = "gelu[\(path)] \(n)"
                let x = geluInputs(&rng, n)
                let ref = x.map { Double($0) * phi(Double($0)) }
                let y = Buf(zeros: n)
                Kernels.gelu(x, y.p, count: n)
                // The vector path's erf fit: within 2.1e-7·max(|x|, 1) (the scalar path is exact to rounding).
                expectClose(name, y.values, ref, rtol: 1.2e-7, atol: x.map { 2.5e-7 * max(abs(Double($0)), 1) })
                let inPlace = Buf(x)
                Kernels.gelu(inPlace.p, inPlace.p, count: n)
                expectEqualBits(name + " in place", inPlace.values, y.values)
            }
        }
    }

    func testGeluBackward() {
        var rng = Rng(4)
        bothPaths { path in
            for n in [1, 7, 13, 48, 100, 70_001] { for alias in [false, true] {
                let name = "geluBackward[\(path)] \(n) alias \(alias)"
                let x = geluInputs(&rng, n), dy = rng.values(n, scale: 3)
                var ref = [Double](), tol = [Double]()
                for i in 0..<n {
                    let xv = Double(x[i]), p = phi(xv), g = exp(-0.5 * xv * xv) / (2 * Double.pi).squareRoot()
                    ref.append(Double(dy[i]) * (p + xv * g))
                    tol.append(4e-7 * abs(Double(dy[i])) * max(abs(xv), 1) + 1e-44)
                }
                let dyb = Buf(dy), dx = alias ? dyb : Buf(zeros: n)
                Kernels.geluBackward(x: x, dy: dyb.p, dx: dx.p, count: n)
                expectClose(name, dx.values, ref, rtol: 1.2e-7, atol: tol)
            } }
        }
    }

    // ---- softmax ----

    func softmaxReference(_ x: [Float], rows: Int, cols: Int) -> [Double] {
        var p = [Double](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            var m = -Double.infinity
            for i in 0..<cols { m = max(m, Double(x[r * cols + i])) }
            var s = 0.0
            for i in 0..<cols { p[r * cols + i] = exp(Double(x[r * cols + i]) - m); s += p[r * cols + i] }
            for i in 0..<cols { p[r * cols + i] /= s }
        }
        return p
    }

    func testSoftmaxForward() {
        var rng = Rng(5)
        bothPaths { path in
            for cols in widths + [784] { for rows in rowCounts(cols) { for alias in [false, true] {
                let name = "softmaxForward[\(path)] \(rows)x\(cols) alias \(alias)"
                var x = rng.values(rows * cols, scale: 8, offset: 3)
                if cols > 1 { x[1] = -.infinity }  // a masked score
                if cols > 2 { x[cols + 2] = -100 }  // below exp's normal range
                let ref = softmaxReference(x, rows: rows, cols: cols)
                let xb = Buf(x), p = alias ? xb : Buf(zeros: rows * cols)
                Kernels.softmaxForward(xb.p, p.p, rows: rows, cols: cols)
                // An exp within 2 ulp keeps every probability within a few 1e-7 (a low-order one would not).
                expectClose(name, p.values, ref, rtol: 2e-6, atolAll: 1e-37)
            } } }
        }
    }

    /// Rows [0, t₁ … t₁₅] with every t < −22: the sum is 1 within 4e-9, so 1/sum rounds to 1 and the
    /// probabilities are the kernel's exp(t) itself, to be within 2 ulp.
    func testSoftmaxExpIsWithinTwoUlp() {
        var rng = Rng(17)
        bothPaths { path in
            for cols in [2, 16] {
                let rows = 20_000
                var x = [Float](repeating: 0, count: rows * cols)
                for r in 0..<rows { for i in 1..<cols { x[r * cols + i] = -54.5 + 32.5 * rng.uniform() } }
                let p = Buf(zeros: rows * cols)
                Kernels.softmaxForward(x, p.p, rows: rows, cols: cols)
                let got = p.values
                let ref = x.map { exp(Double($0)) }
                let mask = (0..<x.count).map { $0 % cols == 0 }
                expectClose("softmax exp[\(path)] cols \(cols)", zip(got, mask).map { $1 ? 0 : $0 }, zip(ref, mask).map { $1 ? 0 : $0 },
                            rtol: 0, atol: ref.map { 2 * Double(Float($0).ulp) })
            }
        }
    }

    func testSoftmaxBackward() {
        var rng = Rng(6)
        bothPaths { path in
            for cols in widths + [784] { for rows in rowCounts(cols) { for alias in [false, true] {
                let name = "softmaxBackward[\(path)] \(rows)x\(cols) alias \(alias)"
                let p = softmaxReference(rng.values(rows * cols, scale: 4), rows: rows, cols: cols).map { Float($0) }
                let dp = rng.values(rows * cols, scale: 2)
                let scale: Float = 0.125
                var ref = [Double](repeating: 0, count: rows * cols), tol = ref
                for r in 0..<rows {
                    var dot = 0.0, mag = 0.0
                    for i in 0..<cols { dot += Double(p[r * cols + i]) * Double(dp[r * cols + i]); mag += abs(Double(p[r * cols + i]) * Double(dp[r * cols + i])) }
                    for i in 0..<cols {
                        let k = r * cols + i
                        ref[k] = Double(scale) * Double(p[k]) * (Double(dp[k]) - dot)
                        tol[k] = 1e-6 * Double(scale) * Double(p[k]) * (abs(Double(dp[k])) + mag)
                    }
                }
                let dpb = Buf(dp), ds = alias ? dpb : Buf(zeros: rows * cols)
                Kernels.softmaxBackward(p: p, dp: dpb.p, ds: ds.p, rows: rows, cols: cols, scale: scale)
                expectClose(name, ds.values, ref, rtol: 1e-5, atol: tol)
            } } }
        }
    }

    /// bf16 rounding of float32 values and back (round to nearest even, through the engine's conversions).
    func bf16(_ x: [Float]) -> [UInt16] {
        var bits = [UInt16](repeating: 0, count: x.count)
        bits.withUnsafeMutableBytes { b in x.withUnsafeBufferPointer { Kernels.toBFloat16($0.baseAddress!, b.baseAddress!, count: x.count) } }
        return bits
    }
    func widen(_ bits: [UInt16]) -> [Float] { bits.map { Float(bitPattern: UInt32($0) << 16) } }

    /// The bf16 kernels are the float32 ones on the widened inputs, rounded once: bit for bit.
    func testBFloat16SoftmaxBackwardAndGelu() {
        var rng = Rng(11)
        bothPaths { path in
            for cols in widths + [784] { for rows in rowCounts(cols) {
                let n = rows * cols, name = "[\(path)] \(rows)x\(cols)"
                // Softmax backward from bf16 probabilities to bf16 dS.
                let p = bf16(softmaxReference(rng.values(n, scale: 4), rows: rows, cols: cols).map { Float($0) })
                let dp = rng.values(n, scale: 2)
                let wide = Buf(zeros: n)
                Kernels.softmaxBackward(p: widen(p), dp: dp, ds: wide.p, rows: rows, cols: cols, scale: 0.125)
                var ds = [UInt16](repeating: 0, count: n)
                p.withUnsafeBytes { pb in ds.withUnsafeMutableBytes { db in
                    Kernels.softmaxBackwardBFloat16(p: pb.baseAddress!, dp: dp, ds: db.baseAddress!, rows: rows, cols: cols, scale: 0.125)
                } }
                XCTAssertEqual(ds, bf16(wide.values), "softmaxBackwardBFloat16\(name)")
                // GELU: kept = bf16(x), y = bf16(GELU(kept)); the recompute gives y again; the
                // backward is the float32 one at the widened input, in place.
                let x = rng.values(n, scale: 12, offset: -6)
                var kept = [UInt16](repeating: 0, count: n), y = kept, again = kept
                kept.withUnsafeMutableBytes { kb in y.withUnsafeMutableBytes { yb in
                    Kernels.geluBFloat16(x, xBF16: kb.baseAddress!, yBF16: yb.baseAddress!, count: n)
                } }
                XCTAssertEqual(kept, bf16(x), "geluBFloat16 kept\(name)")
                let g = Buf(zeros: n)
                Kernels.gelu(widen(kept), g.p, count: n)
                XCTAssertEqual(y, bf16(g.values), "geluBFloat16\(name)")
                kept.withUnsafeBytes { kb in again.withUnsafeMutableBytes { ab in
                    Kernels.geluBFloat16(xBF16: kb.baseAddress!, yBF16: ab.baseAddress!, count: n)
                } }
                XCTAssertEqual(again, y, "geluBFloat16 recomputed\(name)")
                let dy = rng.values(n, scale: 2), ref = Buf(zeros: n), inPlace = Buf(dy)
                Kernels.geluBackward(x: widen(kept), dy: dy, dx: ref.p, count: n)
                kept.withUnsafeBytes { Kernels.geluBackwardBFloat16(xBF16: $0.baseAddress!, dy: inPlace.p, dx: inPlace.p, count: n) }
                XCTAssertEqual(inPlace.values, ref.values, "geluBackwardBFloat16\(name)")
            } }
        }
    }

    // ---- BatchNorm ----

    func testBatchNormStatistics() {
        var rng = Rng(7)
        bothPaths { path in
            for c in widths { for rows in rowCounts(c) {
                let name = "batchNormStatistics[\(path)] \(rows)x\(c)"
                // A large offset against a small spread: a float E[x²] − E[x]² would lose everything.
                let offsets = rng.values(c, scale: 10, offset: 20)
                var x = [Float](repeating: 0, count: rows * c)
                for r in 0..<rows { for i in 0..<c { x[r * c + i] = offsets[i] + 0.01 * rng.uniform() } }
                var mean = [Double](repeating: 0, count: c), variance = mean
                for i in 0..<c {
                    var s = 0.0
                    for r in 0..<rows { s += Double(x[r * c + i]) }
                    mean[i] = s / Double(rows)
                    var v = 0.0
                    for r in 0..<rows { let d = Double(x[r * c + i]) - mean[i]; v += d * d }
                    variance[i] = v / Double(rows)
                }
                let m = Buf(zeros: c), v = Buf(zeros: c)
                Kernels.batchNormStatistics(x, rows: rows, channels: c, mean: m.p, variance: v.p)
                expectClose(name + " mean", m.values, mean, rtol: 1e-7)
                expectClose(name + " variance", v.values, variance, rtol: 1e-5, atolAll: 1e-12)
            } }
        }
    }

    func testBatchNormForward() {
        var rng = Rng(8)
        bothPaths { path in
            for c in widths { for rows in rowCounts(c) { for alias in [false, true] {
                let name = "batchNormForward[\(path)] \(rows)x\(c) alias \(alias)"
                let x = rng.values(rows * c, scale: 3, offset: 1)
                let mean = rng.values(c), rstd = rng.values(c, scale: 0.5, offset: 1.5), w = rng.values(c), b = rng.values(c)
                var ref = [Double](repeating: 0, count: rows * c)
                for k in 0..<rows * c {
                    let i = k % c
                    ref[k] = (Double(x[k]) - Double(mean[i])) * Double(rstd[i]) * Double(w[i]) + Double(b[i])
                }
                let xb = Buf(x), y = alias ? xb : Buf(zeros: rows * c)
                Kernels.batchNormForward(xb.p, y.p, rows: rows, channels: c, mean: mean, rstd: rstd, weight: w, bias: b)
                expectClose(name, y.values, ref, rtol: 1e-5, atolAll: 1e-5)
            } } }
        }
    }

    func testBatchNormBackward() {
        var rng = Rng(9)
        bothPaths { path in
            for c in widths { for rows in rowCounts(c) { for alias in [false, true] {
                let name = "batchNormBackward[\(path)] \(rows)x\(c) alias \(alias)"
                let x = rng.values(rows * c, scale: 2, offset: 0.5), dy = rng.values(rows * c)
                let mean = rng.values(c, scale: 0.2, offset: 0.5), rstd = rng.values(c, scale: 0.3, offset: 1), w = rng.values(c)
                let dw0 = rng.values(c), db0 = rng.values(c)
                var sdy = [Double](repeating: 0, count: c), sdyx = sdy, mdy = sdy, mdyx = sdy
                for k in 0..<rows * c {
                    let i = k % c, xh = (Double(x[k]) - Double(mean[i])) * Double(rstd[i])
                    sdy[i] += Double(dy[k]); sdyx[i] += Double(dy[k]) * xh
                    mdy[i] += abs(Double(dy[k])); mdyx[i] += abs(Double(dy[k]) * xh)
                }
                let n = Double(rows)
                var ref = [Double](repeating: 0, count: rows * c), tol = ref
                for k in 0..<rows * c {
                    let i = k % c, xh = (Double(x[k]) - Double(mean[i])) * Double(rstd[i]), s = Double(w[i]) * Double(rstd[i])
                    ref[k] = s * (Double(dy[k]) - sdy[i] / n - xh * sdyx[i] / n)
                    tol[k] = 1e-5 * abs(s) * (abs(Double(dy[k])) + mdy[i] / n + abs(xh) * mdyx[i] / n)
                }
                let dyb = Buf(dy), dx = alias ? dyb : Buf(zeros: rows * c), dw = Buf(dw0), db = Buf(db0)
                Kernels.batchNormBackward(dy: dyb.p, x: x, mean: mean, rstd: rstd, weight: w, rows: rows, channels: c, dx: dx.p,
                                          dweight: dw.p, dbias: db.p)
                expectClose(name + " dx", dx.values, ref, rtol: 1e-5, atol: tol)
                expectClose(name + " dweight", dw.values, zip(dw0, sdyx).map { Double($0) + $1 }, rtol: 1e-5, atol: mdyx.map { 1e-6 * $0 })
                expectClose(name + " dbias", db.values, zip(db0, sdy).map { Double($0) + $1 }, rtol: 1e-5, atol: mdy.map { 1e-6 * $0 })
            } } }
        }
    }

    // ---- convolutions ----

    /// (n, h, w, c, k, stride, padding): odd channel counts (tails of 64- and 8-channel blocks),
    /// strides 1/2/4, windows with a single tap inside the image (1×1 images, padding k − 1), and
    /// batches large enough for the threaded split.
    let convShapes = [(2, 9, 7, 13, 3, 1, 1), (2, 10, 9, 7, 3, 2, 1), (1, 8, 8, 100, 3, 2, 1), (1, 5, 6, 1, 3, 1, 0),
                      (2, 9, 11, 48, 5, 2, 2), (1, 19, 23, 3, 7, 4, 2), (2, 1, 1, 5, 3, 1, 1), (1, 6, 5, 9, 3, 2, 2),
                      (8, 28, 28, 64, 3, 1, 1), (4, 14, 14, 72, 3, 2, 1)]

    func outSize(_ n: Int, _ k: Int, _ s: Int, _ p: Int) -> Int { (n + 2 * p - k) / s + 1 }

    func testDepthwiseConvolution() {
        var rng = Rng(10)
        bothPaths { path in
            for (n, h, w, c, k, s, p) in convShapes {
                let ho = outSize(h, k, s, p), wo = outSize(w, k, s, p)
                let name = "depthwise[\(path)] n\(n) \(h)x\(w)x\(c) k\(k) s\(s) p\(p)"
                let x = rng.values(n * h * w * c), taps = rng.values(k * k * c), dy = rng.values(n * ho * wo * c), dt0 = rng.values(k * k * c)
                var y = [Double](repeating: 0, count: n * ho * wo * c), dx = [Double](repeating: 0, count: n * h * w * c)
                var dt = dt0.map { Double($0) }, dtMag = [Double](repeating: 0, count: k * k * c)
                var yMag = y, dxMag = dx
                for b in 0..<n { for oy in 0..<ho { for ox in 0..<wo { for ky in 0..<k { for kx in 0..<k {
                    let iy = oy * s - p + ky, ix = ox * s - p + kx
                    if iy < 0 || iy >= h || ix < 0 || ix >= w { continue }
                    for ch in 0..<c {
                        let o = ((b * ho + oy) * wo + ox) * c + ch, i = ((b * h + iy) * w + ix) * c + ch, t = (ky * k + kx) * c + ch
                        y[o] += Double(x[i]) * Double(taps[t]); yMag[o] += abs(Double(x[i]) * Double(taps[t]))
                        dx[i] += Double(dy[o]) * Double(taps[t]); dxMag[i] += abs(Double(dy[o]) * Double(taps[t]))
                        dt[t] += Double(dy[o]) * Double(x[i]); dtMag[t] += abs(Double(dy[o]) * Double(x[i]))
                    }
                } } } } }
                let yb = Buf(filled: n * ho * wo * c, .nan), dxb = Buf(filled: n * h * w * c, .nan), dtb = Buf(dt0)
                Kernels.depthwiseForward(x, n: n, h: h, w: w, c: c, taps: taps, kernel: k, stride: s, padding: p, ho: ho, wo: wo, yb.p)
                Kernels.depthwiseBackwardData(dy: dy, n: n, h: h, w: w, c: c, taps: taps, kernel: k, stride: s, padding: p, ho: ho, wo: wo, dx: dxb.p)
                Kernels.depthwiseBackwardWeight(x: x, dy: dy, n: n, h: h, w: w, c: c, kernel: k, stride: s, padding: p, ho: ho, wo: wo, dtaps: dtb.p)
                expectClose(name + " forward", yb.values, y, rtol: 1e-5, atol: yMag.map { 1e-6 * $0 })
                expectClose(name + " backwardData", dxb.values, dx, rtol: 1e-5, atol: dxMag.map { 1e-6 * $0 })
                expectClose(name + " backwardWeight", dtb.values, dt, rtol: 1e-5, atol: dtMag.map { 1e-6 * $0 })
            }
        }
    }

    func testIm2colAndCol2im() {
        var rng = Rng(11)
        bothPaths { path in
            for (n, h, w, c, k, s, p) in convShapes {
                let ho = outSize(h, k, s, p), wo = outSize(w, k, s, p), patch = k * k * c
                let name = "im2col/col2im[\(path)] n\(n) \(h)x\(w)x\(c) k\(k) s\(s) p\(p)"
                let x = rng.values(n * h * w * c), g = rng.values(n * ho * wo * patch)
                var cols = [Float](repeating: 0, count: n * ho * wo * patch)
                var dx = [Double](repeating: 0, count: n * h * w * c), mag = dx
                for b in 0..<n { for oy in 0..<ho { for ox in 0..<wo { for ky in 0..<k { for kx in 0..<k {
                    let iy = oy * s - p + ky, ix = ox * s - p + kx
                    if iy < 0 || iy >= h || ix < 0 || ix >= w { continue }
                    for ch in 0..<c {
                        let r = ((b * ho + oy) * wo + ox) * patch + (ky * k + kx) * c + ch, i = ((b * h + iy) * w + ix) * c + ch
                        cols[r] = x[i]
                        dx[i] += Double(g[r]); mag[i] += abs(Double(g[r]))
                    }
                } } } } }
                let colsb = Buf(filled: cols.count, .nan), dxb = Buf(filled: n * h * w * c, .nan)
                Kernels.im2colNHWC(x, n: n, h: h, w: w, c: c, kernel: k, stride: s, padding: p, ho: ho, wo: wo, colsb.p)
                expectEqualBits(name + " im2col", colsb.values, cols)
                Kernels.col2imNHWC(g, n: n, h: h, w: w, c: c, kernel: k, stride: s, padding: p, ho: ho, wo: wo, dxb.p)
                expectClose(name + " col2im", dxb.values, dx, rtol: 1e-6, atol: mag.map { 1e-6 * $0 })
            }
        }
    }

    func testAvgPoolBackwardIsTheAdjointOfTheForward() {
        var rng = Rng(12)
        // (n, h, w, c, kernel, stride, padding): CvT's class-token-free pooling shapes and ceil-mode edges.
        for (n, h, w, c, k, s, p) in [(2, 4, 4, 3, 3, 2, 1), (1, 5, 7, 5, 3, 2, 1), (2, 14, 14, 8, 3, 2, 1), (1, 1, 1, 2, 3, 2, 1),
                                      (3, 6, 5, 7, 2, 2, 0), (8, 56, 56, 13, 3, 2, 1)] {
            let ho = Kernels.avgPoolOutputSize(h, kernel: k, stride: s, padding: p)
            let wo = Kernels.avgPoolOutputSize(w, kernel: k, stride: s, padding: p)
            let name = "avgPoolBackwardNHWC n\(n) \(h)x\(w)x\(c) k\(k) s\(s) p\(p)"
            let x = rng.values(n * h * w * c), dy = rng.values(n * ho * wo * c)
            // The reference: the transpose of the forward's linear map, read off its columns.
            var ref = [Double](repeating: 0, count: n * h * w * c)
            for b in 0..<n { for oy in 0..<ho { for ox in 0..<wo {
                var hs = oy * s - p, ws = ox * s - p
                var he = min(hs + k, h + p), we = min(ws + k, w + p)
                let size = Double((he - hs) * (we - ws))
                hs = max(hs, 0); ws = max(ws, 0); he = min(he, h); we = min(we, w)
                for yy in hs..<max(he, hs) { for xx in ws..<max(we, ws) { for ch in 0..<c {
                    ref[((b * h + yy) * w + xx) * c + ch] += Double(dy[((b * ho + oy) * wo + ox) * c + ch]) / size
                } } }
            } } }
            let dx = Buf(filled: n * h * w * c, .nan)
            Kernels.avgPoolBackwardNHWC(dy: dy, n: n, h: h, w: w, c: c, kernel: k, stride: s, padding: p, ho: ho, wo: wo, dx: dx.p)
            expectClose(name, dx.values, ref, rtol: 1e-6, atolAll: 1e-7)
            // <pool(x), dy> = <x, poolᵀ(dy)> with the existing forward.
            var y = [Float](repeating: 0, count: n * ho * wo * c)
            Kernels.avgPool2dNHWC(x, n: n, h: h, w: w, c: c, kernel: k, stride: s, padding: p, &y, ho: ho, wo: wo)
            var lhs = 0.0, rhs = 0.0, mag = 0.0
            for i in 0..<y.count { lhs += Double(y[i]) * Double(dy[i]); mag += abs(Double(y[i]) * Double(dy[i])) }
            for i in 0..<x.count { rhs += Double(x[i]) * Double(dx.p[i]) }
            XCTAssertLessThanOrEqual(abs(lhs - rhs), 1e-5 * mag + 1e-6, "\(name): adjoint identity \(lhs) vs \(rhs)")
        }
    }

    // ---- reductions and elementwise ----

    func testColumnSums() {
        var rng = Rng(13)
        bothPaths { path in
            // Values about 1: a float running sum over 10⁶ rows would be off by far more than 1e-6.
            for (rows, cols) in [(1_000_003, 1), (3, 7), (70_001 / 7 + 1, 7), (12_000, 13), (1_500, 48), (3, 100), (701, 100),
                                 (300, 1000), (2, 4099)] {
                let name = "columnSums[\(path)] \(rows)x\(cols)"
                let x = rng.values(rows * cols, scale: 0.5, offset: 1), out0 = rng.values(cols)
                var ref = out0.map { Double($0) }, mag = out0.map { abs(Double($0)) }
                for r in 0..<rows { for j in 0..<cols { ref[j] += Double(x[r * cols + j]); mag[j] += abs(Double(x[r * cols + j])) } }
                let out = Buf(out0)
                Kernels.columnSums(x, rows: rows, cols: cols, into: out.p)
                expectClose(name, out.values, ref, rtol: 1e-6, atol: mag.map { 1e-6 * $0 })
            }
        }
    }

    func testSumOfSquares() {
        var rng = Rng(14)
        bothPaths { path in
            for n in [0, 1, 7, 13, 100, 70_001, 1_000_003] {
                let x = rng.values(n, scale: 3, offset: 1)
                let ref = x.reduce(0.0) { $0 + Double($1) * Double($1) }
                let got = Kernels.sumOfSquares(x, count: n)
                XCTAssertLessThanOrEqual(abs(got - ref), 1e-10 * ref,
                                         "sumOfSquares[\(path)] \(n): max abs error \(abs(got - ref)); got \(got) want \(ref); first \(Array(x.prefix(4)))")
            }
        }
    }

    func testScaleAndAdd() {
        var rng = Rng(15)
        bothPaths { path in
            for n in [1, 7, 13, 100, 70_001] {
                let x = rng.values(n, scale: 5), d = rng.values(n), s: Float = -0.3
                let xb = Buf(x)
                Kernels.scale(xb.p, count: n, by: s)
                expectEqualBits("scale[\(path)] \(n)", xb.values, x.map { $0 * s })
                let db = Buf(d)
                Kernels.add(x, into: db.p, count: n)
                expectEqualBits("add[\(path)] \(n)", db.values, zip(x, d).map { $1 + $0 })
            }
        }
    }

    // ---- AdamW ----

    /// torch's CPU float32 sequence, one rounding per operation except lerp's and addcmul's fma.
    func adamWReference(param: inout [Float], grad: [Float], m: inout [Float], v: inout [Float], lr: Double, beta1: Double,
                        beta2: Double, eps: Double, wd: Double, step: Int) {
        let bc1 = 1 - pow(beta1, Double(step)), bc2 = 1 - pow(beta2, Double(step))
        let w1 = Float(1 - beta1), w2 = Float(1 - beta2), b2 = Float(beta2), decay = Float(1 - lr * wd)
        let bc2s = Float(pow(bc2, 0.5)), epsf = Float(eps), negStep = Float(-(lr / bc1))
        for i in 0..<param.count {
            var p = param[i]
            if wd != 0 { p = p * decay }
            let g = grad[i], diff = g - m[i]
            m[i] = abs(w1) < 0.5 ? m[i].addingProduct(w1, diff) : g.addingProduct(w1 - 1, diff)
            v[i] = (v[i] * b2).addingProduct(w2 * g, g)
            let den = v[i].squareRoot() / bc2s + epsf
            param[i] = p + (negStep * m[i]) / den
        }
    }

    func testAdamWFollowsTorchsRounding() {
        var rng = Rng(16)
        bothPaths { path in
            for n in [1, 7, 13, 100, 70_001] {
                for (lr, b1, b2, eps, wd) in [(1e-3, 0.9, 0.999, 1e-8, 0.05), (3e-2, 0.3, 0.99, 1e-6, 0.0)] {
                    let name = "adamW[\(path)] \(n) lr \(lr) β1 \(b1) wd \(wd)"
                    var p = rng.values(n), m = [Float](repeating: 0, count: n), v = m
                    let pb = Buf(p), mb = Buf(m), vb = Buf(v)
                    for step in 1...3 {
                        let g = rng.values(n, scale: 0.01)
                        adamWReference(param: &p, grad: g, m: &m, v: &v, lr: lr, beta1: b1, beta2: b2, eps: eps, wd: wd, step: step)
                        Kernels.adamW(param: pb.p, grad: g, expAvg: mb.p, expAvgSq: vb.p, count: n, lr: lr, beta1: b1, beta2: b2,
                                      eps: eps, weightDecay: wd, step: step)
                    }
                    expectEqualBits(name + " param", pb.values, p)
                    expectEqualBits(name + " expAvg", mb.values, m)
                    expectEqualBits(name + " expAvgSq", vb.values, v)
                }
            }
        }
    }

    /// Three steps of torch 2.13's AdamW (foreach=False, CPU) on 19 values (vector + tail), inputs
    /// Float(sin(0.37·i + 1)·1.5), grads Float(sin(0.73·i + step)·0.01). The moments match bit for
    /// bit; torch's float sqrt (MKL) is not correctly rounded (1 ulp off in about a fifth of values),
    /// so the parameters may differ by an ulp.
    func testAdamWMatchesTorch() {
        let n = 19
        let golden: [(lr: Double, b1: Double, b2: Double, eps: Double, wd: Double, param: [UInt32], m: [UInt32], v: [UInt32])] = [
            (1e-3, 0.9, 0.999, 1e-8, 0.05,
             [0x3FA1_2CA2, 0x3FBB_D465, 0x3FBD_1E2C, 0x3FA5_12FF, 0x3F6C_A157, 0x3EDE_0420, 0xBDED_BC4E, 0xBF26_8A32, 0xBF8C_8650, 0xBFB2_72A5,
              0xBFC0_3006, 0xBFB3_D7A9, 0xBF8E_FD84, 0xBF2E_408C, 0xBE1B_FFC8, 0x3ECA_D23F, 0x3F63_9C09, 0x3FA1_DEC8, 0x3FBC_1016],
             [0x3AD7_197B, 0x3A1E_8A3F, 0xBA41_EB4C, 0xBADF_C609, 0xBAEC_8A87, 0xBA80_C156, 0x39B2_9A97, 0x3AC3_4CFC, 0x3AF6_6A4C, 0x3AAB_F1A5,
              0x389D_7586, 0xBA9D_46F0, 0xBAF4_3D2B, 0xBACE_B95F, 0xB9FF_688B, 0x3A5F_1FDD, 0x3AE6_1E65, 0x3AE7_651A, 0x3A65_7B1A],
             [0x3426_B4A9, 0x341A_B69F, 0x3419_BA07, 0x3425_8036, 0x3429_175B, 0x341E_1C6F, 0x3418_17AE, 0x3421_BDE2, 0x3429_E4E6, 0x3422_0C37,
              0x3418_2900, 0x341D_D1EE, 0x3428_F58F, 0x3425_C33E, 0x3419_EAA6, 0x341A_7E58, 0x3426_779A, 0x3428_89C0, 0x341D_05BD]),
            (3e-2, 0.3, 0.99, 1e-6, 0.0,
             [0x3F97_EC8D, 0x3FB6_F324, 0x3FBE_2AFC, 0x3FB1_3FB4, 0x3F80_A2DB, 0x3EF7_8BC1, 0xBDDD_EA1F, 0xBF2F_7532, 0xBF97_B3C5, 0xBFBA_3254,
              0xBFC3_0824, 0xBFB0_7831, 0xBF83_3813, 0xBF1C_64E4, 0xBDF0_CA2B, 0x3EC4_600E, 0x3F4B_61D2, 0x3F97_E08A, 0x3FB6_22E1],
             [0x3B60_9FC3, 0xBB1E_CC86, 0xBBE6_A51B, 0xBC04_2BC5, 0xBBA3_5117, 0x3A27_8B48, 0x3BC2_8776, 0x3C06_7C94, 0x3BCE_55B9, 0x3A9A_2687,
              0xBB94_E67D, 0xBC02_39BD, 0xBBEF_433A, 0xBB40_446F, 0x3B3F_FAD7, 0x3BEF_312F, 0x3C02_3EB1, 0x3B95_074C, 0xBA99_8A95],
             [0x35CD_AEA0, 0x35BE_DB29, 0x35BF_1614, 0x35CD_F692, 0x35D1_05DB, 0x35C2_D296, 0x35BC_9F65, 0x35C9_73AC, 0x35D2_7D27, 0x35C7_A879,
              0x35BC_39D8, 0x35C4_8754, 0x35D1_CBFD, 0x35CC_6DA2, 0x35BD_F90F, 0x35C0_2510, 0x35CF_149A, 0x35D0_3621, 0x35C1_869E]),
        ]
        bothPaths { path in
            for t in golden {
                let name = "adamW[\(path)] vs torch lr \(t.lr) β1 \(t.b1)"
                let p = Buf((0..<n).map { Float(sin(Double($0) * 0.37 + 1) * 1.5) }), m = Buf(zeros: n), v = Buf(zeros: n)
                for step in 1...3 {
                    let g = (0..<n).map { Float(sin(Double($0) * 0.73 + Double(step)) * 0.01) }
                    Kernels.adamW(param: p.p, grad: g, expAvg: m.p, expAvgSq: v.p, count: n, lr: t.lr, beta1: t.b1, beta2: t.b2,
                                  eps: t.eps, weightDecay: t.wd, step: step)
                }
                expectEqualBits(name + " expAvg", m.values, t.m.map { Float(bitPattern: $0) })
                expectEqualBits(name + " expAvgSq", v.values, t.v.map { Float(bitPattern: $0) })
                let torchParam = t.param.map { Float(bitPattern: $0) }
                expectClose(name + " param", p.values, torchParam.map { Double($0) }, rtol: 0,
                            atol: torchParam.map { Double($0.ulp) })
            }
        }
    }
}
