import CvtTensor
import Foundation

/// transformers' `ConvNextImageProcessorPil` (the image processor of the `cvt` model type, PIL
/// backend), reproduced bit-exactly (transformers' `image_processing_convnext.py` and Pillow's `Resample.c`):
/// 1. resize — shortest_edge < 384: short side to `int(shortest_edge / crop_pct)` with the long side
///    `int(r · long / short)`, then a centre crop to `shortest_edge²` (floor offsets, zero padding if
///    the crop is larger); shortest_edge ≥ 384: warp to `shortest_edge²`, crop_pct unused;
/// 2. optional `do_center_crop` to `crop_size`;
/// 3. rescale `float32(float64(p) · rescale_factor)`;
/// 4. normalize `(x − float32(mean)) / float32(std)` in float32.
/// Output: `pixel_values` float32 `[N, 3, H, W]`, channels R, G, B.
public struct ConvNextImageProcessor: Sendable {
    /// The settings applied (a checkpoint's `preprocessor_config.json`).
    public let config: PreprocessorConfig

    /// A processor applying `config`.
    public init(config: PreprocessorConfig) {
        self.config = config
    }

    /// `pixel_values` for a batch. All images must end up the same size (with `do_resize` false
    /// they must already be).
    public func callAsFunction(_ images: [RGBImage]) throws -> Tensor {
        guard !images.isEmpty else { throw PreprocessingError("no images to preprocess") }
        return try normalized(images.map { try resizeAndCrop($0) })
    }

    /// Rescale and normalize only (steps 3–4), for images already brought to the model's size
    /// (e.g. by training augmentation): `pixel_values` `[N, 3, H, W]`.
    public func normalized(_ prepared: [RGBImage]) throws -> Tensor {
        guard !prepared.isEmpty else { throw PreprocessingError("no images to preprocess") }
        let lut = try lookupTable()
        let h = prepared[0].height, w = prepared[0].width
        for (i, p) in prepared.enumerated() where p.width != w || p.height != h {
            throw PreprocessingError(
                "images of a batch must have the same size after preprocessing: image 0 is \(w)x\(h), " +
                "image \(i) is \(p.width)x\(p.height) (width x height)" +
                (config.doResize ? "" : "; do_resize is false, so the inputs are not resized"))
        }
        let plane = h * w
        let tensor = Tensor(uninitialized: [prepared.count, 3, h, w])
        let out = tensor.unsafePointer
        lut.withUnsafeBufferPointer { table in
            let t0 = table.baseAddress!, t1 = t0 + 256, t2 = t0 + 512
            for (n, image) in prepared.enumerated() {
                let r = out + n * 3 * plane, g = r + plane, b = g + plane
                image.pixels.withUnsafeBufferPointer { px in
                    for i in 0..<plane {
                        r[i] = t0[Int(px[3 * i])]
                        g[i] = t1[Int(px[3 * i + 1])]
                        b[i] = t2[Int(px[3 * i + 2])]
                    }
                }
            }
        }
        return tensor
    }

    /// `pixel_values` `[1, 3, H, W]` for one image.
    public func callAsFunction(_ image: RGBImage) throws -> Tensor {
        try self([image])
    }

    /// Width and height of every preprocessed image (what the model is fed), or nil when
    /// `do_resize` and `do_center_crop` are both off (images keep their size).
    public var outputSize: (width: Int, height: Int)? {
        if config.doCenterCrop, case .heightWidth(let h, let w)? = config.cropSize { return (w, h) }
        if config.doResize, case .shortestEdge(let e)? = config.size { return (e, e) }
        return nil
    }

    /// The uint8 image after the geometric steps (resize, crops), before rescale/normalize.
    public func resizeAndCrop(_ image: RGBImage) throws -> RGBImage {
        var img = image
        if config.doResize {
            guard let size = config.size, let resample = config.resample else {
                throw PreprocessingError("`size` and `resample` must be specified if `do_resize` is true")
            }
            guard case .shortestEdge(let edge) = size else {
                throw PreprocessingError(
                    "ConvNextImageProcessor needs size {\"shortest_edge\": N}; {\"height\", \"width\"} is not " +
                    "supported by its resize (transformers raises as well)")
            }
            guard edge >= 1 else { throw PreprocessingError("size.shortest_edge must be positive, got \(edge)") }
            if edge < 384 {
                guard let cropPct = config.cropPct else {
                    throw PreprocessingError("crop_pct must be set when shortest_edge (\(edge)) is below 384")
                }
                let q = Double(edge) / cropPct
                guard q.isFinite, q >= 1, q <= Double(PreprocessorConfig.maxResizeEdge) else {
                    throw PreprocessingError("crop_pct \(cropPct) gives an invalid resize target \(q) for shortest_edge \(edge)")
                }
                let target = Self.shortestEdgeSize(width: img.width, height: img.height, shortestEdge: Int(q))
                // A very long, thin image resizes to a very long one: bounded as a decoded image is.
                guard target.width.multipliedReportingOverflow(by: target.height).partialValue <= Self.maxResizedPixels,
                      Double(target.width) * Double(target.height) <= Double(Self.maxResizedPixels) else {
                    throw PreprocessingError("resizing a \(img.width)x\(img.height) image to shortest edge \(Int(q)) gives \(target.width)x\(target.height) pixels, more than \(Self.maxResizedPixels)")
                }
                img = try Self.resizeCenterCrop(img, width: target.width, height: target.height,
                                                resample: resample, cropWidth: edge, cropHeight: edge)
            } else {
                img = try img.resized(width: edge, height: edge, resample: resample)
            }
        }
        if config.doCenterCrop {
            guard case .heightWidth(let ch, let cw)? = config.cropSize, ch >= 0, cw >= 0 else {
                throw PreprocessingError("do_center_crop needs crop_size {\"height\": H, \"width\": W}")
            }
            img = img.centerCropped(width: cw, height: ch)
        }
        return img
    }

    /// The largest intermediate resize (Pillow's decompression-bomb error threshold).
    public static let maxResizedPixels = 2 * 89_478_485

    /// transformers' `get_resize_output_image_size(image, size, default_to_square=False)`:
    /// the short side becomes `shortestEdge`, the long side `int(shortestEdge · long / short)`.
    public static func shortestEdgeSize(width: Int, height: Int, shortestEdge: Int) -> (width: Int, height: Int) {
        let (short, long) = width <= height ? (width, height) : (height, width)
        // In floating point: shortestEdge · long may overflow Int for a hostile size (the caller
        // bounds the result); exact for every product below 2^53.
        let product = Double(shortestEdge) * Double(long)
        let newLong = Int(min(product / Double(max(short, 1)), Double(Int32.max)))
        return width <= height ? (shortestEdge, newLong) : (newLong, shortestEdge)
    }

    /// Resize to `width × height`, then transformers' `center_crop`, computing only the pixels the
    /// crop keeps (identical to resizing everything and cropping).
    static func resizeCenterCrop(_ image: RGBImage, width: Int, height: Int, resample: Resampling,
                                 cropWidth: Int, cropHeight: Int) throws -> RGBImage {
        let left = floorDiv(width - cropWidth, 2), top = floorDiv(height - cropHeight, 2)
        let x0 = max(left, 0), x1 = min(left + cropWidth, width)
        let y0 = max(top, 0), y1 = min(top + cropHeight, height)
        let part = try image.resizedRegion(width: width, height: height, resample: resample,
                                           left: x0, top: y0, regionWidth: max(x1 - x0, 0), regionHeight: max(y1 - y0, 0))
        if x0 == left && y0 == top && x1 - x0 == cropWidth && y1 - y0 == cropHeight { return part }
        return part.cropped(left: left - x0, top: top - y0, width: cropWidth, height: cropHeight)
    }

    /// Output value of every uint8 level per channel: 3 × 256 floats.
    func lookupTable() throws -> [Float] {
        var scale: Double? = nil
        if config.doRescale {
            guard let f = config.rescaleFactor else {
                throw PreprocessingError("`rescale_factor` must be specified if `do_rescale` is true")
            }
            scale = f
        }
        var mean: [Float]? = nil, std: [Float]? = nil
        if config.doNormalize {
            guard let m = config.imageMean, let s = config.imageStd else {
                throw PreprocessingError("`image_mean` and `image_std` must both be specified if `do_normalize` is true")
            }
            guard m.count == 3 else { throw PreprocessingError("image_mean must have 3 elements, got \(m.count)") }
            guard s.count == 3 else { throw PreprocessingError("image_std must have 3 elements, got \(s.count)") }
            mean = m.map { Float($0) }
            std = s.map { Float($0) }
        }
        var table = [Float](repeating: 0, count: 3 * 256)
        for c in 0..<3 {
            for p in 0..<256 {
                var x: Float = scale.map { Float(Double(p) * $0) } ?? Float(p)
                if let mean, let std { x = (x - mean[c]) / std[c] }
                table[c * 256 + p] = x
            }
        }
        return table
    }
}
