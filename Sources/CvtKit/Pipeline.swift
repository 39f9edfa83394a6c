import Foundation
@_exported import CvtVision

/// One ranked label.
public struct Prediction: Equatable, Codable, Sendable {
    public var label: String
    public var score: Float
    public init(label: String, score: Float) { self.label = label; self.score = score }
}

/// transformers' `function_to_apply`.
public enum ClassificationFunction: String, CaseIterable, Sendable {
    case softmax, sigmoid, none

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
public final class ImageClassificationPipeline {
    public let model: CvtForImageClassification
    public let processor: ConvNextImageProcessor
    /// Things the user should know (e.g. a missing preprocessor_config.json).
    public private(set) var warnings: [String] = []

    public init(model: CvtForImageClassification, processor: ConvNextImageProcessor) {
        self.model = model; self.processor = processor
    }

    /// Loads the model and its `preprocessor_config.json` from a checkpoint folder. Without that
    /// file the microsoft/cvt-13 settings are used (not the processor's class defaults), with a warning.
    public convenience init(model url: URL, engine: Engine? = nil, dtype: InferenceDType? = nil) throws {
        let model = try CvtForImageClassification(pretrained: url, engine: engine, dtype: dtype)
        let folder = CheckpointFolder(url)
        var warning: String?
        let config: PreprocessorConfig
        if let data = FileManager.default.contents(atPath: folder.preprocessorURL.path) {
            do { config = try JSONDecoder().decode(PreprocessorConfig.self, from: data) } catch {
                throw CheckpointError(path: folder.preprocessorURL.path, "is not a valid image processor config: \(error)")
            }
        } else {
            config = .cvt13Default
            warning = "\(folder.preprocessorURL.path) not found; using the microsoft/cvt-13 preprocessing (224, crop_pct 0.875, bicubic, ImageNet mean/std)"
        }
        self.init(model: model, processor: ConvNextImageProcessor(config: config))
        if let warning { warnings.append(warning) }
        if model.engine.emulatesBFloat16 { warnings.append(InferenceDType.bfloat16EmulationNote) }
    }

    /// Ranks labels for decoded images, `batchSize` images per forward pass.
    public func callAsFunction(images: [RGBImage], topK: Int = 5, function: ClassificationFunction? = nil,
                               batchSize: Int = 1) throws -> [[Prediction]] {
        var results: [[Prediction]] = []
        let step = max(1, batchSize)
        for start in stride(from: 0, to: images.count, by: step) {
            let batch = Array(images[start..<min(images.count, start + step)])
            let pixels = try processor(batch)
            let logits = try model.logits(pixels)
            results += rank(logits, topK: topK, function: function)
        }
        return results
    }

    /// Classifies image files; one result per path, so a bad file does not stop the others.
    public func classify(_ paths: [String], topK: Int = 5, function: ClassificationFunction? = nil,
                         batchSize: Int = 1) -> [Result<[Prediction], Error>] {
        classify(paths.map { path in { try ImageDecoder.load(contentsOf: URL(fileURLWithPath: path)) } },
                 topK: topK, function: function, batchSize: batchSize)
    }

    /// Classifies encoded images held in memory (the bytes of JPEG or PNG files, e.g. from a
    /// request or stdin); `names` (default "image 0", "image 1", …) appear in error messages. One
    /// result per image, so a bad one does not stop the others.
    public func classify(encoded images: [Data], names: [String]? = nil, topK: Int = 5, function: ClassificationFunction? = nil,
                         batchSize: Int = 1) -> [Result<[Prediction], Error>] {
        classify(images.enumerated().map { i, data in
            { try ImageDecoder.decode(data: data, name: names.flatMap { i < $0.count ? $0[i] : nil } ?? "image \(i)") }
        }, topK: topK, function: function, batchSize: batchSize)
    }

    private func classify(_ sources: [() throws -> RGBImage], topK: Int, function: ClassificationFunction?,
                          batchSize: Int) -> [Result<[Prediction], Error>] {
        var results = [Result<[Prediction], Error>?](repeating: nil, count: sources.count)
        var pending: [(index: Int, image: RGBImage)] = []
        func flush() {
            guard !pending.isEmpty else { return }
            do {
                let ranked = try self(images: pending.map(\.image), topK: topK, function: function, batchSize: pending.count)
                for (p, r) in zip(pending, ranked) { results[p.index] = .success(r) }
            } catch {
                for p in pending { results[p.index] = .failure(error) }
            }
            pending.removeAll()
        }
        for (i, source) in sources.enumerated() {
            do {
                pending.append((i, try source()))
            } catch {
                results[i] = .failure(error)
            }
            if pending.count >= max(1, batchSize) { flush() }
        }
        flush()
        return results.map { $0 ?? .failure(CheckpointError(path: "", "internal: no result")) }
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
