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
        try checkInput(classifier.config)
        var rng = SplitMix64(seed: 1)
        let pixels = Tensor(shape: [batchSize, classifier.config.numChannels, imageSize, imageSize]) { _ in rng.nextGaussian() }
        let labels = (0..<batchSize).map { _ in Int(rng.next() % UInt64(classifier.config.numLabels)) }
        var args = TrainingArguments()
        args.maxSteps = iterations + 2
        args.perDeviceTrainBatchSize = batchSize
        let trainer = try Trainer(model: classifier, args: args, trainData: TrainingTensors(pixelValues: pixels, labels: .classIndices(labels)), shuffle: false)
        applyTrainPoolLimit()
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
                "mode": "train", "model": name, "batch_size": batchSize, "image_size": imageSize, "dtype": dtype.rawValue,
                "threads": engine.threads, "iterations": iterations, "median_ms": median, "min_ms": times.first ?? 0,
                "max_ms": times.last ?? 0, "images_per_second": ips, "peak_rss_mb": rss, "thread_team": engine.threadTeam,
                "omp_wait_policy": Entry.openMPWaitPolicy,
                "matmul_kernels": engine.precision == .float32 ? "float32" : engine.emulatesBFloat16 ? "bfloat16-emulated" : "bfloat16",
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(String(format: "%@ training step, batch %d, %dx%d, %@, %d threads: median %.1f ms/step (min %.1f, max %.1f), %.1f images/s, peak RSS %.0f MB",
                         name, batchSize, imageSize, imageSize, dtype.rawValue, engine.threads, median, times.first ?? 0, times.last ?? 0, ips, rss))
        }
    }
}
