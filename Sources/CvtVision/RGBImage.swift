import Foundation

/// An 8-bit RGB image: `pixels` holds `height × width × 3` bytes, row-major, channels interleaved
/// (HWC, the layout of `numpy.asarray(pil_image)` for a mode "RGB" image).
public struct RGBImage: Equatable, Sendable {
    /// Width in pixels (columns).
    public let width: Int
    /// Height in pixels (rows).
    public let height: Int
    /// `height × width × 3` bytes: rows top to bottom, pixels left to right, R, G, B per pixel.
    public var pixels: [UInt8]

    /// - Precondition: `pixels.count == width * height * 3`, sizes not negative.
    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0, "negative image size \(width)x\(height)")
        precondition(pixels.count == width * height * 3,
                     "an RGB image of \(width)x\(height) needs \(width * height * 3) bytes, got \(pixels.count)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// An image whose pixel at column `x`, row `y` is `color(x, y)`.
    public init(width: Int, height: Int, color: (_ x: Int, _ y: Int) -> (UInt8, UInt8, UInt8)) {
        var p = [UInt8](repeating: 0, count: width * height * 3)
        var i = 0
        for y in 0..<height {
            for x in 0..<width {
                let c = color(x, y)
                p[i] = c.0
                p[i + 1] = c.1
                p[i + 2] = c.2
                i += 3
            }
        }
        self.init(width: width, height: height, pixels: p)
    }

    /// The pixel at column `x`, row `y`.
    public subscript(x x: Int, y y: Int) -> (r: UInt8, g: UInt8, b: UInt8) {
        precondition(x >= 0 && x < width && y >= 0 && y < height, "pixel (\(x), \(y)) outside \(width)x\(height)")
        let i = (y * width + x) * 3
        return (pixels[i], pixels[i + 1], pixels[i + 2])
    }
}

/// Pillow's `Image.Transpose` operations (the ones `ImageOps.exif_transpose` uses).
public enum Transpose: Sendable, CaseIterable {
    case flipLeftRight, flipTopBottom, rotate90, rotate180, rotate270, transpose, transverse

    /// The operation `PIL.ImageOps.exif_transpose` applies for an EXIF Orientation value;
    /// nil for 1 (upright) and for anything outside 2…8.
    public init?(exifOrientation: Int) {
        switch exifOrientation {
        case 2: self = .flipLeftRight
        case 3: self = .rotate180
        case 4: self = .flipTopBottom
        case 5: self = .transpose
        case 6: self = .rotate270
        case 7: self = .transverse
        case 8: self = .rotate90
        default: return nil
        }
    }
}

extension RGBImage {
    /// The image transposed like Pillow's `Image.transpose(op)`. `rotate90` turns counter-clockwise,
    /// `rotate270` clockwise; `transpose` mirrors across the main diagonal, `transverse` across the
    /// anti-diagonal.
    public func transposed(_ op: Transpose) -> RGBImage {
        let w = width, h = height
        let swaps = op == .rotate90 || op == .rotate270 || op == .transpose || op == .transverse
        let ow = swaps ? h : w, oh = swaps ? w : h
        var out = [UInt8](repeating: 0, count: pixels.count)
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for oy in 0..<oh {
                    for ox in 0..<ow {
                        // Source column/row of output pixel (ox, oy), per Pillow's Geometry.c.
                        let sx: Int, sy: Int
                        switch op {
                        case .flipLeftRight: sx = w - 1 - ox; sy = oy
                        case .flipTopBottom: sx = ox; sy = h - 1 - oy
                        case .rotate180: sx = w - 1 - ox; sy = h - 1 - oy
                        case .rotate90: sx = w - 1 - oy; sy = ox
                        case .rotate270: sx = oy; sy = h - 1 - ox
                        case .transpose: sx = oy; sy = ox
                        case .transverse: sx = w - 1 - oy; sy = h - 1 - ox
                        }
                        let s = (sy * w + sx) * 3, d = (oy * ow + ox) * 3
                        dst[d] = src[s]
                        dst[d + 1] = src[s + 1]
                        dst[d + 2] = src[s + 2]
                    }
                }
            }
        }
        return RGBImage(width: ow, height: oh, pixels: out)
    }

    /// The image as `PIL.ImageOps.exif_transpose` would return it for this EXIF Orientation value
    /// (values other than 2…8 leave it unchanged).
    public func applyingEXIFOrientation(_ orientation: Int) -> RGBImage {
        guard let op = Transpose(exifOrientation: orientation) else { return self }
        return transposed(op)
    }

    /// A `height × width` window whose top-left corner is at column `left`, row `top`. Parts of the
    /// window outside the image are black (0), like transformers' `center_crop` padding.
    public func cropped(left: Int, top: Int, width cw: Int, height ch: Int) -> RGBImage {
        precondition(cw >= 0 && ch >= 0, "negative crop size")
        var out = [UInt8](repeating: 0, count: cw * ch * 3)
        let x0 = max(left, 0), x1 = min(left + cw, width)
        let y0 = max(top, 0), y1 = min(top + ch, height)
        if x0 < x1 && y0 < y1 {
            pixels.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    for y in y0..<y1 {
                        let s = (y * width + x0) * 3, d = ((y - top) * cw + (x0 - left)) * 3
                        for i in 0..<((x1 - x0) * 3) { dst[d + i] = src[s + i] }
                    }
                }
            }
        }
        return RGBImage(width: cw, height: ch, pixels: out)
    }

    /// transformers' `image_transforms.center_crop`: window offsets `(H − h) // 2`, `(W − w) // 2`
    /// (floor division), zero padding where the image is smaller than the crop.
    public func centerCropped(width cw: Int, height ch: Int) -> RGBImage {
        cropped(left: floorDiv(width - cw, 2), top: floorDiv(height - ch, 2), width: cw, height: ch)
    }
}

/// Python's `a // b` for b > 0.
@inline(__always) func floorDiv(_ a: Int, _ b: Int) -> Int {
    let q = a / b
    return (a % b != 0 && a < 0) ? q - 1 : q
}
