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
