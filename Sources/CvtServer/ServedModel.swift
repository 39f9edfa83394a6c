import CvtKit
import Foundation

/// A loaded classifier with the name it is served under (`POST /models/<name>`).
///
/// The pipeline is not thread-safe as a whole; the two halves are used apart: `prepare` (decode,
/// resize, crop) only reads the processor's configuration and runs on any decoding thread, while
/// `run` (normalize, forward pass, postprocess) runs only on the batcher's single model thread.
public final class ServedModel: @unchecked Sendable {
    public let name: String
    public let pipeline: ImageClassificationPipeline

    /// Sets the model's engine to split batches into parts of one image: a part of several images
    /// runs taller matmuls, whose kernels may sum in another order, so an image's scores would
    /// depend on the images it happens to be batched with. One image per part gives each image
    /// the numbers it gets alone (and from `cvt classify`), whatever the batch.
    public init(name: String, pipeline: ImageClassificationPipeline) {
        self.name = name
        self.pipeline = pipeline
        pipeline.model.engine.splitsBatches = true
        pipeline.model.engine.imagesPerPart = 1
    }

    public var config: CvtConfig { pipeline.model.config }

    /// The decoded image brought to the model's input size (the uint8 steps of the processor).
    public func prepare(encoded data: Data, maxPixels: Int) throws -> RGBImage {
        let image = try ImageDecoder.decode(data: data, name: "image", maxPixels: maxPixels)
        return try pipeline.processor.resizeAndCrop(image)
    }

    /// Runs prepared images (all of one size) as one batch; each image is ranked with its own
    /// `top_k` and function. A row of a batch is computed as the image alone would be.
    public func run(_ images: [RGBImage], options: [(topK: Int, function: ClassificationFunction?)]) throws -> [[Prediction]] {
        precondition(images.count == options.count)
        let pixels = try pipeline.processor.normalized(images)
        let logits = try pipeline.model.logits(pixels)
        let n = logits.shape[1]
        let values = logits.scalars
        return options.enumerated().map { i, o in
            pipeline.rank(logits: Array(values[(i * n)..<((i + 1) * n)]), topK: o.topK, function: o.function)
        }
    }
}
