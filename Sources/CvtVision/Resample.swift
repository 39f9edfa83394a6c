import Foundation

/// Pillow's resampling filters that the CvT preprocessing can use, with their `PIL.Image.Resampling`
/// integer codes (the `resample` value of `preprocessor_config.json`).
public enum Resampling: Int, Sendable, CaseIterable {
    case nearest = 0
    case bilinear = 2
    case bicubic = 3

    /// A PIL resampling code; 1 (LANCZOS), 4 (BOX), 5 (HAMMING) and anything else are refused.
    public init(pilCode: Int) throws {
        guard let r = Resampling(rawValue: pilCode) else {
            let names = [1: "LANCZOS", 4: "BOX", 5: "HAMMING", 6: "MKS2013", 7: "MKS2021"]
            let known = names[pilCode].map { " (PIL \($0))" } ?? ""
            throw PreprocessingError(
                "unsupported resample \(pilCode)\(known): supported are 0 (NEAREST), 2 (BILINEAR), 3 (BICUBIC)")
        }
        self = r
    }
}

extension RGBImage {
    /// Pillow's `Image.resize((width, height), resample)` on an RGB image (no box, no reducing gap),
    /// bit-exact: same size → unchanged copy; NEAREST → Pillow's affine nearest-neighbour rule;
    /// BILINEAR / BICUBIC → two separable fixed-point passes with uint8 in between, horizontal first
    /// unless the height shrinks by more than twice as many pixels as the width (Pillow 13's rule).
    public func resized(width outW: Int, height outH: Int, resample: Resampling) throws -> RGBImage {
        try resizedRegion(width: outW, height: outH, resample: resample,
                          left: 0, top: 0, regionWidth: outW, regionHeight: outH)
    }

    /// The window (`left`, `top`, `regionWidth` × `regionHeight`) of `resized(width:height:resample:)`,
    /// computed without producing the rest of the resized image. The window must lie inside the
    /// resized image.
    public func resizedRegion(width outW: Int, height outH: Int, resample: Resampling,
                              left: Int, top: Int, regionWidth rw: Int, regionHeight rh: Int) throws -> RGBImage {
        guard outW >= 1 && outH >= 1 else {
            throw PreprocessingError("cannot resize to \(outW)x\(outH): height and width must be > 0")
        }
        guard width >= 1 && height >= 1 else {
            throw PreprocessingError("cannot resize an empty \(width)x\(height) image")
        }
        precondition(left >= 0 && top >= 0 && rw >= 0 && rh >= 0 && left + rw <= outW && top + rh <= outH,
                     "region outside the resized image")
        if outW == width && outH == height || rw == 0 || rh == 0 {
            return cropped(left: left, top: top, width: rw, height: rh)
        }
        switch resample {
        case .nearest:
            return nearest(outW: outW, outH: outH, left: left, top: top, rw: rw, rh: rh)
        case .bilinear:
            return convolve(outW: outW, outH: outH, filter: .bilinear, left: left, top: top, rw: rw, rh: rh)
        case .bicubic:
            return convolve(outW: outW, outH: outH, filter: .bicubic, left: left, top: top, rw: rw, rh: rh)
        }
    }

    // MARK: NEAREST (Pillow Geometry.c, ImagingScaleAffine)

    private func nearest(outW: Int, outH: Int, left: Int, top: Int, rw: Int, rh: Int) -> RGBImage {
        // a[0] = (box[2] - box[0]) / xsize; xo = a[2] + a[0] * 0.5, then xo += a[0] per column.
        func table(inSize: Int, outSize: Int) -> [Int] {
            let a = Double(Float(inSize)) / Double(outSize)
            var xo = 0.0 + a * 0.5
            var t = [Int](repeating: -1, count: outSize)
            for x in 0..<outSize {
                let xin = xo < 0 ? -1 : Int(xo)
                t[x] = (xin >= 0 && xin < inSize) ? xin : -1  // -1: left black (fill)
                xo += a
            }
            return t
        }
        let xs = table(inSize: width, outSize: outW), ys = table(inSize: height, outSize: outH)
        var out = [UInt8](repeating: 0, count: rw * rh * 3)
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for oy in 0..<rh {
                    let sy = ys[top + oy]
                    if sy < 0 { continue }
                    let srow = sy * width * 3
                    var d = oy * rw * 3
                    for ox in 0..<rw {
                        let sx = xs[left + ox]
                        if sx >= 0 {
                            let s = srow + sx * 3
                            dst[d] = src[s]
                            dst[d + 1] = src[s + 1]
                            dst[d + 2] = src[s + 2]
                        }
                        d += 3
                    }
                }
            }
        }
        return RGBImage(width: rw, height: rh, pixels: out)
    }

    // MARK: convolution filters (Pillow Resample.c, 8 bits per channel)

    private func convolve(outW: Int, outH: Int, filter: ResampleFilter,
                          left: Int, top: Int, rw: Int, rh: Int) -> RGBImage {
        let needH = outW != width, needV = outH != height
        // Pillow 13 (ImagingResampleInner): the vertical pass runs first when the height shrinks by
        // more than twice as many pixels as the width does; otherwise the horizontal pass is first.
        let verticalFirst = needH && needV && (height - outH) > 0 && (height - outH) > (width - outW) * 2
        let vert = needV ? FixedCoefficients(inSize: height, outSize: outH, filter: filter, first: top, count: rh) : nil
        let horiz = needH ? FixedCoefficients(inSize: width, outSize: outW, filter: filter, first: left, count: rw) : nil
        var out = [UInt8](repeating: 0, count: rw * rh * 3)

        if verticalFirst, let vert, let horiz {
            // Vertical pass over the source columns the horizontal taps use, then horizontal.
            let c0 = horiz.firstInput, cw = horiz.endInput - horiz.firstInput
            var mid = [UInt8](repeating: 0, count: rh * cw * 3)
            pixels.withUnsafeBufferPointer { src in
                mid.withUnsafeMutableBufferPointer { dst in
                    vert.vertical(src: src.baseAddress! + c0 * 3, srcStride: width * 3, rowOffset: 0,
                                  dst: dst.baseAddress!, dstStride: cw * 3, rowLength: cw * 3)
                }
            }
            mid.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    horiz.horizontal(src: src.baseAddress!, srcStride: cw * 3, columnOffset: c0, rows: 0..<rh,
                                     dst: dst.baseAddress!, dstStride: rw * 3)
                }
            }
            return RGBImage(width: rw, height: rh, pixels: out)
        }

        guard let horiz else {
            // Vertical pass only, straight from the source columns of the window.
            guard let vert else { return cropped(left: left, top: top, width: rw, height: rh) }
            pixels.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    vert.vertical(src: src.baseAddress! + left * 3, srcStride: width * 3, rowOffset: 0,
                                  dst: dst.baseAddress!, dstStride: rw * 3, rowLength: rw * 3)
                }
            }
            return RGBImage(width: rw, height: rh, pixels: out)
        }

        // Horizontal pass first, on the source rows the vertical pass needs (uint8 in between).
        let rowFirst = vert?.firstInput ?? top
        let rowEnd = vert?.endInput ?? (top + rh)
        var mid = [UInt8](repeating: 0, count: (rowEnd - rowFirst) * rw * 3)
        pixels.withUnsafeBufferPointer { src in
            mid.withUnsafeMutableBufferPointer { dst in
                horiz.horizontal(src: src.baseAddress!, srcStride: width * 3, columnOffset: 0, rows: rowFirst..<rowEnd,
                                 dst: dst.baseAddress!, dstStride: rw * 3)
            }
        }
        guard let vert else { return RGBImage(width: rw, height: rh, pixels: mid) }
        mid.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                vert.vertical(src: src.baseAddress!, srcStride: rw * 3, rowOffset: rowFirst,
                              dst: dst.baseAddress!, dstStride: rw * 3, rowLength: rw * 3)
            }
        }
        return RGBImage(width: rw, height: rh, pixels: out)
    }
}

/// Pillow's filter kernels (Resample.c), evaluated in double precision in the same order.
enum ResampleFilter {
    case bilinear, bicubic

    var support: Double {
        switch self {
        case .bilinear: return 1.0
        case .bicubic: return 2.0
        }
    }

    @inline(__always) func callAsFunction(_ x0: Double) -> Double {
        var x = x0
        if x < 0.0 { x = -x }
        switch self {
        case .bilinear:
            return x < 1.0 ? 1.0 - x : 0.0
        case .bicubic:
            let a = -0.5
            if x < 1.0 { return ((a + 2.0) * x - (a + 3.0)) * x * x + 1 }
            if x < 2.0 { return (((x - 5) * x + 8) * x - 4) * a }
            return 0.0
        }
    }
}

/// Per-output-index taps of one axis, in Pillow's 8-bit fixed point (PRECISION_BITS = 22), for the
/// output indices `first ..< first + count`.
struct FixedCoefficients {
    static let precisionBits: Int32 = 22

    let starts: [Int]     // first input index of each output index
    let lengths: [Int]    // number of taps
    let offsets: [Int]    // where each output's taps begin in `weights`
    let weights: [Int32]
    let firstInput: Int   // smallest input index used
    let endInput: Int     // one past the largest input index used

    init(inSize: Int, outSize: Int, filter: ResampleFilter, first: Int, count: Int) {
        // precompute_coeffs(): scale = (in1 - in0) / outSize, with in0 = 0, in1 = inSize (floats).
        let scale = Double(Float(inSize)) / Double(outSize)
        let filterscale = max(scale, 1.0)
        let support = filter.support * filterscale
        let ss = 1.0 / filterscale
        var starts = [Int](), lengths = [Int](), offsets = [Int](), weights = [Int32]()
        starts.reserveCapacity(count)
        lengths.reserveCapacity(count)
        offsets.reserveCapacity(count)
        var k = [Double]()
        var lo = Int.max, hi = Int.min
        for xx in first..<(first + count) {
            let center = 0.0 + (Double(xx) + 0.5) * scale
            var xmin = Int(center - support + 0.5)  // C (int): truncation toward zero
            if xmin < 0 { xmin = 0 }
            var xmax = Int(center + support + 0.5)
            if xmax > inSize { xmax = inSize }
            xmax -= xmin
            k.removeAll(keepingCapacity: true)
            var ww = 0.0
            for x in 0..<max(xmax, 0) {
                let w = filter((Double(x + xmin) - center + 0.5) * ss)
                k.append(w)
                ww += w
            }
            offsets.append(weights.count)
            for w0 in k {
                let w = ww != 0.0 ? w0 / ww : w0
                // normalize_coeffs_8bpc(): round half away from zero through truncation.
                let f = w * Double(1 << 22)
                weights.append(w < 0 ? Int32(-0.5 + f) : Int32(0.5 + f))
            }
            starts.append(xmin)
            lengths.append(max(xmax, 0))
            if xmax > 0 {
                lo = min(lo, xmin)
                hi = max(hi, xmin + xmax)
            }
        }
        self.starts = starts
        self.lengths = lengths
        self.offsets = offsets
        self.weights = weights
        firstInput = lo == Int.max ? 0 : lo
        endInput = hi == Int.min ? 0 : hi
    }

    @inline(__always) static func clip8(_ acc: Int32) -> UInt8 {
        let v = acc >> precisionBits
        return v < 0 ? 0 : (v > 255 ? 255 : UInt8(truncatingIfNeeded: v))
    }

    /// Resamples along x: for each row in `rows` of `src` (whose column 0 is input column
    /// `columnOffset`), writes `starts.count` RGB pixels to consecutive rows of `dst`.
    func horizontal(src: UnsafePointer<UInt8>, srcStride: Int, columnOffset: Int, rows: Range<Int>,
                    dst: UnsafeMutablePointer<UInt8>, dstStride: Int) {
        let half: Int32 = 1 << (Self.precisionBits - 1)
        weights.withUnsafeBufferPointer { wts in
        starts.withUnsafeBufferPointer { st in
        lengths.withUnsafeBufferPointer { ln in
        offsets.withUnsafeBufferPointer { of in
            let n = st.count
            let w0 = wts.baseAddress!
            for (ri, y) in rows.enumerated() {
                let srow = src + y * srcStride - columnOffset * 3
                var d = dst + ri * dstStride
                for xx in 0..<n {
                    var s0 = half, s1 = half, s2 = half
                    var p = srow + st[xx] * 3
                    let k = w0 + of[xx]
                    for t in 0..<ln[xx] {
                        let w = k[t]
                        s0 &+= Int32(p[0]) &* w
                        s1 &+= Int32(p[1]) &* w
                        s2 &+= Int32(p[2]) &* w
                        p += 3
                    }
                    d[0] = Self.clip8(s0)
                    d[1] = Self.clip8(s1)
                    d[2] = Self.clip8(s2)
                    d += 3
                }
            }
        }
        }
        }
        }
    }

    /// Resamples along y: output row i takes source rows `starts[i] - rowOffset ...` of `src`.
    func vertical(src: UnsafePointer<UInt8>, srcStride: Int, rowOffset: Int,
                  dst: UnsafeMutablePointer<UInt8>, dstStride: Int, rowLength: Int) {
        let half: Int32 = 1 << (Self.precisionBits - 1)
        let acc = UnsafeMutablePointer<Int32>.allocate(capacity: max(rowLength, 1))
        defer { acc.deallocate() }
        weights.withUnsafeBufferPointer { wts in
        starts.withUnsafeBufferPointer { st in
        lengths.withUnsafeBufferPointer { ln in
        offsets.withUnsafeBufferPointer { of in
            for yy in 0..<st.count {
                acc.update(repeating: half, count: rowLength)
                let k = wts.baseAddress! + of[yy]
                for t in 0..<ln[yy] {
                    let w = k[t]
                    let srow = src + (st[yy] + t - rowOffset) * srcStride
                    for i in 0..<rowLength { acc[i] &+= Int32(srow[i]) &* w }
                }
                let drow = dst + yy * dstStride
                for i in 0..<rowLength { drow[i] = Self.clip8(acc[i]) }
            }
        }
        }
        }
        }
    }
}
