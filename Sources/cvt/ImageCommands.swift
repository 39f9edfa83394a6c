import ArgumentParser
import CvtKit
import Foundation

/// The bundled Fashion-MNIST model, used when no --model is given: looked up from the current
/// folder, then from the executable's location upwards (so `swift run` and a built binary both find it).
func defaultModelPath() throws -> String {
    if let env = ProcessInfo.processInfo.environment["CVT_DEFAULT_MODEL"], !env.isEmpty { return env }
    let relative = "models/cvt-fashion-mnist"
    var candidates = [URL(fileURLWithPath: FileManager.default.currentDirectoryPath)]
    var dir = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    for _ in 0..<6 { candidates.append(dir); dir = dir.deletingLastPathComponent() }
    for base in candidates {
        let u = base.appendingPathComponent(relative)
        if FileManager.default.fileExists(atPath: u.appendingPathComponent("config.json").path) { return u.path }
    }
    throw ValidationError("no --model given and the bundled model (\(relative)) was not found; pass --model DIR or set CVT_DEFAULT_MODEL")
}

struct ModelOptions: ParsableArguments {
    @Option(help: "Checkpoint folder or Hub id (default: the bundled Fashion-MNIST model).") var model: String?
    @Option(help: "float32 (transformers' numbers), bfloat16 (bf16 matmuls, bf16 weights) or float16 (float16-stored weights, float32 arithmetic).")
    var dtype: InferenceDType = .float32
    @OptionGroup var threadOptions: ThreadOptions

    func pipeline() throws -> ImageClassificationPipeline {
        let mode = dtype
        let engine = try threadOptions.engine()
        let p = try ImageClassificationPipeline(model: model ?? defaultModelPath(), engine: engine, dtype: mode,
                                                progress: TerminalProgressBar()?.callback)
        for w in p.warnings { FileHandle.standardError.write(Data(Entry.terminalSafe("warning: \(w)\n").utf8)) }
        return p
    }
}

struct Classify: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Classify JPEG/PNG images: ranked labels per image.")

    @Argument(help: "Image files (JPEG or PNG); `-` reads one image from standard input.") var images: [String]
    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Labels to show per image (clipped to the label count).") var topK = 5
    @Option(help: "Score function (default: from the model's problem_type).") var function: ClassificationFunction?
    @Option(help: "Images per forward pass.") var batchSize = 1
    @Flag(help: "Print one JSON array, one element per image in input order.") var json = false
    @Option(help: "Refuse images of more pixels than this before decoding them (default and maximum: Pillow's decompression-bomb error limit, 178956970); images above Pillow's warning limit (89478485) are reported.")
    var maxImagePixels = ImageDecoder.defaultMaxPixels

    func run() throws {
        guard !images.isEmpty else { throw ValidationError("give at least one image") }
        guard (1...ImageDecoder.defaultMaxPixels).contains(maxImagePixels) else {
            throw ValidationError("--max-image-pixels must be between 1 and \(ImageDecoder.defaultMaxPixels), got \(maxImagePixels)")
        }
        guard topK >= 0, batchSize > 0 else { throw ValidationError("--top-k must be >= 0 and --batch-size > 0") }
        guard batchSize <= maxBatchSize else { throw ValidationError("--batch-size must be at most \(maxBatchSize), got \(batchSize)") }
        let f = function
        let pipeline = try modelOptions.pipeline()
        let limits = ImageClassificationPipeline.ImageLimits(maxPixels: maxImagePixels) { name, width, height in
            FileHandle.standardError.write(Data(Entry.terminalSafe(
                "warning: \(name): image size (\(width * height) pixels, \(width)x\(height)) exceeds \(ImageDecoder.warningPixels) pixels, could be a decompression bomb (Pillow's DecompressionBombWarning)\n").utf8))
        }
        let results: [Result<[Prediction], Error>]
        if images.contains("-") {
            guard images.filter({ $0 == "-" }).count == 1 else { throw ValidationError("`-` (standard input) can be given once") }
            // Files are read here too, so that every image goes through the same in-memory path.
            let data = images.map { $0 == "-" ? FileHandle.standardInput.readDataToEndOfFile() : FileManager.default.contents(atPath: $0) }
            let names = images.map { $0 == "-" ? "<stdin>" : $0 }
            var decodable: [Data] = [], index: [Int] = []
            var loaded = [Result<[Prediction], Error>?](repeating: nil, count: images.count)
            for (i, d) in data.enumerated() {
                if let d { decodable.append(d); index.append(i) } else {
                    loaded[i] = .failure(CheckpointError(path: names[i], "cannot be read (missing or unreadable)"))
                }
            }
            let ranked = pipeline.classify(encoded: decodable, names: index.map { names[$0] }, topK: topK, function: f, batchSize: batchSize,
                                           limits: limits)
            for (i, r) in zip(index, ranked) { loaded[i] = r }
            results = loaded.map { $0! }
        } else {
            results = pipeline.classify(images, topK: topK, function: f, batchSize: batchSize, limits: limits)
        }
        var failed = 0
        if json {
            var array: [[String: Any]] = []
            for (path, r) in zip(images, results) {
                switch r {
                case .success(let preds):
                    array.append(["image": path, "predictions": preds.map { ["label": $0.label, "score": Double($0.score)] }])
                case .failure(let e):
                    failed += 1
                    array.append(["image": path, "error": "\(e)"])
                }
            }
            let data = try JSONSerialization.data(withJSONObject: array, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
        } else {
            for (path, r) in zip(images, results) {
                switch r {
                case .success(let preds):
                    print(Entry.terminalSafe(path))
                    // Labels come from config.json: escaped before they reach a terminal.
                    for p in preds { print(String(format: "  %8.4f  %@", p.score, Entry.terminalSafe(p.label))) }
                case .failure(let e):
                    failed += 1
                    FileHandle.standardError.write(Data(Entry.terminalSafe("error: \(e)") .utf8 + [0x0A]))
                }
            }
        }
        if failed > 0 {
            FileHandle.standardError.write(Data("\(failed) of \(images.count) images failed\n".utf8))
            throw ExitCode(2)
        }
    }
}

/// The image processor settings of `model` (default: the bundled model), as every command reads
/// them: microsoft/cvt-13's, with a warning, when the folder has no preprocessor_config.json.
func preprocessorConfig(_ model: String?) throws -> PreprocessorConfig {
    let (config, warning) = try CheckpointFolder(ModelResolver.resolve(model ?? defaultModelPath())).loadPreprocessorConfig()
    if let warning { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
    return config
}

struct Preprocess: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the image processor's pixel_values [N,3,H,W] for images, to compare with transformers.")

    @Argument(help: "Image files, in output order.") var images: [String]
    @Option(help: "Checkpoint folder (its preprocessor_config.json; default: the bundled model).") var model: String?
    @Option(help: "Output safetensors file.") var output: String

    func run() throws {
        guard !images.isEmpty else { throw ValidationError("give at least one image") }
        let config = try preprocessorConfig(model)
        let decoded = try images.map { try ImageDecoder.load(contentsOf: URL(fileURLWithPath: $0)) }
        let pixels = try ConvNextImageProcessor(config: config)(decoded)
        var writer = SafetensorsWriter(metadata: ["format": "pt"])
        try writer.add("pixel_values", pixels)
        try writer.write(to: URL(fileURLWithPath: output))
    }
}

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Accuracy of a model on an image folder (one subfolder per label) or IDX files (Fashion-MNIST).")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Image folder, or IDX images file / folder with <split>-images-idx3-ubyte[.gz].") var data: String
    @Option(help: "IDX split prefix when --data is a folder of IDX files.") var split = "t10k"
    @Option(help: "Images per forward pass.") var batchSize = 64
    @Option(help: "Evaluate only the first N images.") var limit: Int?
    @Flag(help: "Print one JSON object.") var json = false
    @Option(help: "Also write per-image predicted class indices (JSON array) to this file.") var predictions: String?

    func run() throws {
        guard batchSize > 0 else { throw ValidationError("--batch-size must be positive") }
        guard batchSize <= maxBatchSize else { throw ValidationError("--batch-size must be at most \(maxBatchSize), got \(batchSize)") }
        let pipeline = try modelOptions.pipeline()
        let url = URL(fileURLWithPath: data)
        let count: Int
        let image: (Int) throws -> RGBImage
        let label: (Int) -> Int
        let isIDX = url.lastPathComponent.contains("idx3") || (try? FileManager.default.contentsOfDirectory(atPath: url.path))?
            .contains { $0.hasPrefix("\(split)-images-idx3") } == true
        if isIDX {
            let set = try IDXDataset(url: url, split: split)
            count = set.count; image = { set.image($0) }; label = { set.labels[$0] }
        } else {
            let set = try ImageFolderDataset(url: url, id2label: pipeline.model.config.id2label)
            count = set.items.count
            image = { try ImageDecoder.load(contentsOf: set.items[$0].url) }
            label = { set.items[$0].label }
        }
        let n = min(count, limit ?? count)
        let bar = TerminalProgressBar()
        let result = try Evaluator.evaluate(pipeline: pipeline, count: n, batchSize: batchSize, image: image, label: label) { done, total in
            bar?.update(count: done, of: total, label: "evaluating")
        }
        if let predictions {
            try JSONSerialization.data(withJSONObject: result.predictions, options: [.withoutEscapingSlashes]).write(to: URL(fileURLWithPath: predictions))
        }
        if json {
            var copy = result
            copy.predictions = []
            let e = JSONEncoder(); e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            var obj = try JSONSerialization.jsonObject(with: e.encode(copy)) as? [String: Any] ?? [:]
            obj["predictions"] = nil
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self))
            return
        }
        print(String(format: "%d images: top-1 %.2f%%, top-5 %.2f%%, %.1f images/s", result.count, 100 * result.top1, 100 * result.top5, result.imagesPerSecond))
        let labels = result.perClass.map(\.label)
        let w = max(12, (labels.map(\.count).max() ?? 0) + 2)
        print("per class:")
        for c in result.perClass {
            print("  " + c.label.padding(toLength: w, withPad: " ", startingAt: 0) + (c.accuracy.map { String(format: "%6.2f%%", 100 * $0) } ?? "     -") + "  (\(c.count))")
        }
        print("confusion matrix (rows: true class, columns: predicted, in label order):")
        for (i, row) in result.confusionMatrix.enumerated() {
            print("  " + String(i).padding(toLength: 3, withPad: " ", startingAt: 0) + row.map { String(format: "%5d", $0) }.joined())
        }
    }
}

struct BenchPreprocess: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-preprocess",
        abstract: "Time decode + resize + crop + normalize of image files (single thread), to compare with transformers + Pillow.")

    @Argument(help: "Image files.") var images: [String]
    @Option(help: "Checkpoint folder or Hub id whose preprocessor_config.json to use (default: the bundled model, or CVT_DEFAULT_MODEL, as the other commands).") var model: String?
    @Option(help: "Timed runs per image.") var iterations = 100
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        guard !images.isEmpty, iterations > 0 else { throw ValidationError("give images and a positive --iterations") }
        let processor = ConvNextImageProcessor(config: try preprocessorConfig(model))
        var rows: [[String: Any]] = []
        for path in images {
            let url = URL(fileURLWithPath: path)
            for _ in 0..<3 { _ = try processor([ImageDecoder.load(contentsOf: url)]) }
            var times: [Double] = []
            for _ in 0..<iterations {
                let t0 = DispatchTime.now().uptimeNanoseconds
                _ = try processor([ImageDecoder.load(contentsOf: url)])
                times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            }
            times.sort()
            let shape = try processor([ImageDecoder.load(contentsOf: url)]).shape
            let row: [String: Any] = ["image": path, "median_ms": times[times.count / 2], "min_ms": times[0], "pixel_values_shape": shape]
            rows.append(row)
            if !json { print(String(format: "%@: load + preprocess median %.3f ms (min %.3f) over %d runs", path, times[times.count / 2], times[0], iterations)) }
        }
        if json {
            print(String(decoding: try JSONSerialization.data(withJSONObject: ["iterations": iterations, "images": rows], options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self))
        }
    }
}
