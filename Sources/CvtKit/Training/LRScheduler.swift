import Foundation

/// The learning-rate schedules of transformers' `SchedulerType` (trainer_utils.py) implemented here.
public enum SchedulerType: String, Codable, Sendable, CaseIterable {
    case linear
    case cosine
    case constant
    case constantWithWarmup = "constant_with_warmup"

    /// The schedule named `name` as `lr_scheduler_type` spells it; other names (including the
    /// transformers schedules not implemented here) are an error listing the supported ones.
    public init(name: String) throws {
        guard let t = SchedulerType(rawValue: name) else {
            throw TrainingArgumentsError(field: "lr_scheduler_type", "\"\(name)\" is not supported; use one of \(Self.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))")
        }
        self = t
    }

    /// Decodes a schedule name as `init(name:)` does.
    public init(from decoder: Decoder) throws { try self.init(name: decoder.singleValueContainer().decode(String.self)) }
}

/// The learning rate of every optimizer step, as transformers' `get_scheduler` builds it: a
/// `torch.optim.lr_scheduler.LambdaLR` whose rate at optimizer step `k` (0-based; the lr the k-th
/// `optimizer.step()` uses) is `base_lr * lambda(k)`. The lambdas are transformers'
/// `_get_*_lr_lambda` functions (optimization.py), with the same double arithmetic.
public struct LRScheduler: Sendable, Equatable {
    /// The schedule's shape (`lr_scheduler_type`).
    public let type: SchedulerType
    /// The peak learning rate (`learning_rate`), reached at the end of warmup.
    public let baseLearningRate: Double
    /// Optimizer steps of linear warmup from 0.
    public let numWarmupSteps: Int
    /// Optimizer steps in all (`max_steps` once resolved).
    public let numTrainingSteps: Int
    /// Cosine waves over the decay (`num_cycles`, 0.5: one half-cosine from base_lr to 0).
    public let numCycles: Double

    /// A schedule of `type`: a linear rise from 0 to `baseLearningRate` over `numWarmupSteps` (none
    /// for `constant`, as transformers builds it) and, for `linear` and `cosine`, a decay to 0 at
    /// `numTrainingSteps`.
    public init(type: SchedulerType, baseLearningRate: Double, numWarmupSteps: Int, numTrainingSteps: Int, numCycles: Double = 0.5) {
        self.type = type; self.baseLearningRate = baseLearningRate
        self.numWarmupSteps = numWarmupSteps; self.numTrainingSteps = numTrainingSteps; self.numCycles = numCycles
    }

    /// The schedule `Trainer.create_scheduler` builds: warmup from `get_warmup_steps`.
    public init(arguments a: TrainingArguments, numTrainingSteps: Int) {
        self.init(type: a.lrSchedulerType, baseLearningRate: a.learningRate,
                  numWarmupSteps: a.numWarmupSteps(totalSteps: numTrainingSteps), numTrainingSteps: numTrainingSteps)
    }

    /// The multiplier of optimizer step `step`.
    public func lambda(_ step: Int) -> Double {
        let w = numWarmupSteps, t = numTrainingSteps
        // Python's max(0.0, x) keeps 0.0 unless x is larger (so -0.0 and NaN give 0.0).
        func clampedAtZero(_ x: Double) -> Double { x > 0.0 ? x : 0.0 }
        switch type {
        case .constant:
            // get_scheduler builds the constant schedule without warmup, whatever warmup_steps says.
            return 1
        case .constantWithWarmup:
            if step < w { return Double(step) / max(1.0, Double(w)) }
            return 1.0
        case .linear:
            if step < w { return Double(step) / Double(max(1, w)) }
            return clampedAtZero(Double(t - step) / Double(max(1, t - w)))
        case .cosine:
            if step < w { return Double(step) / Double(max(1, w)) }
            let progress = Double(step - w) / Double(max(1, t - w))
            // No clamp at the end: past num_training_steps the cosine rises again, as in transformers.
            return clampedAtZero(0.5 * (1.0 + cos(Double.pi * numCycles * 2.0 * progress)))
        }
    }

    /// The learning rate optimizer step `step` (0-based) uses: `base_lr * lambda(step)`.
    public func learningRate(atStep step: Int) -> Double { baseLearningRate * lambda(step) }
}

/// transformers' `get_scheduler(name, optimizer, num_warmup_steps, num_training_steps)` for the
/// optimizer's base learning rate `learningRate`.
public func getScheduler(_ name: SchedulerType, learningRate: Double, numWarmupSteps: Int, numTrainingSteps: Int) -> LRScheduler {
    LRScheduler(type: name, baseLearningRate: learningRate, numWarmupSteps: numWarmupSteps, numTrainingSteps: numTrainingSteps)
}
