import Foundation

/// An image folder with one subfolder per class, each named as one of the model's labels.
public struct ImageFolderDataset: Sendable {
    /// Every image file with its class index, class folders in name order and files in name order within each.
    public let items: [(url: URL, label: Int)]

    /// The folder name that stands for `label`: the label itself, with "/" (which a folder name
    /// cannot hold, e.g. "T-shirt/top") written as "_".
    public static func folderName(for label: String) -> String { label.replacingOccurrences(of: "/", with: "_") }

    static let imageExtensions: Set<String> = ["jpg", "jpeg", "png"]

    /// Maps every subfolder to a label by name, never by sorted position (microsoft/CvT#14 is
    /// what happens otherwise); a folder that names no label is an error.
    public init(url: URL, id2label: [Int: String]) throws {
        let fm = FileManager.default
        let subfolders = try fm.contentsOfDirectory(at: url, includingPropertiesForKeys: [.isDirectoryKey])
            .filter { (try? $0.resourceValues(forKeys: [.isDirectoryKey]).isDirectory) == true }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
        guard !subfolders.isEmpty else { throw DatasetError(path: url.path, "has no class subfolders") }
        var byName: [String: Int] = [:]
        for (i, l) in id2label { byName[l] = i; byName[Self.folderName(for: l)] = i }
        var items: [(URL, Int)] = []
        for folder in subfolders {
            guard let label = byName[folder.lastPathComponent] else {
                let known = id2label.sorted { $0.key < $1.key }.prefix(12).map { "\"\(Self.folderName(for: $0.value))\"" }
                throw DatasetError(path: folder.path, "is not one of the model's labels (\(known.joined(separator: ", "))\(id2label.count > 12 ? ", …" : ""))")
            }
            let files = try fm.contentsOfDirectory(at: folder, includingPropertiesForKeys: nil)
                .filter { Self.imageExtensions.contains($0.pathExtension.lowercased()) }
                .sorted { $0.lastPathComponent < $1.lastPathComponent }
            items += files.map { ($0, label) }
        }
        guard !items.isEmpty else { throw DatasetError(path: url.path, "has no .jpg/.jpeg/.png images in its class folders") }
        self.items = items
    }
}

/// Accuracy report of `cvt evaluate`.
public struct EvaluationResult: Encodable, Sendable {
    /// One class's share of the evaluation: its label, the number of images whose true class it is, and the fraction of them predicted correctly (nil when there are none).
    public struct ClassResult: Encodable, Sendable { public var label: String; public var count: Int; public var accuracy: Double? }
    /// Fraction of images whose highest-scoring class is the true one (0 to 1).
    public var top1: Double
    /// Fraction of images whose true class is among the five highest-scoring (among all when the model has fewer than five labels).
    public var top5: Double
    /// Number of images evaluated.
    public var count: Int
    /// Per-class counts and accuracy, in class-index order.
    public var perClass: [ClassResult]
    /// `[true class][predicted class]`.
    public var confusionMatrix: [[Int]]
    /// Throughput over the whole evaluation, preprocessing included.
    public var imagesPerSecond: Double
    /// Predicted class per image, in data-set order.
    public var predictions: [Int]

    enum CodingKeys: String, CodingKey {
        case top1, top5, count, perClass = "per_class", confusionMatrix = "confusion_matrix"
        case imagesPerSecond = "images_per_second", predictions
    }
}

/// Accuracy of an image classifier over a labelled data set (`cvt evaluate`).
public enum Evaluator {
    /// Runs `model` over `count` images (fetched by index) with true labels, `batchSize` at a time.
    public static func evaluate(pipeline: ImageClassificationPipeline, count: Int, batchSize: Int,
                                image: (Int) throws -> RGBImage, label: (Int) -> Int,
                                progress: ((Int, Int) throws -> Void)? = nil) throws -> EvaluationResult {
        let config = pipeline.model.config
        let n = config.numLabels
        guard n > 0 else { throw CvtInputError("the model has no classification head (num_labels 0)") }
        var confusion = [[Int]](repeating: [Int](repeating: 0, count: n), count: n)
        var top1 = 0, top5 = 0
        var predictions: [Int] = []
        predictions.reserveCapacity(count)
        let k = min(5, n)
        let start = DispatchTime.now().uptimeNanoseconds
        var i = 0
        while i < count {
            let end = min(count, i + max(1, batchSize))
            let images = try (i..<end).map(image)
            let logits = try pipeline.model.logits(pipeline.processor(images))
            let values = logits.scalars
            for (j, index) in (i..<end).enumerated() {
                let truth = label(index)
                guard truth >= 0 && truth < n else {
                    throw CvtInputError("image \(index) has label \(truth), outside the model's \(n) classes")
                }
                let row = values[(j * n)..<((j + 1) * n)]
                // Ties keep the lower index first, as the pipeline's stable sort does.
                let order = row.indices.sorted { row[$0] > row[$1] || (row[$0] == row[$1] && $0 < $1) }.map { $0 - j * n }
                let predicted = order[0]
                predictions.append(predicted)
                confusion[truth][predicted] += 1
                if predicted == truth { top1 += 1 }
                if order.prefix(k).contains(truth) { top5 += 1 }
            }
            i = end
            try progress?(i, count)
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let perClass = (0..<n).map { c -> EvaluationResult.ClassResult in
            let total = confusion[c].reduce(0, +)
            return .init(label: config.id2label[c] ?? "LABEL_\(c)", count: total,
                         accuracy: total > 0 ? Double(confusion[c][c]) / Double(total) : nil)
        }
        return EvaluationResult(top1: count > 0 ? Double(top1) / Double(count) : 0, top5: count > 0 ? Double(top5) / Double(count) : 0,
                                count: count, perClass: perClass, confusionMatrix: confusion,
                                imagesPerSecond: seconds > 0 ? Double(count) / seconds : 0, predictions: predictions)
    }
}
