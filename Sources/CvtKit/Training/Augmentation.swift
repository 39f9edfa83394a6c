import Foundation

/// Training-time image augmentation, on the 8-bit image before rescale and normalize.
public enum Augmentation: Equatable, Sendable {
    /// None: training images go through the image processor as evaluation images do.
    case none
    /// torchvision's `RandomResizedCrop(size, scale, ratio)` (bilinear, as on a PIL image) and,
    /// with `flip`, `RandomHorizontalFlip(0.5)`: what transformers' image-classification example
    /// applies.
    case randomResizedCrop(scale: ClosedRange<Double>, ratio: ClosedRange<Double>, flip: Bool)
    /// torchvision's `RandomCrop(size, padding)` with zero padding, then the processor's resize, and
    /// with `flip`, `RandomHorizontalFlip(0.5)`: the usual recipe for small images (MNIST, CIFAR).
    case padCrop(padding: Int, flip: Bool)

    /// The example script's transform.
    public static let example = Augmentation.randomResizedCrop(scale: 0.08...1, ratio: (3.0 / 4)...(4.0 / 3), flip: true)
}

/// Uniform doubles in [0, 1) from a `SplitMix64`.
extension SplitMix64 {
    mutating func uniform() -> Double { Double(next() >> 11) * 0x1p-53 }
    /// torch's `randint(low, high)`: an integer in `low..<high`.
    mutating func int(_ range: Range<Int>) -> Int { range.lowerBound + Int(next() % UInt64(range.count)) }
}

/// The generator of one image's augmentation in one epoch. Every (seed, epoch, index) has its own
/// stream, so results do not depend on which thread or in which order images are prepared, and a
/// resumed run draws exactly what an uninterrupted one would.
public func augmentationGenerator(seed: UInt64, epoch: Int, index: Int) -> SplitMix64 {
    var g = SplitMix64(seed: seed ^ 0xA5A5_0000_0000_0000)
    var h = SplitMix64(seed: g.next() &+ UInt64(truncatingIfNeeded: epoch) &* 0xD1B5_4A32_D192_ED03)
    return SplitMix64(seed: h.next() &+ UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15)
}

/// torchvision's `RandomResizedCrop` crop-box sampling.
public enum RandomResizedCrop {
    /// torchvision's `RandomResizedCrop.get_params`: (left, top, width, height) of the crop. Ten
    /// tries of a random area fraction and log-uniform aspect ratio; then the central crop with the
    /// ratio clamped into range.
    public static func parameters(width: Int, height: Int, scale: ClosedRange<Double>, ratio: ClosedRange<Double>,
                                  using rng: inout SplitMix64) -> (left: Int, top: Int, width: Int, height: Int) {
        let area = Double(width * height)
        let logRatio = (log(ratio.lowerBound), log(ratio.upperBound))
        for _ in 0..<10 {
            let targetArea = area * (scale.lowerBound + (scale.upperBound - scale.lowerBound) * rng.uniform())
            let aspect = exp(logRatio.0 + (logRatio.1 - logRatio.0) * rng.uniform())
            let w = Int((targetArea * aspect).squareRoot().rounded(.toNearestOrEven))
            let h = Int((targetArea / aspect).squareRoot().rounded(.toNearestOrEven))
            if w > 0 && w <= width && h > 0 && h <= height {
                let top = rng.int(0..<(height - h + 1)), left = rng.int(0..<(width - w + 1))
                return (left, top, w, h)
            }
        }
        let inRatio = Double(width) / Double(height)
        var w = width, h = height
        if inRatio < ratio.lowerBound {
            h = Int((Double(w) / ratio.lowerBound).rounded(.toNearestOrEven))
        } else if inRatio > ratio.upperBound {
            w = Int((Double(h) * ratio.upperBound).rounded(.toNearestOrEven))
        }
        return ((width - w) / 2, (height - h) / 2, w, h)
    }
}

extension Augmentation {
    /// The augmented 8-bit image at the processor's output size (`width` × `height`).
    public func apply(_ image: RGBImage, processor: ConvNextImageProcessor, width: Int, height: Int,
                      using rng: inout SplitMix64) throws -> RGBImage {
        var out: RGBImage
        var flip = false
        switch self {
        case .none:
            return try processor.resizeAndCrop(image)
        case let .randomResizedCrop(scale, ratio, f):
            let c = RandomResizedCrop.parameters(width: image.width, height: image.height, scale: scale, ratio: ratio, using: &rng)
            out = try image.cropped(left: c.left, top: c.top, width: c.width, height: c.height)
                .resized(width: width, height: height, resample: .bilinear)
            flip = f && rng.uniform() < 0.5
        case let .padCrop(p, f):
            let dx = rng.int(0..<(2 * p + 1)), dy = rng.int(0..<(2 * p + 1))
            out = try processor.resizeAndCrop(image.cropped(left: dx - p, top: dy - p, width: image.width, height: image.height))
            flip = f && rng.uniform() < 0.5
        }
        return flip ? out.transposed(.flipLeftRight) : out
    }
}
