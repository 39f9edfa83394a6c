import Foundation

/// A training setting that cannot work, naming the field (by its transformers key) and the value.
public struct TrainingArgumentsError: Error, CustomStringConvertible, LocalizedError, Equatable {
    /// The transformers key at fault (e.g. `learning_rate`).
    public let field: String
    /// What is wrong with it, with the offending value.
    public let message: String
    /// Creates an error about key `field`.
    public init(field: String, _ message: String) { self.field = field; self.message = message }
    /// "invalid TrainingArguments: `<field>` <message>".
    public var description: String { "invalid TrainingArguments: `\(field)` \(message)" }
    /// The same text as `description`, for `LocalizedError`.
    public var errorDescription: String? { description }
}

/// transformers' `IntervalStrategy` (trainer_utils.py): when to log or evaluate.
public enum IntervalStrategy: String, Codable, Sendable, CaseIterable {
    case no, steps, epoch
}

/// transformers' `SaveStrategy` (trainer_utils.py): when to save a checkpoint.
public enum SaveStrategy: String, Codable, Sendable, CaseIterable {
    case no, steps, epoch, best
}

/// The optimizers of transformers' `OptimizerNames` this package implements. Both are
/// `torch.optim.AdamW`; "adamw_torch_fused" passes `fused=True`, which on CPU runs ATen's fused
/// kernel, whose float32 rounding differs slightly from the per-op path (see `AdamW`).
public enum OptimizerName: String, Codable, Sendable, CaseIterable {
    case adamwTorch = "adamw_torch"
    case adamwTorchFused = "adamw_torch_fused"
}

/// The subset of transformers' `TrainingArguments` (training_args.py, v5.23) that training a CvT
/// classifier on CPU reads. JSON keys and defaults are transformers'; a file may omit any field
/// (it takes the default) and unknown keys are ignored, as a `TrainingArguments.to_json_string()`
/// dump holds many fields that do not apply here.
public struct TrainingArguments: Codable, Sendable, Equatable {
    /// transformers' dataclass default is None, which `__post_init__` turns into "trainer_output".
    public var outputDir = "trainer_output"
    /// `learning_rate`: the peak learning rate of the schedule (default 5e-5).
    public var learningRate = 5e-5
    /// `weight_decay`: AdamW's decoupled weight decay for the decayed group (default 0).
    public var weightDecay = 0.0
    /// `adam_beta1`: AdamW's first-moment decay (default 0.9).
    public var adamBeta1 = 0.9
    /// `adam_beta2`: AdamW's second-moment decay (default 0.999).
    public var adamBeta2 = 0.999
    /// `adam_epsilon`: AdamW's denominator epsilon (default 1e-8).
    public var adamEpsilon = 1e-8
    /// Gradients are clipped to this total 2-norm when it is positive; 0 disables clipping.
    public var maxGradNorm = 1.0
    /// `num_train_epochs`: epochs to train when `max_steps` is not positive; a fraction trains part of the last epoch (default 3).
    public var numTrainEpochs = 3.0
    /// Positive: the number of optimizer steps, overriding `numTrainEpochs`. Negative: epochs decide.
    public var maxSteps = -1
    /// `lr_scheduler_type`: the learning-rate schedule (default `linear`).
    public var lrSchedulerType: SchedulerType = .linear
    /// transformers 5 has no `warmup_ratio`: a value ≥ 1 is a step count (truncated), a value in
    /// [0, 1) a fraction of the training steps (rounded up); see `numWarmupSteps(totalSteps:)`.
    public var warmupSteps = 0.0
    /// transformers defaults to "adamw_torch_fused" when torch ≥ 2.8 (training_args.py).
    public var optim: OptimizerName = .adamwTorchFused
    /// `per_device_train_batch_size`: images per micro-batch (default 8).
    public var perDeviceTrainBatchSize = 8
    /// `per_device_eval_batch_size`: images per evaluation batch (default 8).
    public var perDeviceEvalBatchSize = 8
    /// `gradient_accumulation_steps`: micro-batches whose gradients make one optimizer step (default 1).
    public var gradientAccumulationSteps = 1
    /// `seed`: seeds initialisation, shuffling, augmentation and dropout (default 42).
    public var seed = 42
    /// `label_smoothing_factor`: ε of `LabelSmoother`, in [0, 1]; 0 uses the model's own loss (default 0).
    public var labelSmoothingFactor = 0.0
    /// `logging_strategy`: when to log training loss and learning rate (default `steps`).
    public var loggingStrategy: IntervalStrategy = .steps
    /// Steps between logs; a value below 1 is a fraction of the training steps (`computeSteps`).
    public var loggingSteps = 500.0
    /// nil: `logging_steps` when evaluating by steps (`resolvedEvalSteps`).
    public var evalSteps: Double?
    /// `save_steps`: steps between checkpoints with save strategy `steps`; a value below 1 is a fraction of the training steps (default 500).
    public var saveSteps = 500.0
    /// `save_total_limit`: how many of the newest `checkpoint-*` folders are kept (older ones are deleted, except the best); nil or 0 keeps all.
    public var saveTotalLimit: Int?
    /// `load_best_model_at_end`: reload the best checkpoint by `metric_for_best_model` when training ends (default false).
    public var loadBestModelAtEnd = false
    /// nil: "loss" when `load_best_model_at_end` is set (`resolvedMetricForBestModel`).
    public var metricForBestModel: String?
    /// nil: derived from the metric's name (`resolvedGreaterIsBetter`).
    public var greaterIsBetter: Bool?
    /// `eval_strategy`: when to evaluate on the evaluation set (default `no`).
    public var evalStrategy: IntervalStrategy = .no
    /// `save_strategy`: when to save a checkpoint (default `steps`).
    public var saveStrategy: SaveStrategy = .steps
    /// `dataloader_drop_last`: drop each epoch's last partial batch (default false).
    public var dataloaderDropLast = false

    /// transformers' defaults for every field.
    public init() {}

    // MARK: derived values (transformers' `__post_init__`)

    /// `eval_steps`, falling back to `logging_steps` when evaluating by steps and it is unset or 0.
    public var resolvedEvalSteps: Double? {
        if evalStrategy == .steps && (evalSteps == nil || evalSteps == 0) { return loggingSteps }
        return evalSteps
    }

    /// `metric_for_best_model`, "loss" when the best model is loaded at the end and none is named.
    public var resolvedMetricForBestModel: String? { metricForBestModel ?? (loadBestModelAtEnd ? "loss" : nil) }

    /// `greater_is_better`, else true unless the metric's name ends in "loss".
    public var resolvedGreaterIsBetter: Bool? { greaterIsBetter ?? resolvedMetricForBestModel.map { !$0.hasSuffix("loss") } }

    // MARK: validation

    /// The largest batch size and accumulation count accepted.
    public static let maxBatchSize = 65536

    /// Rejects settings that cannot train (transformers' `_validate_args` checks plus the ranges
    /// `torch.optim.AdamW` enforces). The first problem found is reported.
    public func validate() throws {
        func finite(_ name: String, _ v: Double) throws {
            guard v.isFinite else { throw TrainingArgumentsError(field: name, "must be a finite number, got \(v)") }
        }
        func nonNegative(_ name: String, _ v: Double) throws {
            try finite(name, v)
            guard v >= 0 else { throw TrainingArgumentsError(field: name, "must not be negative, got \(v)") }
        }
        func positive(_ name: String, _ v: Int) throws {
            guard v >= 1 else { throw TrainingArgumentsError(field: name, "must be at least 1, got \(v)") }
            // training_args.json of a checkpoint is a file too: sizes are bounded before use.
            guard v <= Self.maxBatchSize else { throw TrainingArgumentsError(field: name, "must be at most \(Self.maxBatchSize), got \(v)") }
        }
        guard !outputDir.isEmpty else { throw TrainingArgumentsError(field: "output_dir", "must not be empty") }
        try nonNegative("learning_rate", learningRate)
        try nonNegative("weight_decay", weightDecay)
        for (name, beta) in [("adam_beta1", adamBeta1), ("adam_beta2", adamBeta2)] {
            guard beta >= 0 && beta < 1 else { throw TrainingArgumentsError(field: name, "must be in [0, 1), got \(beta)") }
        }
        try nonNegative("adam_epsilon", adamEpsilon)
        // transformers treats a negative max_grad_norm like 0 (no clipping); here that is an error
        // so a sign slip does not silently turn clipping off. Infinity is allowed (no clipping).
        guard !maxGradNorm.isNaN, maxGradNorm >= 0 else {
            throw TrainingArgumentsError(field: "max_grad_norm", "must be 0 (no clipping) or positive, got \(maxGradNorm)")
        }
        try nonNegative("num_train_epochs", numTrainEpochs)
        try nonNegative("warmup_steps", warmupSteps)
        try positive("per_device_train_batch_size", perDeviceTrainBatchSize)
        try positive("per_device_eval_batch_size", perDeviceEvalBatchSize)
        try positive("gradient_accumulation_steps", gradientAccumulationSteps)
        try finite("label_smoothing_factor", labelSmoothingFactor)
        guard labelSmoothingFactor >= 0 && labelSmoothingFactor <= 1 else {
            throw TrainingArgumentsError(field: "label_smoothing_factor", "must be in [0, 1], got \(labelSmoothingFactor)")
        }
        if let limit = saveTotalLimit, limit < 0 {
            throw TrainingArgumentsError(field: "save_total_limit", "must not be negative, got \(limit)")
        }
        // Interval steps: an integer ≥ 1, or a fraction in (0, 1) of the training steps.
        func interval(_ name: String, _ v: Double, active: Bool) throws {
            guard active else { return }
            try finite(name, v)
            guard v > 0 else { throw TrainingArgumentsError(field: name, "must be positive when its strategy is \"steps\", got \(v)") }
            guard v < 1 || v == v.rounded() else {
                throw TrainingArgumentsError(field: name, "must be an integer if bigger than 1, got \(v)")
            }
        }
        try interval("logging_steps", loggingSteps, active: loggingStrategy == .steps)
        try interval("eval_steps", resolvedEvalSteps ?? 0, active: evalStrategy == .steps)
        try interval("save_steps", saveSteps, active: saveStrategy == .steps)
        if loadBestModelAtEnd {
            if evalStrategy == .no {
                throw TrainingArgumentsError(field: "load_best_model_at_end", "needs an eval_strategy other than \"no\"")
            }
            if saveStrategy != .best {
                guard evalStrategy.rawValue == saveStrategy.rawValue else {
                    throw TrainingArgumentsError(field: "load_best_model_at_end", "needs save_strategy \"\(evalStrategy.rawValue)\" to match eval_strategy (or \"best\"), got \"\(saveStrategy.rawValue)\"")
                }
                if evalStrategy == .steps, let e = resolvedEvalSteps, e >= 1, saveSteps >= 1,
                   Int(saveSteps) % Int(e) != 0 {
                    throw TrainingArgumentsError(field: "save_steps", "\(Int(saveSteps)) must be a multiple of eval_steps \(Int(e)) with load_best_model_at_end")
                }
            }
        }
    }

    // MARK: step arithmetic (transformers' Trainer)

    /// `TrainingArguments.get_warmup_steps`: a `warmup_steps` ≥ 1 is truncated to an integer; a
    /// value below 1 is a ratio, `ceil(total · ratio)` in double (so 6 · 0.3 = 1.7999… → 2).
    public func numWarmupSteps(totalSteps: Int) -> Int {
        warmupSteps >= 1 ? Int(warmupSteps) : Int((Double(totalSteps) * warmupSteps).rounded(.up))
    }

    /// `TrainerState.compute_steps`: logging, eval and save intervals as step counts, a value
    /// below 1 being a fraction of `maxSteps` rounded up.
    public func computeSteps(maxSteps: Int) -> (logging: Int, eval: Int?, save: Int) {
        func absolute(_ v: Double) -> Int { v < 1 ? Int((Double(maxSteps) * v).rounded(.up)) : Int(v) }
        return (absolute(loggingSteps), resolvedEvalSteps.map(absolute), absolute(saveSteps))
    }

    /// How long training runs for a training set of `numExamples` items, as transformers'
    /// `Trainer.set_initial_training_values` computes it on one CPU process.
    public func trainingLength(numExamples: Int) throws -> TrainingLength {
        guard numExamples > 0 else { throw TrainingArgumentsError(field: "train_dataset", "is empty") }
        try validate()
        let batch = perDeviceTrainBatchSize, accumulation = gradientAccumulationSteps
        // len(DataLoader): a partial last batch counts unless dataloader_drop_last.
        let batchesPerEpoch = dataloaderDropLast ? numExamples / batch : (numExamples + batch - 1) / batch
        guard batchesPerEpoch > 0 else {
            throw TrainingArgumentsError(field: "dataloader_drop_last", "drops every batch: \(numExamples) examples are fewer than per_device_train_batch_size \(batch)")
        }
        // Trailing micro-batches that do not fill an accumulation still make an optimizer step.
        let perEpoch = max(batchesPerEpoch / accumulation + (batchesPerEpoch % accumulation > 0 ? 1 : 0), 1)
        let steps: Int, epochs: Int
        if maxSteps < 0 {
            steps = Int((numTrainEpochs * Double(perEpoch)).rounded(.up))
            epochs = Int(numTrainEpochs.rounded(.up))
        } else {
            steps = maxSteps
            // quirk: max_steps 0 takes the epoch count from num_train_epochs (and trains no step).
            epochs = maxSteps > 0 ? maxSteps / perEpoch + (maxSteps % perEpoch > 0 ? 1 : 0) : Int(numTrainEpochs.rounded(.up))
        }
        let remainder = batchesPerEpoch % accumulation
        return TrainingLength(batchesPerEpoch: batchesPerEpoch, updateStepsPerEpoch: perEpoch, maxSteps: steps,
                              numTrainEpochs: epochs, lastStepMicroBatches: remainder == 0 ? accumulation : remainder)
    }

    /// The number of optimizer steps for a training set of `numExamples` items (`max_steps` once
    /// resolved: positive `max_steps` wins, else `ceil(epochs · update steps per epoch)`).
    public func numTrainingSteps(numExamples: Int) throws -> Int { try trainingLength(numExamples: numExamples).maxSteps }

    // MARK: Codable

    enum CodingKeys: String, CodingKey {
        case outputDir = "output_dir", learningRate = "learning_rate", weightDecay = "weight_decay"
        case adamBeta1 = "adam_beta1", adamBeta2 = "adam_beta2", adamEpsilon = "adam_epsilon"
        case maxGradNorm = "max_grad_norm", numTrainEpochs = "num_train_epochs", maxSteps = "max_steps"
        case lrSchedulerType = "lr_scheduler_type", warmupSteps = "warmup_steps", optim
        case perDeviceTrainBatchSize = "per_device_train_batch_size", perDeviceEvalBatchSize = "per_device_eval_batch_size"
        case gradientAccumulationSteps = "gradient_accumulation_steps", seed
        case labelSmoothingFactor = "label_smoothing_factor", loggingStrategy = "logging_strategy"
        case loggingSteps = "logging_steps", evalSteps = "eval_steps", saveSteps = "save_steps"
        case saveTotalLimit = "save_total_limit", loadBestModelAtEnd = "load_best_model_at_end"
        case metricForBestModel = "metric_for_best_model", greaterIsBetter = "greater_is_better"
        case evalStrategy = "eval_strategy", saveStrategy = "save_strategy", dataloaderDropLast = "dataloader_drop_last"
    }

    /// Keys of older transformers versions that no longer exist.
    enum RemovedKeys: String, CodingKey { case warmupRatio = "warmup_ratio" }

    /// Decodes a `TrainingArguments` JSON (e.g. a `to_json_string()` dump): missing keys take the
    /// defaults, unknown keys are ignored, integer fields accept whole floats (`3.0`).
    /// - Throws: `TrainingArgumentsError` for a non-integer integer field, an unknown strategy, optimizer
    ///   or schedule name, or a non-zero `warmup_ratio` (removed in transformers 5).
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func get<T: Decodable>(_ k: CodingKeys, _ d: T) throws -> T { try c.decodeIfPresent(T.self, forKey: k) ?? d }
        // Python writes integers of float fields as either 3 or 3.0; integer fields must be whole.
        func int(_ k: CodingKeys) throws -> Int? {
            guard let v = try c.decodeIfPresent(Double.self, forKey: k) else { return nil }
            guard v == v.rounded(), abs(v) < 9e15 else { throw TrainingArgumentsError(field: k.rawValue, "must be an integer, got \(v)") }
            return Int(v)
        }
        func choice<T: RawRepresentable & CaseIterable>(_ k: CodingKeys, _ d: T) throws -> T where T.RawValue == String {
            guard let name = try c.decodeIfPresent(String.self, forKey: k) else { return d }
            guard let v = T(rawValue: name) else {
                throw TrainingArgumentsError(field: k.rawValue, "\"\(name)\" is not one of \(T.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))")
            }
            return v
        }
        // A file from transformers 4 may set warmup_ratio, which 5.x removed: dropping it silently
        // would train without warmup.
        let removed = try decoder.container(keyedBy: RemovedKeys.self)
        if let ratio = try removed.decodeIfPresent(Double.self, forKey: .warmupRatio), ratio != 0 {
            throw TrainingArgumentsError(field: "warmup_ratio", "(\(ratio)) was removed in transformers 5; give the ratio as warmup_steps (a value below 1 is a fraction of the training steps)")
        }
        outputDir = try get(.outputDir, outputDir)
        learningRate = try get(.learningRate, learningRate); weightDecay = try get(.weightDecay, weightDecay)
        adamBeta1 = try get(.adamBeta1, adamBeta1); adamBeta2 = try get(.adamBeta2, adamBeta2)
        adamEpsilon = try get(.adamEpsilon, adamEpsilon); maxGradNorm = try get(.maxGradNorm, maxGradNorm)
        numTrainEpochs = try get(.numTrainEpochs, numTrainEpochs); maxSteps = try int(.maxSteps) ?? maxSteps
        if let name = try c.decodeIfPresent(String.self, forKey: .lrSchedulerType) { lrSchedulerType = try SchedulerType(name: name) }
        warmupSteps = try get(.warmupSteps, warmupSteps)
        optim = try choice(.optim, optim)
        perDeviceTrainBatchSize = try int(.perDeviceTrainBatchSize) ?? perDeviceTrainBatchSize
        perDeviceEvalBatchSize = try int(.perDeviceEvalBatchSize) ?? perDeviceEvalBatchSize
        gradientAccumulationSteps = try int(.gradientAccumulationSteps) ?? gradientAccumulationSteps
        seed = try int(.seed) ?? seed
        labelSmoothingFactor = try get(.labelSmoothingFactor, labelSmoothingFactor)
        loggingStrategy = try choice(.loggingStrategy, loggingStrategy)
        loggingSteps = try get(.loggingSteps, loggingSteps)
        evalSteps = try c.decodeIfPresent(Double.self, forKey: .evalSteps)
        saveSteps = try get(.saveSteps, saveSteps)
        saveTotalLimit = try int(.saveTotalLimit)
        loadBestModelAtEnd = try get(.loadBestModelAtEnd, loadBestModelAtEnd)
        metricForBestModel = try c.decodeIfPresent(String.self, forKey: .metricForBestModel)
        greaterIsBetter = try c.decodeIfPresent(Bool.self, forKey: .greaterIsBetter)
        evalStrategy = try choice(.evalStrategy, evalStrategy)
        saveStrategy = try choice(.saveStrategy, saveStrategy)
        dataloaderDropLast = try get(.dataloaderDropLast, dataloaderDropLast)
    }

    /// Every field, unset optionals as null (as transformers' `to_json_string` writes them).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(outputDir, forKey: .outputDir)
        try c.encode(learningRate, forKey: .learningRate); try c.encode(weightDecay, forKey: .weightDecay)
        try c.encode(adamBeta1, forKey: .adamBeta1); try c.encode(adamBeta2, forKey: .adamBeta2)
        try c.encode(adamEpsilon, forKey: .adamEpsilon); try c.encode(maxGradNorm, forKey: .maxGradNorm)
        try c.encode(numTrainEpochs, forKey: .numTrainEpochs); try c.encode(maxSteps, forKey: .maxSteps)
        try c.encode(lrSchedulerType, forKey: .lrSchedulerType); try c.encode(warmupSteps, forKey: .warmupSteps)
        try c.encode(optim, forKey: .optim)
        try c.encode(perDeviceTrainBatchSize, forKey: .perDeviceTrainBatchSize)
        try c.encode(perDeviceEvalBatchSize, forKey: .perDeviceEvalBatchSize)
        try c.encode(gradientAccumulationSteps, forKey: .gradientAccumulationSteps); try c.encode(seed, forKey: .seed)
        try c.encode(labelSmoothingFactor, forKey: .labelSmoothingFactor)
        try c.encode(loggingStrategy, forKey: .loggingStrategy); try c.encode(loggingSteps, forKey: .loggingSteps)
        try c.encode(evalSteps, forKey: .evalSteps); try c.encode(saveSteps, forKey: .saveSteps)
        try c.encode(saveTotalLimit, forKey: .saveTotalLimit); try c.encode(loadBestModelAtEnd, forKey: .loadBestModelAtEnd)
        try c.encode(metricForBestModel, forKey: .metricForBestModel); try c.encode(greaterIsBetter, forKey: .greaterIsBetter)
        try c.encode(evalStrategy, forKey: .evalStrategy); try c.encode(saveStrategy, forKey: .saveStrategy)
        try c.encode(dataloaderDropLast, forKey: .dataloaderDropLast)
    }
}

/// How long training runs (transformers' `Trainer.set_initial_training_values`).
public struct TrainingLength: Equatable, Sendable {
    /// `len(train_dataloader)`: micro-batches per epoch (`steps_in_epoch`).
    public var batchesPerEpoch: Int
    /// Optimizer steps per epoch: `ceil(batchesPerEpoch / gradient_accumulation_steps)`, at least 1.
    public var updateStepsPerEpoch: Int
    /// Optimizer steps in total (`max_steps`): what the scheduler spans.
    public var maxSteps: Int
    /// Epochs the training loop starts (the last may stop early at `maxSteps`).
    public var numTrainEpochs: Int
    /// Micro-batches accumulated into the last optimizer step of an epoch
    /// (`steps_in_epoch % gradient_accumulation_steps`, or all of them when that is 0).
    public var lastStepMicroBatches: Int
}
