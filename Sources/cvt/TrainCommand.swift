import ArgumentParser
import CvtKit
import Foundation

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune a CvT classifier on labelled images (or train one from scratch), as transformers' image-classification example with its Trainer.",
        discussion: """
        Data: --train-dir is an image folder (one subfolder per label, labels sorted by name; JPEG and PNG) or \
        a folder of IDX files (train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz], e.g. Fashion-MNIST; \
        an IDX --validation-dir reads the t10k files); --train-data is a safetensors file of preprocessed \
        `pixel_values` and `labels`, used as they are. Without validation data, --train-val-split holds out a \
        seeded fraction of the training images (of preprocessed tensors only when given). Every image is decoded once before the first step; a bad one \
        stops the run before it starts, naming the files (or is skipped with --skip-bad-images).

        Training images get RandomResizedCrop(scale 0.08–1, ratio 3/4–4/3) + horizontal flip (the example's \
        augmentation; --augmentation pad-crop is the small-image recipe, --no-augment none), then the \
        processor's rescale and normalization; validation images get the image processor. Decoding and \
        augmentation run on a loader thread, ahead of the step.

        OUTPUT receives what Trainer writes: config.json (with id2label / label2id from the data), \
        model.safetensors, preprocessor_config.json, trainer_state.json, training_args.json, train_results.json, \
        eval_results.json, all_results.json, checkpoint-<step>/ folders (model, optimizer.safetensors, \
        scheduler.json, rng_state.json; atomic), training_curves.svg and a model card README.md. \
        Ctrl-C or SIGTERM writes a checkpoint and exits with status 130 / 143; --resume-from-checkpoint \
        [PATH] continues it (no PATH: the newest checkpoint in OUTPUT).
        """)

    // Model
    @Option(help: "Checkpoint folder, Hub id, or preset (\(CvtConfig.presetNames.joined(separator: ", ")): random init).") var model: String?
    @Option(help: "A config.json (or the folder holding it) to train from scratch (random init), instead of --model.") var config: String?
    @Option(help: "preprocessor_config.json (or a folder holding one); default: the model's, else cvt-13's.") var imageProcessor: String?
    @Flag(help: "Replace the classifier when the data have a different number of labels than the checkpoint.") var ignoreMismatchedSizes = false
    // Data
    @Option(help: "Training images: an image folder (DIR/<label>/<image>) or an IDX folder.") var trainDir: String?
    @Option(help: "Validation images: an image folder or an IDX folder (its t10k files).") var validationDir: String?
    @Option(help: "Training data: safetensors file with pixel_values and labels.") var trainData: String?
    @Option(help: "Validation data: safetensors file with pixel_values and labels.") var validationData: String?
    @Option(help: "Fraction of the training data held out for validation when no validation data are given (0: none; default 0.15 for images, none for --train-data).") var trainValSplit: Double?
    @Option(help: "Use at most this many training images (a seeded sample).") var maxTrainSamples: Int?
    @Option(help: "Use at most this many validation images (a seeded sample).") var maxEvalSamples: Int?
    @Option(help: "Label names of IDX data, comma-separated (default: the model's labels when the counts match, else 0, 1, …).") var labelNames: String?
    @Flag(help: "Skip images that fail to decode (counted in the log) instead of stopping.") var skipBadImages = false
    @Option(help: "random-resized-crop (the example's), pad-crop (random crop of the zero-padded image) or none.") var augmentation = "random-resized-crop"
    @Option(help: "Zero padding of --augmentation pad-crop, in pixels.") var padCropPadding = 2
    @Flag(help: "No data augmentation (same as --augmentation none).") var noAugment = false
    @Flag(help: "Take batches in data order instead of a seeded shuffle per epoch.") var noShuffle = false
    // Output
    @Option(help: "Output folder.") var outputDir: String
    @Flag(help: "Start over in an output folder that holds checkpoints of an earlier run.") var overwriteOutputDir = false
    @Option(help: "Continue from a checkpoint-<step> folder; `last` (or no value) takes the newest one in the output folder.") var resumeFromCheckpoint: String?
    // Schedule
    @Option(help: "Optimizer steps (overrides --num-train-epochs when > 0).") var maxSteps: Int = -1
    @Option(help: "Epochs over the training data.") var numTrainEpochs: Double = 3
    @Option(help: "Images per micro-batch.") var perDeviceTrainBatchSize: Int = 8
    @Option(help: "Images per evaluation batch.") var perDeviceEvalBatchSize: Int = 8
    @Option(help: "Peak learning rate.") var learningRate: Double = 5e-5
    @Option(help: "AdamW weight decay (not applied to biases and LayerNorm parameters, as Trainer).") var weightDecay: Double = 0
    @Option(help: "AdamW beta1.") var adamBeta1: Double = 0.9
    @Option(help: "AdamW beta2.") var adamBeta2: Double = 0.999
    @Option(help: "AdamW epsilon.") var adamEpsilon: Double = 1e-8
    @Option(help: "Learning-rate schedule, as transformers names it.") var lrSchedulerType: SchedulerChoice = .linear
    @Option(help: "Warm-up steps (a value below 1 is a ratio of the total steps, as transformers 5 reads it).") var warmupSteps: Double = 0
    @Option(help: "Warm-up as a ratio of the total steps (transformers 4's warmup_ratio).") var warmupRatio: Double?
    @Option(help: "Clip the global gradient norm to this (0: no clipping).") var maxGradNorm: Double = 1
    @Option(help: "Micro-batches per optimizer step.") var gradientAccumulationSteps: Int = 1
    @Option(help: "Label smoothing of the cross-entropy (transformers' LabelSmoother).") var labelSmoothingFactor: Double = 0
    @Option(help: "Seed for the split, data order, augmentation, dropout and random init.") var seed: Int = 42
    // Logging, evaluation, checkpoints
    @Option(help: "Log the mean training loss every this many steps (steps strategy).") var loggingSteps: Double = 10
    @Option(help: "When to log the training loss.") var loggingStrategy: IntervalStrategy = .steps
    @Option(help: "When to evaluate.") var evalStrategy: IntervalStrategy = .epoch
    @Option(help: "Evaluate every this many steps (eval strategy steps; default: logging steps).") var evalSteps: Double?
    @Option(help: "When to write a checkpoint.") var saveStrategy: SaveStrategy = .epoch
    @Option(help: "Write a checkpoint every this many steps (save strategy steps).") var saveSteps: Double = 500
    @Option(help: "Keep at most this many checkpoints (the best one is always kept).") var saveTotalLimit: Int?
    @Flag(help: "Load the best checkpoint's weights at the end (needs matching eval and save strategies).") var loadBestModelAtEnd = false
    @Option(help: "Metric deciding the best model (accuracy or loss).") var metricForBestModel: String?
    @Flag(help: "Print JSON lines (steps, logs, evaluations, checkpoints) instead of text.") var json = false
    @Option(help: "float32, or bfloat16: bf16 matmuls and convolutions with float32 weights and optimizer state (as PyTorch's CPU autocast).")
    var dtype: TrainingDType = .float32
    @OptionGroup var threadOptions: ThreadOptions

    func arguments() throws -> TrainingArguments {
        var a = TrainingArguments()
        a.outputDir = outputDir
        a.maxSteps = maxSteps; a.numTrainEpochs = numTrainEpochs
        a.perDeviceTrainBatchSize = perDeviceTrainBatchSize; a.perDeviceEvalBatchSize = perDeviceEvalBatchSize
        a.learningRate = learningRate; a.weightDecay = weightDecay
        a.adamBeta1 = adamBeta1; a.adamBeta2 = adamBeta2; a.adamEpsilon = adamEpsilon
        a.lrSchedulerType = try SchedulerType(name: lrSchedulerType.rawValue); a.warmupSteps = warmupRatio ?? warmupSteps
        a.maxGradNorm = maxGradNorm; a.gradientAccumulationSteps = gradientAccumulationSteps
        a.labelSmoothingFactor = labelSmoothingFactor; a.seed = seed
        a.loggingStrategy = loggingStrategy; a.loggingSteps = loggingSteps
        a.evalStrategy = evalStrategy; a.evalSteps = evalSteps
        a.saveStrategy = saveStrategy; a.saveSteps = saveSteps
        a.saveTotalLimit = saveTotalLimit; a.loadBestModelAtEnd = loadBestModelAtEnd
        a.metricForBestModel = metricForBestModel ?? (loadBestModelAtEnd && trainData == nil ? "accuracy" : nil)
        if let r = warmupRatio, !(r >= 0 && r < 1) { throw ValidationError("--warmup-ratio must be in [0, 1), got \(r)") }
        return a
    }

    func augmentationChoice() throws -> Augmentation {
        if noAugment { return .none }
        switch augmentation {
        case "random-resized-crop": return .example
        case "pad-crop":
            guard padCropPadding >= 0 else { throw ValidationError("--pad-crop-padding must not be negative") }
            return .padCrop(padding: padCropPadding, flip: true)
        case "none": return .none
        default: throw ValidationError("--augmentation must be random-resized-crop, pad-crop or none, got \(augmentation)")
        }
    }

    func run() throws {
        var args = try arguments()
        let aug = try augmentationChoice()
        guard (trainDir == nil) != (trainData == nil) else { throw ValidationError("give exactly one of --train-dir and --train-data") }
        guard (model == nil) != (config == nil) else { throw ValidationError("give exactly one of --model and --config") }
        let out = URL(fileURLWithPath: outputDir)
        let resume = try resumeCheckpoint(out)
        if resume == nil, !overwriteOutputDir, let last = Trainer.checkpoints(in: out).last {
            throw ValidationError("\(out.path) holds checkpoints of an earlier run (\(last.url.lastPathComponent)): pass --resume-from-checkpoint to continue it or --overwrite-output-dir to start over")
        }
        try Trainer.checkWritable(out)
        let engine = try threadOptions.engine()
        engine.precision = dtype.precision
        if engine.emulatesBFloat16 { warn(InferenceDType.bfloat16EmulationNote) }
        let seed64 = UInt64(truncatingIfNeeded: seed)
        let reporter = TrainingReporter(json: json)

        // The model as loaded (its labels are set once the data are known).
        var classifier: CvtForImageClassification
        var baseName: String?
        if let config {
            let c = try CheckpointFolder(configFolder(config)).loadConfig()
            classifier = try .randomlyInitialized(config: c, seed: seed64, engine: engine)
        } else {
            classifier = try trainableModel(model!, engine: engine, seed: seed64)
            if CvtConfig.preset(named: model!) == nil || FileManager.default.fileExists(atPath: model!) { baseName = model }
        }
        let (processorSettings, processorFile) = try processorConfig()
        let processor = ConvNextImageProcessor(config: processorSettings)

        // Data
        let trainSource: TrainingBatchSource, evalSource: TrainingBatchSource?
        var labels: [String] = [], numTrain = 0, numEval: Int? = nil, datasetName = ""
        if let trainData {
            let data = try TrainingTensors(url: URL(fileURLWithPath: trainData))
            // Preprocessed tensors are used as they are (as the Trainer takes a dataset): a split
            // only when asked for.
            if validationData == nil, let fraction = trainValSplit, fraction > 0 {
                let split = try DatasetSplit.trainValidation(count: data.count, fraction: fraction, seed: seed64)
                trainSource = TensorBatchSource(try data.subset(split.train), name: trainData)
                evalSource = TensorBatchSource(try data.subset(split.validation), name: trainData + " (held out)")
            } else {
                trainSource = TensorBatchSource(data, name: trainData)
                evalSource = try validationData.map { TensorBatchSource(try TrainingTensors(url: URL(fileURLWithPath: $0)), name: $0) }
            }
            numTrain = trainSource.count; numEval = evalSource?.count; datasetName = trainData
            labels = (0..<classifier.config.numLabels).map { classifier.config.id2label[$0] ?? "LABEL_\($0)" }
        } else {
            let trainURL = URL(fileURLWithPath: trainDir!)
            var train = try loadImages(trainURL, split: "train", labels: nil, model: classifier.config, reporter: reporter)
            labels = train.labelNames
            classifier = try classifier.withLabels(labels, ignoreMismatchedSizes: ignoreMismatchedSizes || config != nil, seed: seed64 &+ 1)
            var val: LabeledImageDataset?
            if let validationDir {
                val = try loadImages(URL(fileURLWithPath: validationDir), split: "t10k", labels: labels, model: classifier.config, reporter: reporter)
            } else if (trainValSplit ?? 0.15) > 0 {
                let split = try DatasetSplit.trainValidation(count: train.count, fraction: trainValSplit ?? 0.15, seed: seed64)
                val = DatasetSubset(train, indices: split.validation)
                train = DatasetSubset(train, indices: split.train)
            }
            if let n = maxTrainSamples { train = DatasetSubset(train, indices: DatasetSplit.sample(count: train.count, n: n, seed: seed64)) }
            if let n = maxEvalSamples, let v = val { val = DatasetSubset(v, indices: DatasetSplit.sample(count: v.count, n: n, seed: seed64)) }
            trainSource = try ImageBatchSource(dataset: train, processor: processor, augmentation: aug, seed: seed64)
            evalSource = try val.map { try ImageBatchSource(dataset: $0, processor: processor, augmentation: .none, seed: 0) }
            numTrain = train.count; numEval = val?.count; datasetName = trainDir!
        }
        if evalSource == nil {
            if args.evalStrategy != .no { args.evalStrategy = .no }
            if args.loadBestModelAtEnd { throw ValidationError("--load-best-model-at-end needs validation data") }
        }
        do { try args.validate() } catch { throw ValidationError("\(error)") }

        let trainer = try Trainer(model: classifier, args: args, trainSource: trainSource, evalSource: evalSource, shuffle: !noShuffle)
        trainer.preprocessorConfig = processor.config
        trainer.preprocessorData = try processorFile.map { try Data(contentsOf: $0) }
        applyTrainPoolLimit()
        reporter.start("training \(model ?? config!) on \(numTrain) images\(numEval.map { ", validating on \($0)" } ?? ""): \(trainer.totalSteps) optimizer steps of \(gradientAccumulationSteps) × \(perDeviceTrainBatchSize) images, \(dtype), \(engine.threads) threads")

        let stop = StopSignal()
        var hooks = TrainerHooks()
        hooks.onStep = { reporter.step($0) }
        hooks.onLog = { reporter.log($0) }
        hooks.onEvaluationProgress = { reporter.evaluating($0, $1) }
        hooks.onSave = { reporter.saved($0) }
        hooks.shouldStop = { stop.requested != nil }
        let outcome: TrainOutcome
        do {
            outcome = try trainer.run(resumeFrom: resume, hooks: hooks)
        } catch let e as TrainingError {
            guard case let .nonFinite(_, _, _, restored) = e else { throw e }
            try trainer.saveModel()
            reporter.finish()
            warn("error: \(e.description); saved that model (after \(restored) steps) to \(out.path)", prefix: false)
            throw ExitCode.failure
        }
        if case let .interrupted(step, checkpoint) = outcome {
            reporter.finish()
            let signal = stop.requested ?? SIGINT
            warn("stopped by \(signal == SIGTERM ? "SIGTERM" : "SIGINT") after step \(step); checkpoint \(checkpoint.path) written. Continue with the same command and --resume-from-checkpoint \(checkpoint.path)", prefix: false)
            throw ExitCode(128 + signal)
        }
        stop.disarm()
        try trainer.saveModel()
        var evalMetrics: [String: Double]?
        if evalSource != nil { evalMetrics = try trainer.evaluate(hooks: hooks) }
        try trainer.saveModel()
        let summary = trainer.state.logHistory.last { $0.values["train_runtime"] != nil }?.values ?? [:]
        try TrainingReport.writeResults(train: summary, eval: evalMetrics, epoch: trainer.state.epoch, to: out)
        try Data(TrainingReport.curvesSVG(trainer.state, title: "\(out.lastPathComponent): training curves").utf8)
            .write(to: out.appendingPathComponent("training_curves.svg"), options: .atomic)
        let card = TrainingReport.modelCard(
            name: out.lastPathComponent, baseModel: baseName, dataset: datasetName, labels: labels, numTrain: numTrain, numEval: numEval,
            args: args, augmentation: describe(aug), command: commandLine(), state: trainer.state, train: summary, eval: evalMetrics,
            curvesFile: "training_curves.svg")
        try Data(card.utf8).write(to: out.appendingPathComponent("README.md"), options: .atomic)
        reporter.done(out, trainer: trainer, eval: evalMetrics)
    }

    /// `--resume-from-checkpoint`: a folder, or `last` for the newest checkpoint in `out`.
    func resumeCheckpoint(_ out: URL) throws -> URL? {
        guard let r = resumeFromCheckpoint else { return nil }
        if r == "last" || r.isEmpty {
            guard let last = Trainer.checkpoints(in: out).last else {
                throw ValidationError("--resume-from-checkpoint: \(out.path) holds no checkpoint-<step> folder")
            }
            return last.url
        }
        return URL(fileURLWithPath: r)
    }

    /// The folder of `--config` (a config.json or the folder holding one).
    func configFolder(_ path: String) -> URL {
        let url = URL(fileURLWithPath: path)
        return url.lastPathComponent == "config.json" ? url.deletingLastPathComponent() : url
    }

    /// The image processor's settings and the file they came from (copied into the output as is).
    func processorConfig() throws -> (PreprocessorConfig, URL?) {
        var candidates: [URL] = []
        if let p = imageProcessor {
            var url = URL(fileURLWithPath: p)
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue { url.appendPathComponent("preprocessor_config.json") }
            return (try PreprocessorConfig.load(contentsOf: url), url)
        }
        if let model, CvtConfig.preset(named: model) == nil || FileManager.default.fileExists(atPath: model) {
            candidates.append(CheckpointFolder(try ModelResolver.resolve(model)).preprocessorURL)
        }
        if let config { candidates.append(configFolder(config).appendingPathComponent("preprocessor_config.json")) }
        for url in candidates where FileManager.default.fileExists(atPath: url.path) {
            return (try PreprocessorConfig.load(contentsOf: url), url)
        }
        return (.cvt13Default, nil)
    }

    /// An image or IDX folder, checked image by image before training.
    func loadImages(_ url: URL, split: String, labels: [String]?, model: CvtConfig, reporter: TrainingReporter) throws -> LabeledImageDataset {
        if IDXTrainingDataset.isIDXFolder(url) {
            let names = labels ?? labelNames.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
            // Without names, the model's labels when it has as many classes as the data.
            return try IDXTrainingDataset(url: url, split: split, labelNames: names) { n in
                model.numLabels == n ? (0..<n).map { model.id2label[$0] ?? "\($0)" } : nil
            }
        }
        var data = try labels.map { try ImageFolderTrainingDataset(url: url, labelNames: $0) } ?? ImageFolderTrainingDataset(url: url)
        reporter.start("checking \(data.count) images in \(url.path)")
        let bad = data.findBadImages()
        if !bad.isEmpty {
            let list = bad.prefix(10).map { "  \($0)" }.joined(separator: "\n") + (bad.count > 10 ? "\n  … and \(bad.count - 10) more" : "")
            guard skipBadImages else {
                throw ValidationError("\(bad.count) of \(data.count) files in \(url.path) are not usable images (pass --skip-bad-images to leave them out):\n\(list)")
            }
            warn("skipping \(bad.count) of \(data.count) files in \(url.path) that are not usable images:\n\(list)")
            data.remove(Set(bad.map(\.index)))
            reporter.skipped(bad.count, url.path)
        }
        return data
    }

    func describe(_ a: Augmentation) -> String {
        switch a {
        case .none: return "none (training images preprocessed as evaluation images)"
        case let .randomResizedCrop(scale, ratio, flip):
            return "RandomResizedCrop(scale \(scale.lowerBound)–\(scale.upperBound), ratio \(String(format: "%.3g", ratio.lowerBound))–\(String(format: "%.3g", ratio.upperBound)))\(flip ? " + RandomHorizontalFlip" : "") + normalize"
        case let .padCrop(p, flip): return "random crop of the image zero-padded by \(p) px\(flip ? " + RandomHorizontalFlip" : "") + normalize"
        }
    }

    func commandLine() -> String {
        (["cvt"] + CommandLine.arguments.dropFirst()).map { a in
            a.contains(" ") || a.isEmpty ? "'\(a)'" : a
        }.joined(separator: " ")
    }
}

func warn(_ message: String, prefix: Bool = true) {
    FileHandle.standardError.write(Data(((prefix ? "warning: " : "") + message + "\n").utf8))
}

/// SIGINT / SIGTERM during training: the first asks the run to stop at a checkpoint, a second
/// one ends the process at once (checkpoints are written atomically, so nothing half-written stays).
/// Its state is behind `lock` (the handler runs on a dispatch queue).
final class StopSignal: @unchecked Sendable {
    private let lock = NSLock()
    private var signal: Int32?
    private var sources: [DispatchSourceSignal] = []

    init() {
        for s in [SIGINT, SIGTERM] {
            Foundation.signal(s, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: s, queue: .global())
            src.setEventHandler { [weak self] in self?.received(s) }
            src.resume()
            sources.append(src)
        }
    }

    private func received(_ s: Int32) {
        lock.lock()
        let again = signal != nil
        if !again { signal = s }
        lock.unlock()
        if again { exit(128 + s) }
        FileHandle.standardError.write(Data("\n\(s == SIGTERM ? "SIGTERM" : "SIGINT"): stopping after this step and writing a checkpoint (again to quit now)\n".utf8))
    }

    var requested: Int32? { lock.lock(); defer { lock.unlock() }; return signal }

    /// Back to the default actions (after the last step: the run is saving its results).
    func disarm() {
        for s in sources { s.cancel() }
        Foundation.signal(SIGINT, SIG_DFL)
        Foundation.signal(SIGTERM, SIG_DFL)
    }
}

/// Progress of `cvt train`: a bar on a terminal, plain lines otherwise, JSON lines with --json.
/// Called only from the training thread (the Trainer's hooks), one call at a time.
final class TrainingReporter: @unchecked Sendable {
    let json: Bool
    let terminal = isatty(STDERR_FILENO) == 1
    private var barOpen = false
    private var lastDraw = 0.0
    private var lastPlain = -1.0

    init(json: Bool) { self.json = json }

    private func emit(_ object: [String: Any]) {
        guard let d = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        print(String(decoding: d, as: UTF8.self))
        fflush(nil)
    }

    private func clearBar() {
        if barOpen { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)); barOpen = false }
    }

    func start(_ message: String) {
        if json { emit(["event": "info", "message": message]) } else { clearBar(); print(message); fflush(nil) }
    }

    func skipped(_ n: Int, _ path: String) {
        if json { emit(["event": "skipped_images", "count": n, "path": path]) }
    }

    static func duration(_ s: Double) -> String {
        guard s.isFinite else { return "?" }
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }

    func step(_ r: StepReport) {
        let e = r.entry
        if json {
            emit(["event": "step", "step": e.step, "max_steps": r.totalSteps, "epoch": e.epoch, "loss": e.loss, "learning_rate": e.learningRate,
                  "grad_norm": e.gradNorm, "images_per_second": r.imagesPerSecond, "data_wait_seconds": r.dataWaitSeconds,
                  "elapsed_seconds": r.elapsedSeconds, "eta_seconds": r.remainingSeconds])
            return
        }
        let line = String(format: "step %d/%d  epoch %.2f  loss %.4f  lr %.3g  %.0f img/s  elapsed %@  ETA %@",
                          e.step, r.totalSteps, e.epoch, e.loss, e.learningRate, r.imagesPerSecond,
                          Self.duration(r.elapsedSeconds), Self.duration(r.remainingSeconds))
        if terminal {
            guard r.elapsedSeconds - lastDraw >= 0.2 || e.step == r.totalSteps else { return }
            lastDraw = r.elapsedSeconds
            let width = 24, filled = Int(Double(width) * Double(e.step) / Double(max(r.totalSteps, 1)))
            let bar = String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled)
            FileHandle.standardError.write(Data("\r\u{1B}[K[\(bar)] \(line)".utf8))
            barOpen = true
        } else if r.elapsedSeconds - lastPlain >= 10 || e.step == r.totalSteps {
            lastPlain = r.elapsedSeconds
            print(line)
            fflush(nil)
        }
    }

    func log(_ r: TrainerLogRecord) {
        if json {
            var o: [String: Any] = r.values
            o["event"] = r.values["eval_loss"] != nil ? "evaluation" : "log"
            o["epoch"] = r.epoch; o["step"] = r.step
            emit(o)
            return
        }
        clearBar()
        // As Trainer prints its logs: a Python dict per record.
        let order = ["loss", "grad_norm", "learning_rate", "eval_loss", "eval_accuracy"]
        let keys = order.filter { r.values[$0] != nil } + r.values.keys.filter { !order.contains($0) }.sorted()
        let body = (keys.map { "'\($0)': \(String(format: "%.6g", r.values[$0]!))" } + ["'epoch': \(String(format: "%.4g", r.epoch))"]).joined(separator: ", ")
        print("{\(body)}")
        fflush(nil)
    }

    func evaluating(_ done: Int, _ total: Int) {
        guard terminal, !json else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[Kevaluating \(done)/\(total)".utf8))
        barOpen = true
    }

    func saved(_ url: URL) {
        if json { emit(["event": "checkpoint", "path": url.path]) } else { clearBar(); print("saved \(url.path)"); fflush(nil) }
    }

    func finish() { clearBar() }

    func done(_ out: URL, trainer: Trainer, eval: [String: Double]?) {
        clearBar()
        if json {
            emit(["event": "done", "output_dir": out.path, "global_step": trainer.globalStep] as [String: Any])
        } else {
            let acc = eval?["eval_accuracy"].map { String(format: ", validation accuracy %.2f%%", $0 * 100) } ?? ""
            print("saved to \(out.path) after \(trainer.globalStep) steps\(acc)")
        }
    }
}

/// `CVT_TRAIN_POOL_MB`, when set: the most the buffer pool keeps between training steps (after a
/// `Trainer` has raised it), for `cvt train` and `cvt bench --mode train` alike.
func applyTrainPoolLimit() {
    if let mb = ProcessInfo.processInfo.environment["CVT_TRAIN_POOL_MB"].flatMap({ Int($0) }), mb >= 0 {
        BufferPool.shared.capacityBytes = mb << 20
    }
}
