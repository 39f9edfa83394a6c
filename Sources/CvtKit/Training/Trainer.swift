import Foundation

/// A training run that cannot go on, with what the user needs to act on it.
public enum TrainingError: Error, CustomStringConvertible, LocalizedError {
    /// The loss, gradient norm or update of optimizer step `step` (1-based) is not finite. The
    /// model holds the weights after `restoredStep` steps (the last whose loss was finite).
    case nonFinite(step: Int, what: String, value: Double?, restoredStep: Int)
    case invalidArguments(String)
    case outputNotWritable(path: String, reason: String)

    /// What happened and what to do about it.
    public var description: String {
        switch self {
        case let .nonFinite(step, what, value, restored):
            let got = value.map { " (\($0))" } ?? ""
            return "the \(what) is not finite\(got) at optimizer step \(step); training stopped, the model keeps the weights after step \(restored), the last with a finite loss (lower the learning rate or check the data)"
        case let .invalidArguments(m): return m
        case let .outputNotWritable(path, reason): return "\(path): the output folder cannot be written (\(reason))"
        }
    }
    /// The same text as `description`, for `LocalizedError`.
    public var errorDescription: String? { description }
}

/// One optimizer step as transformers' `Trainer` logs it (`log_history` with `logging_steps=1`).
public struct TrainingLogEntry: Codable, Sendable, Equatable {
    /// Sum of the micro-batch losses of the step (quirk: see `Trainer.step`).
    public var loss: Double
    /// Global 2-norm of the gradients before clipping.
    public var gradNorm: Double
    /// The learning rate this step used.
    public var learningRate: Double
    /// `epoch`: fractional epochs completed after this step.
    public var epoch: Double
    /// `step`: the optimizer step number, from 1.
    public var step: Int

    enum CodingKeys: String, CodingKey {
        case loss, epoch, step
        case gradNorm = "grad_norm"
        case learningRate = "learning_rate"
    }
}

/// transformers' `Trainer` for CvT: batches of `per_device_train_batch_size` (in order, or
/// shuffled per epoch with our seeded generator), `gradient_accumulation_steps` micro-batches per
/// optimizer step, clipping, AdamW with Trainer's decay groups, the learning rate schedule,
/// BatchNorm in training mode, dropout and drop path on; with `run`, also logging every
/// `logging_steps`, evaluation, checkpoints, resuming and stopping on request.
/// Not for use from several tasks at once: one run at a time (the async `run` hands it to a
/// thread of its own for the run's duration).
public final class Trainer: @unchecked Sendable {
    /// The model being trained, in place.
    public let model: CvtForImageClassification
    /// The training settings (validated).
    public let args: TrainingArguments
    /// The optimizer, built as transformers' `Trainer.create_optimizer` builds it from `args`.
    public let optimizer: AdamW
    /// The learning-rate schedule over `totalSteps`.
    public let scheduler: LRScheduler
    /// The training batches.
    public let trainData: TrainingBatchSource
    /// The evaluation set (`run` evaluates on it as `eval_strategy` says).
    public var evalData: TrainingBatchSource?
    /// Written next to the weights in every checkpoint and the output folder.
    public var preprocessorConfig: PreprocessorConfig?
    /// The processor file as it was read (kept byte for byte); else `preprocessorConfig` is encoded.
    public var preprocessorData: Data?
    /// Runs after a checkpoint's files are written, before the folder is renamed into place (tests
    /// make a write fail there).
    var beforeCheckpointRename: ((URL) throws -> Void)?
    /// Batches in data order (`--no-shuffle`), else a seeded permutation per epoch.
    public var shuffle: Bool
    /// Dropout, attention dropout and drop path as configured (off: deterministic steps).
    public var stochastic = true
    /// Optimizer steps taken so far (transformers' `global_step`).
    public internal(set) var globalStep = 0
    /// One entry per optimizer step (what `logging_steps=1` would log).
    public internal(set) var logHistory: [TrainingLogEntry] = []
    /// transformers' `TrainerState`: what `trainer_state.json` holds.
    public internal(set) var state: TrainerState
    /// Optimizer steps the run takes (`max_steps`, or epochs × steps per epoch).
    public let totalSteps: Int
    /// Batches of `per_device_train_batch_size` per pass over the data.
    public let batchesPerEpoch: Int
    /// Optimizer steps per pass over the data.
    public let updateStepsPerEpoch: Int

    /// A trainer on preprocessed tensors (`TensorBatchSource`); see `init(model:args:trainSource:evalSource:shuffle:)`.
    public convenience init(model: CvtForImageClassification, args: TrainingArguments, trainData: TrainingTensors, shuffle: Bool = true) throws {
        try self.init(model: model, args: args, trainSource: TensorBatchSource(trainData), shuffle: shuffle)
    }

    /// A trainer of `model` on `trainSource`, evaluating on `evalSource` when given; `shuffle` false keeps data order.
    /// - Throws: `TrainingArgumentsError` for invalid settings, the source's error when the data do not fit
    ///   the model, `TrainingError.invalidArguments` when the run would have no optimizer step,
    ///   `OptimizerError` when AdamW's settings are out of range.
    public init(model: CvtForImageClassification, args: TrainingArguments, trainSource: TrainingBatchSource,
                evalSource: TrainingBatchSource? = nil, shuffle: Bool = true) throws {
        try args.validate()
        try trainSource.validate(for: model.config)
        try evalSource?.validate(for: model.config)
        self.model = model; self.args = args; self.trainData = trainSource; self.evalData = evalSource; self.shuffle = shuffle
        let length = try args.trainingLength(numExamples: trainSource.count)
        totalSteps = length.maxSteps; batchesPerEpoch = length.batchesPerEpoch; updateStepsPerEpoch = length.updateStepsPerEpoch
        guard totalSteps > 0 else { throw TrainingError.invalidArguments("the run has no optimizer steps (max_steps \(args.maxSteps), num_train_epochs \(args.numTrainEpochs))") }
        optimizer = try AdamW(model: model, arguments: args)
        scheduler = LRScheduler(arguments: args, numTrainingSteps: totalSteps)
        let steps = args.computeSteps(maxSteps: totalSteps)
        state = TrainerState(maxSteps: totalSteps, numTrainEpochs: length.numTrainEpochs, loggingSteps: steps.logging,
                             evalSteps: steps.eval, saveSteps: steps.save, trainBatchSize: args.perDeviceTrainBatchSize,
                             numTrainExamples: trainSource.count)
        // Activations of a step are freed together and needed again next step: keep them pooled
        // (fresh mappings cost a page fault per 4 KiB, every step). This holds up to a step's
        // activations for reuse; a smaller `BufferPool.shared.capacityBytes` trades speed for memory.
        BufferPool.shared.capacityBytes = max(BufferPool.shared.capacityBytes, 64 << 30)
        // ... but no more than the step's live activations need at their peak.
        BufferPool.shared.boundsIdleAtPeak = true
    }

    /// Image indices of `epoch`, in batches.
    func batches(epoch: Int) -> [[Int]] {
        var order = Array(0..<trainData.count)
        if shuffle {
            var rng = SplitMix64(seed: UInt64(truncatingIfNeeded: args.seed) &+ UInt64(epoch) &* 0x9E37_79B9)
            order.shuffle(using: &rng)
        }
        let b = args.perDeviceTrainBatchSize
        return (0..<batchesPerEpoch).map { Array(order[$0 * b..<min($0 * b + b, order.count)]) }
    }

    /// Runs to `totalSteps`, calling `onLog` after every optimizer step (no evaluation or saving;
    /// see `run` for those).
    public func train(onLog: (TrainingLogEntry) throws -> Void = { _ in }) throws {
        // The hooks run on this thread, inside `loop`, so what they share needs no lock.
        final class Failure: @unchecked Sendable { var error: Error? }
        let failure = Failure()
        try withoutActuallyEscaping(onLog) { onLog in
            nonisolated(unsafe) let onLog = onLog
            var hooks = TrainerHooks()
            hooks.onStep = { report in
                guard failure.error == nil else { return }
                do { try onLog(report.entry) } catch { failure.error = error }
            }
            hooks.shouldStop = { failure.error != nil }
            _ = try loop(resumeFrom: nil, hooks: hooks, manage: false)
        }
        if let error = failure.error { throw error }
    }

    /// One optimizer step over `microBatches`: forward and backward of each (gradients add up),
    /// clipping, AdamW at the scheduled learning rate. quirk: transformers does not divide the
    /// loss by the accumulation steps for CvT (its forward takes `**kwargs`, so Trainer counts it
    /// as scaling the loss itself): the step's gradient is the SUM of the micro-batch gradients,
    /// and the logged loss the sum of their losses. With label smoothing (`LabelSmoother`) the
    /// sum is divided by the labels of the whole step instead.
    @discardableResult
    public func step(_ microBatches: [(Tensor, Labels)]) throws -> TrainingLogEntry {
        // One call on the model's engine: its threads and the model's precision for every kernel
        // of the step (the optimizer's too).
        try model.exclusively { try runStep(microBatches) }
    }

    private func runStep(_ microBatches: [(Tensor, Labels)]) throws -> TrainingLogEntry {
        let stepNumber = globalStep + 1
        let saved = batchNormState()
        try zeroGradients(model)
        var loss = 0.0
        let smoother = labelSmoother
        let labelCount = microBatches.reduce(0) { n, mb in
            if case .classIndices(let v) = mb.1 { return n + v.filter { $0 != -100 }.count }
            return n + mb.0.shape[0]
        }
        for (j, (x, y)) in microBatches.enumerated() {
            let context = TrainingContext(engine: model.engine, stochastic: stochastic,
                                          seed: UInt64(truncatingIfNeeded: args.seed) &* 1_000_003 &+ UInt64(globalStep * 64 + j))
            var lossFunction: ((Tensor) throws -> (loss: Float, gradient: Tensor))?
            if let smoother {
                guard case .classIndices(let idx) = y else {
                    throw TrainingError.invalidArguments("label smoothing needs integer class labels")
                }
                lossFunction = { logits in
                    try smoother(logits: logits, labels: idx, numItemsInBatch: labelCount)
                }
            }
            let out = try model.forwardBackward(x, labels: y, context: context, lossFunction: lossFunction)
            guard out.loss.isFinite else { throw rollBack(saved, step: stepNumber, what: "loss", value: Double(out.loss)) }
            loss += Double(out.loss)
        }
        let gradNorm = try clipGradNorm(model, maxNorm: args.maxGradNorm > 0 ? args.maxGradNorm : .infinity)
        guard gradNorm.isFinite else { throw rollBack(saved, step: stepNumber, what: "gradient norm", value: gradNorm) }
        let lr = scheduler.learningRate(atStep: globalStep)
        // An update can overflow (a huge learning rate): keep the weights to fall back to.
        snapshot.mode = .save
        try model.visitParameters(snapshot, prefix: "")
        try optimizer.step(model, learningRate: lr)
        if let bad = optimizer.nonFiniteParameter {
            snapshot.mode = .restore
            try model.visitParameters(snapshot, prefix: "")
            model.parametersDidChange()
            restoreBatchNormState(saved)
            throw TrainingError.nonFinite(step: stepNumber, what: "AdamW update of \(bad)", value: nil, restoredStep: stepNumber - 1)
        }
        globalStep += 1
        let entry = TrainingLogEntry(loss: loss, gradNorm: gradNorm, learningRate: lr, epoch: 0, step: globalStep)
        logHistory.append(entry)
        return entry
    }

    /// Trainer's label smoother, when `label_smoothing_factor` is set (not for multi-label heads,
    /// whose BCE loss transformers leaves as it is).
    var labelSmoother: LabelSmoother? {
        args.labelSmoothingFactor != 0 && model.config.problemType != "multi_label_classification"
            ? LabelSmoother(epsilon: args.labelSmoothingFactor) : nil
    }

    let snapshot = ParameterSnapshot()

    /// Undoes a step whose loss or gradient norm is not finite: the weights that produced it are
    /// the previous update's result, so the weights from before that update (the last ones with a
    /// finite loss) come back, with the BatchNorm statistics of before this step.
    func rollBack(_ bn: [(Tensor, Tensor, Int)], step: Int, what: String, value: Double) -> Error {
        restoreBatchNormState(bn)
        guard globalStep > 0, snapshot.holdsCopies else {
            return TrainingError.nonFinite(step: step, what: what, value: value, restoredStep: globalStep)
        }
        snapshot.mode = .restore
        do { try model.visitParameters(snapshot, prefix: "") } catch { return error }
        model.parametersDidChange()
        globalStep -= 1
        logHistory.removeLast()
        return TrainingError.nonFinite(step: step, what: what, value: value, restoredStep: globalStep)
    }

    /// BatchNorm running statistics and counters, to undo a failed step's forward passes.
    func batchNormState() -> [(Tensor, Tensor, Int)] {
        model.namedBatchNorms.map { ($0.module.runningMean, $0.module.runningVar, $0.module.numBatchesTracked) }
    }

    func restoreBatchNormState(_ s: [(Tensor, Tensor, Int)]) {
        for ((_, bn), (m, v, n)) in zip(model.namedBatchNorms, s) {
            bn.runningMean = m; bn.runningVar = v; bn.numBatchesTracked = n
        }
        model.parametersDidChange()
    }

    /// Fails early, before any step, if `url` cannot hold the results.
    public static func checkWritable(_ url: URL) throws {
        do {
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
            let probe = url.appendingPathComponent(".cvt-write-check-\(getpid())")
            try Data().write(to: probe)
            try FileManager.default.removeItem(at: probe)
        } catch {
            throw TrainingError.outputNotWritable(path: url.path, reason: (error as NSError).localizedDescription)
        }
    }
}

/// Copies of the trainable parameters in storage of their own (allocated once), to undo an update
/// that left a parameter non-finite; `check` finds such a parameter.
final class ParameterSnapshot: ParameterVisitor {
    enum Mode { case save, restore }
    var mode = Mode.save
    private var copies: [String: Tensor] = [:]
    /// Whether a `save` happened (a restore then gives those weights back).
    var holdsCopies: Bool { !copies.isEmpty }

    func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {}
    func visit(_ key: String, _ tensor: inout Tensor, gradient: inout Tensor, kind: ParameterKind) throws {
        switch mode {
        case .save:
            if copies[key]?.shape != tensor.shape { copies[key] = Tensor(zeros: tensor.shape) }
            _ = copies[key]!.withUnsafeMutableBufferPointer { dst in
                tensor.withUnsafeBufferPointer { Kernels.copy($0.baseAddress!, dst.baseAddress!, count: dst.count) }
            }
        case .restore:
            guard let copy = copies[key] else { return }
            _ = tensor.withUnsafeMutableBufferPointer { dst in copy.withUnsafeBufferPointer { dst.update(from: $0) } }
        }
    }
}
