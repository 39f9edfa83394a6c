import Foundation
@_exported import CvtVision

/// One ranked label.
public struct Prediction: Equatable, Codable, Sendable {
    /// The class's name (`id2label`).
    public var label: String
    /// The score after the classification function (a probability for softmax and sigmoid, the logit for none).
    public var score: Float
    /// A prediction of `label` with `score`.
    public init(label: String, score: Float) { self.label = label; self.score = score }
}

/// transformers' `function_to_apply`.
public enum ClassificationFunction: String, CaseIterable, Sendable {
    case softmax, sigmoid, none

    /// The function named `name` in any case (`softmax`, `sigmoid`, `none`); nil for other names.
    public init?(caseInsensitive name: String) { self.init(rawValue: name.lowercased()) }

    /// transformers' default (`pipelines/image_classification.py`): regression → none; multi-label or one label → sigmoid;
    /// single-label or several labels → softmax; else none.
    public static func `default`(for config: CvtConfig) -> ClassificationFunction {
        if config.problemType == "regression" { return .none }
        if config.problemType == "multi_label_classification" || config.numLabels == 1 { return .sigmoid }
        if config.problemType == "single_label_classification" || config.numLabels > 1 { return .softmax }
        return .none
    }

    /// Scores from one row of logits, in float32 as the reference's numpy postprocess computes them.
    public func apply(_ logits: [Float]) -> [Float] {
        switch self {
        case .none: return logits
        case .sigmoid: return logits.map { 1 / (1 + Foundation.exp(-$0)) }
        case .softmax:
            guard let m = logits.max() else { return [] }
            let e = logits.map { Foundation.exp($0 - m) }
            let s = e.reduce(0, +)
            return e.map { $0 / s }
        }
    }
}

/// transformers' `image-classification` pipeline for CvT: decode (EXIF-transposed, RGB),
/// preprocess with the checkpoint's `ConvNextImageProcessor`, run the model, rank labels.
///
/// A pipeline may be shared by threads and tasks: decoding and preprocessing run concurrently,
/// and the model's calls take turns on its engine (each one uses all of the engine's threads).
/// The `async` methods run on a thread of their own and stop when their task is cancelled.
public final class ImageClassificationPipeline: Sendable {
    /// The classifier.
    public let model: CvtForImageClassification
    /// The image processor applied before the model (the checkpoint's `preprocessor_config.json`).
    public let processor: ConvNextImageProcessor
    /// Things the user should know (e.g. a missing preprocessor_config.json).
    public let warnings: [String]

    /// A pipeline around a loaded model and processor; `warnings` are passed on to the user.
    public init(model: CvtForImageClassification, processor: ConvNextImageProcessor, warnings: [String] = []) {
        self.model = model; self.processor = processor; self.warnings = warnings
    }

    /// Loads the model and its `preprocessor_config.json` from a checkpoint folder. Without that
    /// file the microsoft/cvt-13 settings are used (not the processor's class defaults), with a warning.
    public convenience init(model url: URL, engine: Engine? = nil, dtype: InferenceDType? = nil) throws {
        let model = try CvtForImageClassification(pretrained: url, engine: engine, dtype: dtype)
        let (config, warning) = try CheckpointFolder(url).loadPreprocessorConfig()
        var warnings = warning.map { [$0] } ?? []
        if dtype == .bfloat16, !Engine.hasNativeBFloat16 { warnings.append(InferenceDType.bfloat16EmulationNote) }
        self.init(model: model, processor: ConvNextImageProcessor(config: config), warnings: warnings)
    }

    /// Writes the model (`CvtForImageClassification.savePretrained`) and `preprocessor_config.json`,
    /// so that a pipeline loaded from `url` preprocesses as this one does.
    public func savePretrained(to url: URL, dtype: SafetensorsDType = .f32) throws {
        try model.savePretrained(to: url, dtype: dtype)
        try processor.config.jsonData().write(to: url.appendingPathComponent("preprocessor_config.json"), options: .atomic)
    }

    /// Ranks labels for decoded images, `batchSize` images per forward pass.
    public func callAsFunction(images: [RGBImage], topK: Int = 5, function: ClassificationFunction? = nil,
                               batchSize: Int = 1) throws -> [[Prediction]] {
        var results: [[Prediction]] = []
        let step = max(1, batchSize)
        for start in stride(from: 0, to: images.count, by: step) {
            let batch = Array(images[start..<min(images.count, start + step)])
            let pixels = try processor(batch)
            // Attention is quadratic in the token count: refuse an input size the model cannot hold.
            try model.config.checkInputSize(height: pixels.shape[2], width: pixels.shape[3], what: "image size")
            let logits = try model.logits(pixels)
            results += rank(logits, topK: topK, function: function)
        }
        return results
    }

    /// What `classify` does with large images: those of more than `maxPixels` are refused
    /// before their pixels are allocated (default: Pillow's decompression-bomb error limit; a
    /// server or batch job may set a lower one), and `warning` is called with the name and size of
    /// each decoded image above `ImageDecoder.warningPixels` (Pillow's `MAX_IMAGE_PIXELS`, where
    /// it warns `DecompressionBombWarning`).
    public struct ImageLimits: Sendable {
        /// Images of more pixels (width × height, as declared by the file) are refused.
        public var maxPixels: Int
        /// Called for each decoded image above Pillow's warning limit: (name, width, height).
        public var warning: (@Sendable (_ name: String, _ width: Int, _ height: Int) -> Void)?
        /// Pillow's error limit and no warning callback by default.
        public init(maxPixels: Int = ImageDecoder.defaultMaxPixels, warning: (@Sendable (String, Int, Int) -> Void)? = nil) {
            self.maxPixels = maxPixels; self.warning = warning
        }
    }

    /// Classifies image files; one result per path, so a bad file does not stop the others.
    public func classify(_ paths: [String], topK: Int = 5, function: ClassificationFunction? = nil,
                         batchSize: Int = 1, limits: ImageLimits = ImageLimits()) -> [Result<[Prediction], Error>] {
        classify(sources(paths, limits: limits), topK: topK, function: function, batchSize: batchSize)
    }

    func sources(_ paths: [String], limits: ImageLimits) -> [() throws -> RGBImage] {
        paths.map { path in { try Self.checked(ImageDecoder.load(contentsOf: URL(fileURLWithPath: path), maxPixels: limits.maxPixels), path, limits) } }
    }

    func sources(encoded images: [Data], names: [String]?, limits: ImageLimits) -> [() throws -> RGBImage] {
        images.enumerated().map { i, data in
            let name = names.flatMap { i < $0.count ? $0[i] : nil } ?? "image \(i)"
            return { try Self.checked(ImageDecoder.decode(data: data, name: name, maxPixels: limits.maxPixels), name, limits) }
        }
    }

    /// Classifies encoded images held in memory (the bytes of JPEG or PNG files, e.g. from a
    /// request or stdin); `names` (default "image 0", "image 1", …) appear in error messages. One
    /// result per image, so a bad one does not stop the others.
    public func classify(encoded images: [Data], names: [String]? = nil, topK: Int = 5, function: ClassificationFunction? = nil,
                         batchSize: Int = 1, limits: ImageLimits = ImageLimits()) -> [Result<[Prediction], Error>] {
        classify(sources(encoded: images, names: names, limits: limits), topK: topK, function: function, batchSize: batchSize)
    }

    private static func checked(_ image: RGBImage, _ name: String, _ limits: ImageLimits) -> RGBImage {
        if image.width * image.height > ImageDecoder.warningPixels { limits.warning?(name, image.width, image.height) }
        return image
    }

    /// Decodes and classifies `sources` in batches of `batchSize` decodable images. After each
    /// batch, `onBatch` gets the inputs done so far and the items finished since the last call (a
    /// failed decode is finished at once), in input order; `isCancelled` is polled before each
    /// input, and a cancelled run returns what it has (unfinished inputs fail with
    /// `CancellationError`).
    func classify(_ sources: [() throws -> RGBImage], topK: Int, function: ClassificationFunction?, batchSize: Int,
                  isCancelled: () -> Bool = { false },
                  onBatch: (Int, [ClassifiedItem]) -> Void = { _, _ in }) -> [Result<[Prediction], Error>] {
        var results = [Result<[Prediction], Error>?](repeating: nil, count: sources.count)
        var pending: [(index: Int, image: RGBImage)] = []
        var reported = 0  // inputs before this index have been passed to onBatch
        func report(upTo end: Int) {
            let items = (reported..<end).compactMap { i in results[i].map { ClassifiedItem(index: i, result: $0) } }
            reported = end
            onBatch(end, items)
        }
        func flush(upTo end: Int) {
            guard !pending.isEmpty else { return }
            do {
                let ranked = try self(images: pending.map(\.image), topK: topK, function: function, batchSize: pending.count)
                for (p, r) in zip(pending, ranked) { results[p.index] = .success(r) }
            } catch {
                for p in pending { results[p.index] = .failure(error) }
            }
            pending.removeAll()
            report(upTo: end)
        }
        for (i, source) in sources.enumerated() {
            if isCancelled() { break }
            do {
                pending.append((i, try source()))
            } catch {
                results[i] = .failure(error)
            }
            if pending.count >= max(1, batchSize) { flush(upTo: i + 1) }
        }
        if !isCancelled() {
            flush(upTo: sources.count)
            if reported < sources.count { report(upTo: sources.count) }
        }
        return results.map { $0 ?? .failure(CancellationError()) }
    }

    /// Classifies image files, throwing the first failure.
    public func callAsFunction(_ paths: [String], topK: Int = 5, function: ClassificationFunction? = nil,
                               batchSize: Int = 1) throws -> [[Prediction]] {
        try classify(paths, topK: topK, function: function, batchSize: batchSize).map { try $0.get() }
    }

    /// Postprocess (`ImageClassificationPipeline.postprocess`): scores, stable sort descending (ties keep the lower index), top-k
    /// clipped to the label count.
    func rank(_ logits: Tensor, topK: Int, function: ClassificationFunction?) -> [[Prediction]] {
        let b = logits.shape[0], n = logits.shape[1]
        let values = logits.scalars
        return (0..<b).map { i in rank(logits: Array(values[(i * n)..<((i + 1) * n)]), topK: topK, function: function) }
    }

    /// The postprocess for one image's logits (a row of `model.logits`), e.g. for batches whose
    /// images ask for different `top_k` or `function_to_apply`.
    public func rank(logits: [Float], topK: Int, function: ClassificationFunction?) -> [Prediction] {
        let f = function ?? .default(for: model.config)
        let k = max(0, min(topK, model.config.numLabels))
        let scores = f.apply(logits)
        let order = scores.indices.sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
        return order.prefix(k).map { Prediction(label: model.config.id2label[$0] ?? "LABEL_\($0)", score: scores[$0]) }
    }
}
