import Foundation

// TEMPORARY scalar reference kernels (replaced by the C kernels).
extension Kernels {
    public static func layerNormForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, cols: Int,
                                        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, eps: Float,
                                        mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let xr = x + r * cols
            var m = 0.0; for j in 0..<cols { m += Double(xr[j]) }; m /= Double(cols)
            var v = 0.0; for j in 0..<cols { let d = Double(xr[j]) - m; v += d * d }; v /= Double(cols)
            let rs = 1 / (v + Double(eps)).squareRoot()
            mean[r] = Float(m); rstd[r] = Float(rs)
            for j in 0..<cols { y[r * cols + j] = Float((Double(xr[j]) - m) * rs) * weight[j] + bias[j] }
        }
    }

    public static func layerNormBackward(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                         weight: UnsafePointer<Float>, rows: Int, cols: Int, dx: UnsafeMutablePointer<Float>, accumulate: Bool,
                                         dweight: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>) {
        var dw = [Double](repeating: 0, count: cols), db = [Double](repeating: 0, count: cols)
        for r in 0..<rows {
            var a = 0.0, b = 0.0
            for j in 0..<cols {
                let xh = (Double(x[r * cols + j]) - Double(mean[r])) * Double(rstd[r])
                let g = Double(dy[r * cols + j]) * Double(weight[j])
                a += g; b += g * xh
                dw[j] += Double(dy[r * cols + j]) * xh; db[j] += Double(dy[r * cols + j])
            }
            a /= Double(cols); b /= Double(cols)
            for j in 0..<cols {
                let xh = (Double(x[r * cols + j]) - Double(mean[r])) * Double(rstd[r])
                let g = Double(dy[r * cols + j]) * Double(weight[j])
                let v = Float(Double(rstd[r]) * (g - a - xh * b))
                if accumulate { dx[r * cols + j] += v } else { dx[r * cols + j] = v }
            }
        }
        for j in 0..<cols { dweight[j] += Float(dw[j]); dbias[j] += Float(db[j]) }
    }

    public static func gelu(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { let v = Double(x[i]); y[i] = Float(0.5 * v * (1 + erf(v / 2.0.squareRoot()))) }
    }

    public static func geluBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count {
            let v = Double(x[i])
            let d = 0.5 * (1 + erf(v / 2.0.squareRoot())) + v * exp(-0.5 * v * v) / (2 * Double.pi).squareRoot()
            dx[i] = Float(Double(dy[i]) * d)
        }
    }

    public static func softmaxForward(_ x: UnsafePointer<Float>, _ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        for r in 0..<rows {
            var m = -Float.infinity
            for j in 0..<cols { m = max(m, x[r * cols + j]) }
            var s = 0.0
            for j in 0..<cols { s += exp(Double(x[r * cols + j] - m)) }
            for j in 0..<cols { p[r * cols + j] = Float(exp(Double(x[r * cols + j] - m)) / s) }
        }
    }

    public static func softmaxBackward(p: UnsafePointer<Float>, dp: UnsafePointer<Float>, ds: UnsafeMutablePointer<Float>, rows: Int, cols: Int, scale: Float) {
        for r in 0..<rows {
            var s = 0.0
            for j in 0..<cols { s += Double(p[r * cols + j]) * Double(dp[r * cols + j]) }
            for j in 0..<cols { ds[r * cols + j] = Float(Double(scale) * Double(p[r * cols + j]) * (Double(dp[r * cols + j]) - s)) }
        }
    }

    public static func batchNormStatistics(_ x: UnsafePointer<Float>, rows: Int, channels: Int, mean: UnsafeMutablePointer<Float>, variance: UnsafeMutablePointer<Float>) {
        for c in 0..<channels {
            var m = 0.0; for r in 0..<rows { m += Double(x[r * channels + c]) }; m /= Double(rows)
            var v = 0.0; for r in 0..<rows { let d = Double(x[r * channels + c]) - m; v += d * d }; v /= Double(rows)
            mean[c] = Float(m); variance[c] = Float(v)
        }
    }

    public static func batchNormForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, channels: Int,
                                        mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>) {
        for r in 0..<rows { for c in 0..<channels { y[r * channels + c] = (x[r * channels + c] - mean[c]) * rstd[c] * weight[c] + bias[c] } }
    }

    public static func batchNormBackward(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                         weight: UnsafePointer<Float>, rows: Int, channels: Int, dx: UnsafeMutablePointer<Float>,
                                         dweight: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>) {
        for c in 0..<channels {
            var sdy = 0.0, sdyx = 0.0
            for r in 0..<rows {
                let xh = (Double(x[r * channels + c]) - Double(mean[c])) * Double(rstd[c])
                sdy += Double(dy[r * channels + c]); sdyx += Double(dy[r * channels + c]) * xh
            }
            let n = Double(rows)
            for r in 0..<rows {
                let xh = (Double(x[r * channels + c]) - Double(mean[c])) * Double(rstd[c])
                dx[r * channels + c] = Float(Double(weight[c]) * Double(rstd[c]) * (Double(dy[r * channels + c]) - sdy / n - xh * sdyx / n))
            }
            dweight[c] += Float(sdyx); dbias[c] += Float(sdy)
        }
    }

    public static func depthwiseForward(_ x: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int, taps: UnsafePointer<Float>,
                                        kernel k: Int, stride: Int, padding: Int, ho: Int, wo: Int, _ y: UnsafeMutablePointer<Float>) {
        for b in 0..<n { for oy in 0..<ho { for ox in 0..<wo { for ch in 0..<c {
            var s: Float = 0
            for ky in 0..<k { for kx in 0..<k {
                let iy = oy * stride - padding + ky, ix = ox * stride - padding + kx
                if iy >= 0 && iy < h && ix >= 0 && ix < w { s += x[((b * h + iy) * w + ix) * c + ch] * taps[(ky * k + kx) * c + ch] }
            } }
            y[((b * ho + oy) * wo + ox) * c + ch] = s
        } } } }
    }

    public static func depthwiseBackwardData(dy: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int, taps: UnsafePointer<Float>,
                                             kernel k: Int, stride: Int, padding: Int, ho: Int, wo: Int, dx: UnsafeMutablePointer<Float>) {
        dx.update(repeating: 0, count: n * h * w * c)
        for b in 0..<n { for oy in 0..<ho { for ox in 0..<wo { for ch in 0..<c {
            let g = dy[((b * ho + oy) * wo + ox) * c + ch]
            for ky in 0..<k { for kx in 0..<k {
                let iy = oy * stride - padding + ky, ix = ox * stride - padding + kx
                if iy >= 0 && iy < h && ix >= 0 && ix < w { dx[((b * h + iy) * w + ix) * c + ch] += g * taps[(ky * k + kx) * c + ch] }
            } }
        } } } }
    }

    public static func depthwiseBackwardWeight(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int,
                                               kernel k: Int, stride: Int, padding: Int, ho: Int, wo: Int, dtaps: UnsafeMutablePointer<Float>) {
        for b in 0..<n { for oy in 0..<ho { for ox in 0..<wo { for ch in 0..<c {
            let g = dy[((b * ho + oy) * wo + ox) * c + ch]
            for ky in 0..<k { for kx in 0..<k {
                let iy = oy * stride - padding + ky, ix = ox * stride - padding + kx
                if iy >= 0 && iy < h && ix >= 0 && ix < w { dtaps[(ky * k + kx) * c + ch] += g * x[((b * h + iy) * w + ix) * c + ch] }
            } }
        } } } }
    }

    public static func im2colNHWC(_ x: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int, kernel k: Int, stride: Int, padding: Int,
                                  ho: Int, wo: Int, _ cols: UnsafeMutablePointer<Float>) {
        let patch = k * k * c
        for b in 0..<n { for oy in 0..<ho { for ox in 0..<wo {
            let row = cols + ((b * ho + oy) * wo + ox) * patch
            for ky in 0..<k { for kx in 0..<k { for ci in 0..<c {
                let iy = oy * stride - padding + ky, ix = ox * stride - padding + kx
                row[(ky * k + kx) * c + ci] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? x[((b * h + iy) * w + ix) * c + ci] : 0
            } } }
        } } }
    }

    public static func col2imNHWC(_ cols: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int, kernel k: Int, stride: Int, padding: Int,
                                  ho: Int, wo: Int, _ dx: UnsafeMutablePointer<Float>) {
        let patch = k * k * c
        dx.update(repeating: 0, count: n * h * w * c)
        for b in 0..<n { for oy in 0..<ho { for ox in 0..<wo {
            let row = cols + ((b * ho + oy) * wo + ox) * patch
            for ky in 0..<k { for kx in 0..<k { for ci in 0..<c {
                let iy = oy * stride - padding + ky, ix = ox * stride - padding + kx
                if iy >= 0 && iy < h && ix >= 0 && ix < w { dx[((b * h + iy) * w + ix) * c + ci] += row[(ky * k + kx) * c + ci] }
            } } }
        } } }
    }

    public static func avgPoolBackwardNHWC(dy: UnsafePointer<Float>, n: Int, h: Int, w: Int, c: Int, kernel: Int, stride: Int, padding: Int,
                                           ho: Int, wo: Int, dx: UnsafeMutablePointer<Float>) {
        dx.update(repeating: 0, count: n * h * w * c)
        for b in 0..<n { for oy in 0..<ho { for ox in 0..<wo {
            var hs = oy * stride - padding, ws = ox * stride - padding
            var he = min(hs + kernel, h + padding), we = min(ws + kernel, w + padding)
            let poolSize = Float((he - hs) * (we - ws))
            hs = max(hs, 0); ws = max(ws, 0); he = min(he, h); we = min(we, w)
            if hs < he && ws < we {
                for y in hs..<he { for x in ws..<we { for ch in 0..<c {
                    dx[((b * h + y) * w + x) * c + ch] += dy[((b * ho + oy) * wo + ox) * c + ch] / poolSize
                } } }
            }
        } } }
    }

    public static func columnSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
        var s = [Double](repeating: 0, count: cols)
        for r in 0..<rows { for j in 0..<cols { s[j] += Double(x[r * cols + j]) } }
        for j in 0..<cols { out[j] += Float(s[j]) }
    }

    public static func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
        var s = 0.0; for i in 0..<count { s += Double(x[i]) * Double(x[i]) }; return s
    }

    public static func scale(_ x: UnsafeMutablePointer<Float>, count: Int, by s: Float) { for i in 0..<count { x[i] *= s } }

    public static func add(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, count: Int) { for i in 0..<count { dst[i] += src[i] } }
}
