import Foundation

/// One entry of `trainer_state.json`'s `log_history`: a training-loss log, an evaluation, or the
/// end-of-training summary, with transformers' keys (`loss`, `grad_norm`, `learning_rate`,
/// `eval_loss`, `eval_accuracy`, `train_runtime`, …).
public struct TrainerLogRecord: Codable, Sendable, Equatable {
    /// The logged values by transformers key (everything but `epoch` and `step`).
    public var values: [String: Double]
    /// `epoch`: fractional epoch at the time of the record.
    public var epoch: Double
    /// `step`: the optimizer step (global step) at the time of the record.
    public var step: Int

    /// A record of `values` at `epoch` and `step`.
    public init(_ values: [String: Double], epoch: Double, step: Int) {
        self.values = values; self.epoch = epoch; self.step = step
    }

    struct Key: CodingKey {
        var stringValue: String
        init(stringValue: String) { self.stringValue = stringValue }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }

    /// Decodes a flat JSON object: `epoch`, `step`, and every other numeric key into `values` (non-numeric ones are skipped).
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        var values: [String: Double] = [:]
        var epoch = 0.0, step = 0
        for k in c.allKeys {
            switch k.stringValue {
            case "epoch": epoch = try c.decode(Double.self, forKey: k)
            case "step": step = try c.decode(Int.self, forKey: k)
            default: if let v = try? c.decode(Double.self, forKey: k) { values[k.stringValue] = v }
            }
        }
        self.values = values; self.epoch = epoch; self.step = step
    }

    /// Encodes one flat JSON object: `values`, `epoch` and `step`.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        for (k, v) in values { try c.encode(v, forKey: Key(stringValue: k)) }
        try c.encode(epoch, forKey: Key(stringValue: "epoch"))
        try c.encode(step, forKey: Key(stringValue: "step"))
    }
}

/// transformers' `TrainerState` (trainer_callback.py), as `trainer_state.json` holds it, plus the
/// size of the training set (a resumed run must read the same data).
public struct TrainerState: Codable, Sendable, Equatable {
    /// `epoch`: fractional epochs trained so far.
    public var epoch = 0.0
    /// `global_step`: optimizer steps taken so far.
    public var globalStep = 0
    /// `max_steps`: optimizer steps of the whole run.
    public var maxSteps: Int
    /// `num_train_epochs`: epochs of the whole run (rounded up).
    public var numTrainEpochs: Int
    /// `logging_steps`: steps between training-loss logs.
    public var loggingSteps: Int
    /// `eval_steps`: steps between evaluations, nil when not evaluating by steps.
    public var evalSteps: Int?
    /// `save_steps`: steps between checkpoints.
    public var saveSteps: Int
    /// `train_batch_size`: images per micro-batch.
    public var trainBatchSize: Int
    /// `best_metric`: the best value of `metric_for_best_model` so far, nil before the first evaluation.
    public var bestMetric: Double?
    /// `best_global_step`: the step that reached `best_metric`.
    public var bestGlobalStep: Int?
    /// `best_model_checkpoint`: the path of the checkpoint saved at `best_global_step`.
    public var bestModelCheckpoint: String?
    /// `log_history`: every log, evaluation and summary record so far, in order.
    public var logHistory: [TrainerLogRecord] = []
    /// `num_train_examples`: size of the training set (checked when resuming).
    public var numTrainExamples: Int
    /// `is_local_process_zero`: always true (one process).
    public var isLocalProcessZero = true
    /// `is_world_process_zero`: always true (one process).
    public var isWorldProcessZero = true

    /// The state at the start of a run: step 0, epoch 0, empty history.
    public init(maxSteps: Int, numTrainEpochs: Int, loggingSteps: Int, evalSteps: Int?, saveSteps: Int, trainBatchSize: Int, numTrainExamples: Int) {
        self.maxSteps = maxSteps; self.numTrainEpochs = numTrainEpochs; self.loggingSteps = loggingSteps
        self.evalSteps = evalSteps; self.saveSteps = saveSteps; self.trainBatchSize = trainBatchSize
        self.numTrainExamples = numTrainExamples
    }

    enum CodingKeys: String, CodingKey {
        case epoch, globalStep = "global_step", maxSteps = "max_steps", numTrainEpochs = "num_train_epochs"
        case loggingSteps = "logging_steps", evalSteps = "eval_steps", saveSteps = "save_steps"
        case trainBatchSize = "train_batch_size", bestMetric = "best_metric", bestGlobalStep = "best_global_step"
        case bestModelCheckpoint = "best_model_checkpoint", logHistory = "log_history"
        case numTrainExamples = "num_train_examples", isLocalProcessZero = "is_local_process_zero"
        case isWorldProcessZero = "is_world_process_zero"
    }

    /// Encodes with transformers' keys, unset optionals as `null`.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(epoch, forKey: .epoch); try c.encode(globalStep, forKey: .globalStep)
        try c.encode(maxSteps, forKey: .maxSteps); try c.encode(numTrainEpochs, forKey: .numTrainEpochs)
        try c.encode(loggingSteps, forKey: .loggingSteps); try c.encode(evalSteps, forKey: .evalSteps)
        try c.encode(saveSteps, forKey: .saveSteps); try c.encode(trainBatchSize, forKey: .trainBatchSize)
        try c.encode(bestMetric, forKey: .bestMetric); try c.encode(bestGlobalStep, forKey: .bestGlobalStep)
        try c.encode(bestModelCheckpoint, forKey: .bestModelCheckpoint); try c.encode(logHistory, forKey: .logHistory)
        try c.encode(numTrainExamples, forKey: .numTrainExamples)
        try c.encode(isLocalProcessZero, forKey: .isLocalProcessZero); try c.encode(isWorldProcessZero, forKey: .isWorldProcessZero)
    }
}

/// What a training step reports to progress displays.
public struct StepReport: Sendable {
    /// The step's loss, learning rate, gradient norm, epoch and step.
    public var entry: TrainingLogEntry
    /// Optimizer steps of the whole run.
    public var totalSteps: Int
    /// Images per second of the steps run so far in this process.
    public var imagesPerSecond: Double
    /// Seconds the steps so far waited for data (decoding, augmentation) in this process.
    public var dataWaitSeconds: Double
    /// Seconds since the run (or its resumption) started.
    public var elapsedSeconds: Double
    /// Estimated seconds to the last step (evaluations not included).
    public var remainingSeconds: Double
}

/// Callbacks of `Trainer.run` (all on the training thread).
public struct TrainerHooks: Sendable {
    /// Called after every optimizer step.
    public var onStep: (@Sendable (StepReport) -> Void)?
    /// Every record added to `log_history` (training-loss logs, evaluations, the summary).
    public var onLog: (@Sendable (TrainerLogRecord) -> Void)?
    /// Evaluation progress: (images done, images in all).
    public var onEvaluationProgress: (@Sendable (Int, Int) -> Void)?
    /// Called after a checkpoint folder was written, with its URL.
    public var onSave: (@Sendable (URL) -> Void)?
    /// Polled after every step and evaluation batch: true stops the run at a checkpoint.
    public var shouldStop: (@Sendable () -> Bool)?
    /// Hooks with no callbacks set.
    public init() {}
}

/// How `Trainer.run` ended.
public enum TrainOutcome: Equatable, Sendable {
    case completed
    /// Stopped on request after `step`, with a checkpoint written at `checkpoint`.
    case interrupted(step: Int, checkpoint: URL)
}

extension Trainer {
    var outputURL: URL { URL(fileURLWithPath: args.outputDir) }

    /// transformers' `Trainer.train`: steps to `totalSteps` with logging, evaluation and
    /// checkpoints as the arguments say, resuming from `resumeFrom` (a `checkpoint-<step>` folder).
    /// `hooks.shouldStop` returning true writes a checkpoint and returns `.interrupted`.
    public func run(resumeFrom: URL? = nil, hooks: TrainerHooks = TrainerHooks()) throws -> TrainOutcome {
        try loop(resumeFrom: resumeFrom, hooks: hooks, manage: true)
    }

    func loop(resumeFrom: URL?, hooks: TrainerHooks, manage: Bool) throws -> TrainOutcome {
        if let resumeFrom { try loadCheckpoint(resumeFrom) }
        let k = args.gradientAccumulationSteps
        var epoch = globalStep / updateStepsPerEpoch
        var skip = (globalStep % updateStepsPerEpoch) * k
        let startStep = globalStep
        let start = DispatchTime.now().uptimeNanoseconds
        var images = 0
        var waited = 0.0
        var intervalLoss = 0.0, intervalStart = globalStep
        var lastSaved = -1
        func elapsed() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }

        while globalStep < totalSteps {
            let batches = Array(self.batches(epoch: epoch)[skip...])
            skip = 0
            let e = epoch
            let fetch = Prefetcher(count: batches.count, depth: 2 * k) { [trainData] i in try trainData.batch(batches[i], epoch: e) }
            defer { fetch.cancel() }
            var i = 0
            let doneBefore = batchesPerEpoch - batches.count
            while i < batches.count && globalStep < totalSteps {
                let n = min(k, batches.count - i)
                let group = try (0..<n).map { _ in try fetch.next() }
                i += n
                var entry = try step(group)
                entry.epoch = Double(epoch) + Double(doneBefore + i) / Double(batchesPerEpoch)
                logHistory[logHistory.count - 1] = entry
                state.globalStep = globalStep
                state.epoch = entry.epoch
                images += group.reduce(0) { $0 + $1.0.shape[0] }
                waited = fetch.waitSeconds
                let seconds = elapsed()
                let perStep = seconds / Double(globalStep - startStep)
                hooks.onStep?(StepReport(entry: entry, totalSteps: totalSteps, imagesPerSecond: Double(images) / max(seconds, 1e-9),
                                         dataWaitSeconds: waited, elapsedSeconds: seconds,
                                         remainingSeconds: perStep * Double(totalSteps - globalStep)))
                guard manage else {
                    if hooks.shouldStop?() == true { return .interrupted(step: globalStep, checkpoint: outputURL) }
                    continue
                }
                intervalLoss += entry.loss
                let epochEnd = i == batches.count
                let last = globalStep == totalSteps
                let logNow = (args.loggingStrategy == .steps && globalStep % state.loggingSteps == 0)
                    || (args.loggingStrategy == .epoch && epochEnd)
                if logNow {
                    let steps = Double(globalStep - intervalStart)
                    log(["loss": intervalLoss / steps, "grad_norm": entry.gradNorm, "learning_rate": entry.learningRate], hooks)
                    intervalLoss = 0; intervalStart = globalStep
                }
                var newBest = false
                let evalNow = evalData != nil && ((args.evalStrategy == .steps && state.evalSteps.map { globalStep % $0 == 0 } == true)
                    || (args.evalStrategy == .epoch && epochEnd))
                if evalNow {
                    guard let metrics = try evaluate(hooks: hooks) else { return try interrupt(hooks) }
                    newBest = updateBest(metrics)
                }
                let saveNow = (args.saveStrategy == .steps && globalStep % state.saveSteps == 0)
                    || (args.saveStrategy == .epoch && epochEnd) || (args.saveStrategy == .best && newBest)
                if saveNow {
                    try saveCheckpoint(isBest: newBest, hooks: hooks)
                    lastSaved = globalStep
                }
                if !last, hooks.shouldStop?() == true { return try interrupt(hooks, saved: lastSaved == globalStep) }
            }
            epoch += 1
        }
        guard manage else { return .completed }
        let seconds = elapsed()
        let stepLosses = logHistory.map(\.loss)
        log(["train_runtime": seconds, "train_samples_per_second": Double(images) / max(seconds, 1e-9),
             "train_steps_per_second": Double(globalStep - startStep) / max(seconds, 1e-9),
             "train_loss": stepLosses.isEmpty ? 0 : stepLosses.reduce(0, +) / Double(stepLosses.count),
             "train_data_wait_seconds": waited, "total_flos": 0], hooks)
        if args.loadBestModelAtEnd, let best = state.bestModelCheckpoint {
            try loadModelWeights(from: URL(fileURLWithPath: best))
        }
        return .completed
    }

    private func interrupt(_ hooks: TrainerHooks, saved: Bool = false) throws -> TrainOutcome {
        let url = checkpointURL(step: globalStep)
        if !saved { try saveCheckpoint(isBest: false, hooks: hooks) }
        return .interrupted(step: globalStep, checkpoint: url)
    }

    private func log(_ values: [String: Double], _ hooks: TrainerHooks) {
        let r = TrainerLogRecord(values, epoch: state.epoch, step: globalStep)
        state.logHistory.append(r)
        hooks.onLog?(r)
    }

    /// Records the evaluation's metric if it is the best so far (`metric_for_best_model`).
    private func updateBest(_ metrics: [String: Double]) -> Bool {
        guard let name = args.resolvedMetricForBestModel else { return false }
        let key = name.hasPrefix("eval_") ? name : "eval_" + name
        guard let v = metrics[key] else { return false }
        let greater = args.resolvedGreaterIsBetter ?? true
        if let best = state.bestMetric, greater ? !(v > best) : !(v < best) { return false }
        state.bestMetric = v
        state.bestGlobalStep = globalStep
        return true
    }

    // MARK: evaluation

    /// transformers' `Trainer.evaluate` on `evalData`: `eval_loss` (mean over images; the label
    /// smoother's loss when `label_smoothing_factor` is set, as Trainer computes it), and for class
    /// labels `eval_accuracy`; the model in inference mode (BatchNorm running statistics). Returns
    /// nil when `hooks.shouldStop` interrupts it.
    public func evaluate(hooks: TrainerHooks = TrainerHooks()) throws -> [String: Double]? {
        guard let data = evalData else { throw TrainingError.invalidArguments("no evaluation data") }
        let start = DispatchTime.now().uptimeNanoseconds
        let b = args.perDeviceEvalBatchSize
        let batches = stride(from: 0, to: data.count, by: b).map { Array($0..<min($0 + b, data.count)) }
        let fetch = Prefetcher(count: batches.count) { i in try data.batch(batches[i], epoch: 0) }
        defer { fetch.cancel() }
        var lossSum = 0.0, correct = 0, counted = 0, seen = 0
        for _ in batches {
            let (x, y) = try fetch.next()
            let n = x.shape[0]
            let loss: Float
            let logits: Tensor
            if let smoother = labelSmoother, case .classIndices(let idx) = y {
                logits = try model(x).logits
                loss = try smoother(logits: logits, labels: idx, numItemsInBatch: idx.filter { $0 != -100 }.count).loss
            } else {
                let out = try model(x, labels: y)
                logits = out.logits
                loss = out.loss?.scalars.first ?? .nan
            }
            lossSum += Double(loss) * Double(n)
            if case .classIndices(let idx) = y, model.config.numLabels > 1 {
                let c = model.config.numLabels
                let v = logits.scalars
                for (j, t) in idx.enumerated() where t != -100 {
                    let row = v[(j * c)..<((j + 1) * c)]
                    let argmax = row.indices.max { row[$0] < row[$1] || (row[$0] == row[$1] && $0 > $1) }! - j * c
                    if argmax == t { correct += 1 }
                    counted += 1
                }
            }
            seen += n
            hooks.onEvaluationProgress?(seen, data.count)
            if hooks.shouldStop?() == true { return nil }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        var metrics: [String: Double] = [
            "eval_loss": lossSum / Double(max(seen, 1)), "eval_runtime": seconds,
            "eval_samples_per_second": Double(seen) / max(seconds, 1e-9),
            "eval_steps_per_second": Double(batches.count) / max(seconds, 1e-9),
        ]
        if counted > 0 { metrics["eval_accuracy"] = Double(correct) / Double(counted) }
        log(metrics, hooks)
        return metrics
    }

    // MARK: checkpoints

    func checkpointURL(step: Int) -> URL { outputURL.appendingPathComponent("checkpoint-\(step)") }

    /// `checkpoint-<step>/` in the output folder, written to a temporary folder first and renamed
    /// into place, so an interruption or a full disk leaves the previous checkpoints as they were:
    /// the model (`config.json`, `model.safetensors`, `preprocessor_config.json`), AdamW's state
    /// (`optimizer.safetensors`), the schedule (`scheduler.json`), the data-order and augmentation
    /// generator state (`rng_state.json`), `trainer_state.json` and `training_args.json`. Then
    /// removes checkpoints beyond `save_total_limit` (oldest first, never the best).
    public func saveCheckpoint(isBest: Bool = false, hooks: TrainerHooks = TrainerHooks()) throws {
        let url = checkpointURL(step: globalStep)
        if isBest || state.bestGlobalStep == globalStep { state.bestModelCheckpoint = url.path }
        let fm = FileManager.default
        try fm.createDirectory(at: outputURL, withIntermediateDirectories: true)
        let tmp = outputURL.appendingPathComponent(".checkpoint-\(globalStep).partial-\(getpid())")
        // Leftovers of a write that was killed (a second Ctrl-C, a crash) are never checkpoints.
        for name in (try? fm.contentsOfDirectory(atPath: outputURL.path)) ?? [] where name.hasPrefix(".checkpoint-") {
            try? fm.removeItem(at: outputURL.appendingPathComponent(name))
        }
        do {
            try writeModelFiles(to: tmp)
            var opt = SafetensorsWriter(metadata: ["format": "cvt-adamw", "global_step": "\(globalStep)"])
            for (name, t) in optimizer.stateDict().sorted(by: { $0.key < $1.key }) { try opt.add(name, t) }
            try opt.write(to: tmp.appendingPathComponent("optimizer.safetensors"))
            try writeJSON(["type": scheduler.type.rawValue, "base_lr": scheduler.baseLearningRate,
                           "num_warmup_steps": scheduler.numWarmupSteps, "num_training_steps": scheduler.numTrainingSteps,
                           "last_epoch": globalStep, "next_learning_rate": scheduler.learningRate(atStep: globalStep)],
                          to: tmp.appendingPathComponent("scheduler.json"))
            let k = args.gradientAccumulationSteps
            try writeJSON(["generator": "splitmix64", "seed": args.seed, "shuffle": shuffle,
                           "epoch": globalStep / updateStepsPerEpoch,
                           "micro_batches_done_in_epoch": (globalStep % updateStepsPerEpoch) * k,
                           "note": "data order is a seeded permutation per epoch and augmentation a stream per (seed, epoch, image), so these fields fix every later draw"],
                          to: tmp.appendingPathComponent("rng_state.json"))
            try JSONEncoder.pretty.encode(args).write(to: tmp.appendingPathComponent("training_args.json"))
            try JSONEncoder.pretty.encode(state).write(to: tmp.appendingPathComponent("trainer_state.json"))
            try syncFolder(tmp)
            try beforeCheckpointRename?(tmp)
            if fm.fileExists(atPath: url.path) {
                let old = outputURL.appendingPathComponent(".checkpoint-\(globalStep).old-\(getpid())")
                try fm.moveItem(at: url, to: old)
                try fm.moveItem(at: tmp, to: url)
                try? fm.removeItem(at: old)
            } else {
                try fm.moveItem(at: tmp, to: url)
            }
        } catch {
            try? fm.removeItem(at: tmp)
            throw TrainingError.outputNotWritable(path: url.path, reason: "\(error)")
        }
        hooks.onSave?(url)
        try rotateCheckpoints()
    }

    /// The `checkpoint-<step>` folders of the output folder, oldest first.
    public static func checkpoints(in folder: URL) -> [(step: Int, url: URL)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return names.compactMap { n -> (Int, URL)? in
            guard n.hasPrefix("checkpoint-"), let s = Int(n.dropFirst("checkpoint-".count)) else { return nil }
            let u = folder.appendingPathComponent(n)
            guard FileManager.default.fileExists(atPath: u.appendingPathComponent("trainer_state.json").path) else { return nil }
            return (s, u)
        }.sorted { $0.0 < $1.0 }
    }

    private func rotateCheckpoints() throws {
        guard let limit = args.saveTotalLimit, limit > 0 else { return }
        let all = Self.checkpoints(in: outputURL)
        guard all.count > limit else { return }
        let best = state.bestModelCheckpoint
        var keep = Set(all.suffix(limit).map(\.url.path))
        if let best { keep.insert(best) }
        for c in all where !keep.contains(c.url.path) {
            try? FileManager.default.removeItem(at: c.url)
        }
    }

    /// Continues from a `checkpoint-<step>` folder: weights and BatchNorm state, AdamW's state, the
    /// step count and log history. The training set must have the size it had.
    public func loadCheckpoint(_ url: URL) throws {
        let stateURL = url.appendingPathComponent("trainer_state.json")
        guard let data = FileManager.default.contents(atPath: stateURL.path) else {
            throw TrainingError.invalidArguments("\(url.path) is not a checkpoint folder (no trainer_state.json)")
        }
        let saved: TrainerState
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
        do { saved = try decoder.decode(TrainerState.self, from: data) } catch {
            throw TrainingError.invalidArguments("\(stateURL.path): not a trainer state (\(error))")
        }
        guard saved.numTrainExamples == trainData.count else {
            throw TrainingError.invalidArguments("\(url.path) was trained on \(saved.numTrainExamples) examples; this run has \(trainData.count): resume with the same data")
        }
        guard saved.globalStep <= totalSteps else {
            throw TrainingError.invalidArguments("\(url.path) is at step \(saved.globalStep), beyond this run's \(totalSteps) steps")
        }
        try loadModelWeights(from: url)
        let optURL = url.appendingPathComponent("optimizer.safetensors")
        let file = try SafetensorsFile(url: optURL)
        var dict: [String: Tensor] = [:]
        for name in file.tensorNames { dict[name] = try file.tensor(name) }
        do { try optimizer.loadStateDict(dict) } catch { throw TrainingError.invalidArguments("\(optURL.path): \(error)") }
        globalStep = saved.globalStep
        var s = saved
        s.maxSteps = totalSteps
        state = s
        logHistory = []
    }

    /// Weights, BatchNorm statistics and counters of a checkpoint or output folder, strictly.
    func loadModelWeights(from url: URL) throws {
        let file = try SafetensorsFile(url: url.appendingPathComponent("model.safetensors"))
        try model.load(from: file, sourceName: url.appendingPathComponent("model.safetensors").path)
        try model.loadBatchNormCounters(from: file)
    }

    /// `config.json`, `model.safetensors` and `preprocessor_config.json` into `url`.
    func writeModelFiles(to url: URL) throws {
        try model.savePretrained(to: url)
        if let data = try preprocessorData ?? preprocessorConfig.map({ try JSONEncoder.pretty.encode($0) }) {
            try data.write(to: url.appendingPathComponent("preprocessor_config.json"), options: .atomic)
        }
    }

    /// transformers' `save_model` + `save_state`: the model files and `trainer_state.json` into
    /// the output folder (or `url`), each file atomically.
    public func saveModel(to url: URL? = nil) throws {
        let dest = url ?? outputURL
        try writeModelFiles(to: dest)
        try JSONEncoder.pretty.encode(state).write(to: dest.appendingPathComponent("trainer_state.json"), options: .atomic)
        try JSONEncoder.pretty.encode(args).write(to: dest.appendingPathComponent("training_args.json"), options: .atomic)
    }

    private func writeJSON(_ object: [String: Any], to url: URL) throws {
        try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]).write(to: url, options: .atomic)
    }

    private func syncFolder(_ url: URL) throws {
        for name in try FileManager.default.contentsOfDirectory(atPath: url.path) {
            let fd = open(url.appendingPathComponent(name).path, O_RDONLY)
            if fd >= 0 { fsync(fd); close(fd) }
        }
    }
}

extension JSONEncoder {
    static var pretty: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        // A diverged evaluation must not make the state unwritable.
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
        return e
    }
}
