import ArgumentParser
import CvtKit
import Foundation

/// `--model` for training: a checkpoint folder or Hub id, or a preset name (random init, seeded).
func trainableModel(_ reference: String, engine: Engine, seed: UInt64) throws -> CvtForImageClassification {
    if !FileManager.default.fileExists(atPath: reference), let config = CvtConfig.preset(named: reference) {
        return try .randomlyInitialized(config: config, seed: seed, engine: engine)
    }
    return try CvtForImageClassification(pretrained: reference, engine: engine, progress: TerminalProgressBar()?.callback)
}

/// The source checkpoint's `preprocessor_config.json`, next to the trained weights (so the output
/// classifies images as the source did); nothing for a preset.
func copyPreprocessorConfig(from reference: String, to out: URL) throws {
    guard CvtConfig.preset(named: reference) == nil || FileManager.default.fileExists(atPath: reference) else { return }
    let source = CheckpointFolder(try ModelResolver.resolve(reference)).preprocessorURL
    guard FileManager.default.fileExists(atPath: source.path) else { return }
    let data = try Data(contentsOf: source)
    try data.write(to: out.appendingPathComponent("preprocessor_config.json"), options: .atomic)
}

struct Gradients: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the loss and every parameter's gradient for one batch (training-mode BatchNorm, no dropout).",
        discussion: """
        IN holds float32 `pixel_values` [B,C,H,W] and `labels` (int64 [B] class indices, float32 [B] for \
        regression or [B,num_labels] for multi-label; the loss is chosen as transformers does). BatchNorm \
        uses the batch statistics as in PyTorch's train() mode; dropout and drop path are off, so the \
        result is deterministic. OUT holds `loss` and `grad.<name>` for every trainable parameter, under \
        transformers' named_parameters() names.
        """)

    @Option(help: "Checkpoint folder, Hub id, or preset (random init).") var model: String
    @Option(help: "Input safetensors file with pixel_values and labels.") var input: String
    @Option(help: "Output safetensors file.") var output: String
    @Option(help: "Seed of a preset's random initialization.") var seed: UInt64 = 42
    @OptionGroup var threadOptions: ThreadOptions

    func run() throws {
        let engine = try threadOptions.engine()
        let classifier = try trainableModel(model, engine: engine, seed: seed)
        let data = try TrainingTensors(url: URL(fileURLWithPath: input))
        try data.validate(for: classifier.config, source: input)
        let (loss, grads) = try classifier.gradients(pixelValues: data.pixelValues, labels: data.labels)
        guard loss.isFinite else { throw CheckpointError(path: input, "the loss is \(loss) for this batch; no gradients written") }
        var writer = SafetensorsWriter(metadata: ["format": "pt"])
        try writer.add("loss", floats: [loss], shape: [])
        for (name, g) in grads { try writer.add("grad.\(name)", g) }
        try writer.write(to: URL(fileURLWithPath: output))
    }
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune (or train from a preset's random init) a CvT classifier, as transformers' Trainer does.",
        discussion: """
        --train-data holds preprocessed float32 `pixel_values` [N,C,H,W] and `labels` (int64 class indices, \
        or float32 targets for regression / multi-label), used as they are. Each optimizer step runs \
        --gradient-accumulation-steps batches of --per-device-train-batch-size images, clips the global \
        gradient norm, and applies AdamW with transformers' defaults and weight-decay groups at the \
        scheduled learning rate. OUT receives config.json + model.safetensors (what save_pretrained \
        writes; loads in transformers), the source's preprocessor_config.json, and trainer_state.json with \
        one log entry per step. A step whose loss, gradient norm or update is not finite stops the run with \
        an error naming it; the last weights with a finite loss are saved.
        """)

    @Option(help: "Checkpoint folder, Hub id, or preset (\(CvtConfig.presetNames.joined(separator: ", ")): random init).") var model: String
    @Option(help: "Training data: safetensors file with pixel_values and labels.") var trainData: String
    @Option(help: "Output folder.") var outputDir: String
    @Option(help: "Optimizer steps (overrides --num-train-epochs when > 0).") var maxSteps: Int = -1
    @Option(help: "Epochs over the training data.") var numTrainEpochs: Double = 3
    @Option(help: "Images per micro-batch.") var perDeviceTrainBatchSize: Int = 8
    @Option(help: "Peak learning rate.") var learningRate: Double = 5e-5
    @Option(help: "AdamW weight decay (not applied to biases and LayerNorm parameters, as Trainer).") var weightDecay: Double = 0
    @Option(help: "AdamW beta1.") var adamBeta1: Double = 0.9
    @Option(help: "AdamW beta2.") var adamBeta2: Double = 0.999
    @Option(help: "AdamW epsilon.") var adamEpsilon: Double = 1e-8
    @Option(help: "linear, cosine, constant or constant_with_warmup.") var lrSchedulerType = "linear"
    @Option(help: "Warm-up steps (a value below 1 is a ratio of the total steps, as transformers 5 reads it).") var warmupSteps: Double = 0
    @Option(help: "Warm-up as a ratio of the total steps (transformers 4's warmup_ratio).") var warmupRatio: Double?
    @Option(help: "Clip the global gradient norm to this (0: no clipping).") var maxGradNorm: Double = 1
    @Option(help: "Micro-batches per optimizer step.") var gradientAccumulationSteps: Int = 1
    @Option(help: "Label smoothing of the cross-entropy (transformers' LabelSmoother).") var labelSmoothingFactor: Double = 0
    @Option(help: "Seed for the data order, dropout and a preset's random init.") var seed: Int = 42
    @Flag(help: "Take batches in data order instead of a seeded shuffle per epoch.") var noShuffle = false
    @Flag(help: "No data augmentation (safetensors data are always used as they are).") var noAugment = false
    @Option(help: "float32, or bfloat16: bf16 matmuls and convolutions with float32 weights and optimizer state (as PyTorch's CPU autocast).")
    var dtype = "float32"
    @OptionGroup var threadOptions: ThreadOptions

    func run() throws {
        let out = URL(fileURLWithPath: outputDir)
        var args = TrainingArguments()
        args.outputDir = outputDir
        args.maxSteps = maxSteps; args.numTrainEpochs = numTrainEpochs
        args.perDeviceTrainBatchSize = perDeviceTrainBatchSize; args.learningRate = learningRate
        args.weightDecay = weightDecay; args.adamBeta1 = adamBeta1; args.adamBeta2 = adamBeta2; args.adamEpsilon = adamEpsilon
        args.lrSchedulerType = try SchedulerType(name: lrSchedulerType); args.warmupSteps = warmupRatio ?? warmupSteps
        args.maxGradNorm = maxGradNorm; args.gradientAccumulationSteps = gradientAccumulationSteps
        args.labelSmoothingFactor = labelSmoothingFactor; args.seed = seed
        if let r = warmupRatio, !(r >= 0 && r < 1) { throw ValidationError("--warmup-ratio must be in [0, 1), got \(r)") }
        do { try args.validate() } catch { throw ValidationError("\(error)") }
        guard dtype == "float32" || dtype == "bfloat16" else { throw ValidationError("--dtype must be float32 or bfloat16, got \(dtype)") }
        try Trainer.checkWritable(out)
        let engine = try threadOptions.engine()
        engine.precision = dtype == "bfloat16" ? .bfloat16 : .float32
        if engine.emulatesBFloat16 { FileHandle.standardError.write(Data("warning: \(InferenceDType.bfloat16EmulationNote)\n".utf8)) }
        let classifier = try trainableModel(model, engine: engine, seed: UInt64(truncatingIfNeeded: seed))
        let data = try TrainingTensors(url: URL(fileURLWithPath: trainData))
        try data.validate(for: classifier.config, source: trainData)
        let trainer = try Trainer(model: classifier, args: args, trainData: data, shuffle: !noShuffle)
        if let mb = ProcessInfo.processInfo.environment["CVT_TRAIN_POOL_MB"].flatMap({ Int($0) }), mb >= 0 {
            BufferPool.shared.capacityBytes = mb << 20
        }
        print("training \(model) on \(data.count) examples: \(trainer.totalSteps) optimizer steps of \(gradientAccumulationSteps) × \(perDeviceTrainBatchSize) images, \(dtype), \(engine.threads) threads")
        let start = Date()
        do {
            try trainer.train { e in
                print(String(format: "{'loss': %.6g, 'grad_norm': %.6g, 'learning_rate': %.6g, 'epoch': %.4g, 'step': %d}",
                             e.loss, e.gradNorm, e.learningRate, e.epoch, e.step))
            }
        } catch let e as TrainingError {
            guard case let .nonFinite(_, _, _, restored) = e else { throw e }
            try trainer.save(to: out)
            try copyPreprocessorConfig(from: model, to: out)
            FileHandle.standardError.write(Data("error: \(e.description); saved that model (after \(restored) steps) to \(out.path)\n".utf8))
            throw ExitCode.failure
        }
        try trainer.save(to: out)
        try copyPreprocessorConfig(from: model, to: out)
        print(String(format: "saved to %@ after %d steps (%.1f s)", out.path, trainer.globalStep, Date().timeIntervalSince(start)))
    }
}

extension Bench {
    /// `--mode train`: one optimizer step per iteration (forward in training mode, cross-entropy,
    /// backward, clipping to 1.0, AdamW), on random pixels and labels.
    func runTrain(_ engine: Engine, precision: ComputePrecision) throws {
        engine.precision = precision
        guard model != nil || CvtConfig.preset(named: preset) != nil else {
            throw ValidationError("unknown preset \(preset); use one of \(CvtConfig.presetNames.joined(separator: ", "))")
        }
        let classifier = try trainableModel(model ?? preset, engine: engine, seed: 0)
        guard classifier.config.numLabels > 1 else { throw ValidationError("--mode train times a classifier with at least 2 labels") }
        var rng = SplitMix64(seed: 1)
        let pixels = Tensor(shape: [batchSize, classifier.config.numChannels, imageSize, imageSize]) { _ in rng.nextGaussian() }
        let labels = (0..<batchSize).map { _ in Int(rng.next() % UInt64(classifier.config.numLabels)) }
        var args = TrainingArguments()
        args.maxSteps = iterations + 2
        args.perDeviceTrainBatchSize = batchSize
        let trainer = try Trainer(model: classifier, args: args, trainData: TrainingTensors(pixelValues: pixels, labels: .classIndices(labels)), shuffle: false)
        let batch = [(pixels, Labels.classIndices(labels))]
        for _ in 0..<2 { try trainer.step(batch) }
        engine.profile = profile
        var times: [Double] = []
        for _ in 0..<iterations {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try trainer.step(batch)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
        }
        times.sort()
        let median = times.count % 2 == 1 ? times[times.count / 2] : (times[times.count / 2 - 1] + times[times.count / 2]) / 2
        let ips = Double(batchSize) / (median / 1000)
        let rss = peakRSSMegabytes()
        let name = model ?? preset
        if profile {
            let total = times.reduce(0, +)
            for (op, ms) in engine.profileTimes.sorted(by: { $0.value > $1.value }) {
                print(String(format: "  %-12@ %8.2f ms/step (%4.1f%%)", op, ms / Double(iterations), 100 * ms / total))
            }
            print("  slowest backend calls (summed over all layers):")
            for (op, ms) in engine.profileDetail.sorted(by: { $0.value > $1.value }).prefix(30) {
                print(String(format: "    %8.2f ms/step (%4.1f%%)  %@", ms / Double(iterations), 100 * ms / total, op))
            }
        }
        if json {
            let obj: [String: Any] = [
                "mode": "train", "model": name, "batch_size": batchSize, "image_size": imageSize, "dtype": dtype,
                "threads": engine.threads, "iterations": iterations, "median_ms": median, "min_ms": times.first ?? 0,
                "max_ms": times.last ?? 0, "images_per_second": ips, "peak_rss_mb": rss, "thread_team": engine.threadTeam,
                "matmul_kernels": engine.precision == .float32 ? "float32" : engine.emulatesBFloat16 ? "bfloat16-emulated" : "bfloat16",
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(String(format: "%@ training step, batch %d, %dx%d, %@, %d threads: median %.1f ms/step (min %.1f, max %.1f), %.1f images/s, peak RSS %.0f MB",
                         name, batchSize, imageSize, imageSize, dtype, engine.threads, median, times.first ?? 0, times.last ?? 0, ips, rss))
        }
    }
}
