import Foundation
import Synchronization

/// Set when the task that started a piece of work is cancelled; the work polls it between batches
/// or steps.
public final class CancellationFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    /// A flag that is not set.
    public init() {}
    /// Whether `cancel()` has been called.
    public var isCancelled: Bool { flag.load(ordering: .acquiring) }
    /// Sets the flag; the work sees it at its next check.
    public func cancel() { flag.store(true, ordering: .releasing) }
}

/// Runs `work` on a thread of its own and awaits it: model calls take seconds and would otherwise
/// hold one of the few threads of Swift's cooperative pool. Cancelling the awaiting task sets the
/// flag `work` receives; `work` decides where it can stop.
func runOffPool<T: Sendable>(_ name: String, _ work: @escaping @Sendable (CancellationFlag) throws -> T) async throws -> T {
    let flag = CancellationFlag()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            let thread = Thread { continuation.resume(with: Result { try work(flag) }) }
            thread.name = name
            thread.start()
        }
    } onCancel: {
        flag.cancel()
    }
}

/// How far a long call has come, for progress reporting.
public struct ProgressReport: Sendable, Equatable {
    /// Units done so far (images, or steps).
    public var completed: Int
    /// Units in all.
    public var total: Int
    /// A report of `completed` out of `total`.
    public init(completed: Int, total: Int) { self.completed = completed; self.total = total }
    /// `completed / total`, from 0 to 1 (1 when `total` is 0).
    public var fraction: Double { total > 0 ? Double(completed) / Double(total) : 1 }
}

/// One classified input of a stream: its position among the inputs, and its labels or why it
/// failed.
public struct ClassifiedItem: Sendable {
    /// The input's position in the list given to `stream`, from 0.
    public var index: Int
    /// The ranked labels, or the error that made this input fail (e.g. an `ImageError`).
    public var result: Result<[Prediction], Error>
}

extension ImageClassificationPipeline {
    /// Classifies image files as `classify(_:)` does, on a thread of its own; stops between batches,
    /// throwing `CancellationError`, when the task is cancelled. `progress` is called after each
    /// batch (from that thread).
    public func classify(_ paths: [String], topK: Int = 5, function: ClassificationFunction? = nil, batchSize: Int = 1,
                         limits: ImageLimits = ImageLimits(), progress: (@Sendable (ProgressReport) -> Void)? = nil) async throws -> [Result<[Prediction], Error>] {
        try await runOffPool("cvt-pipeline") { flag in
            let results = self.classify(self.sources(paths, limits: limits), topK: topK, function: function, batchSize: batchSize,
                                        isCancelled: { flag.isCancelled }, onBatch: { done, _ in progress?(ProgressReport(completed: done, total: paths.count)) })
            if flag.isCancelled { throw CancellationError() }
            return results
        }
    }

    /// Classifies encoded images (JPEG or PNG bytes) as `classify(encoded:)` does, on a thread of
    /// its own, stopping between batches when the task is cancelled.
    public func classify(encoded images: [Data], names: [String]? = nil, topK: Int = 5, function: ClassificationFunction? = nil,
                         batchSize: Int = 1, limits: ImageLimits = ImageLimits(),
                         progress: (@Sendable (ProgressReport) -> Void)? = nil) async throws -> [Result<[Prediction], Error>] {
        try await runOffPool("cvt-pipeline") { flag in
            let results = self.classify(self.sources(encoded: images, names: names, limits: limits), topK: topK, function: function, batchSize: batchSize,
                                        isCancelled: { flag.isCancelled }, onBatch: { done, _ in progress?(ProgressReport(completed: done, total: images.count)) })
            if flag.isCancelled { throw CancellationError() }
            return results
        }
    }

    /// Classifies image files as a stream: each batch's items as soon as it is done, in input
    /// order. The work stops when the consumer stops iterating or its task is cancelled.
    public func stream(_ paths: [String], topK: Int = 5, function: ClassificationFunction? = nil,
                       batchSize: Int = 1, limits: ImageLimits = ImageLimits()) -> AsyncStream<ClassifiedItem> {
        let (stream, continuation) = AsyncStream.makeStream(of: ClassifiedItem.self)
        let flag = CancellationFlag()
        continuation.onTermination = { _ in flag.cancel() }
        let thread = Thread {
            _ = self.classify(self.sources(paths, limits: limits), topK: topK, function: function, batchSize: batchSize,
                              isCancelled: { flag.isCancelled }, onBatch: { _, items in
                                  for item in items { continuation.yield(item) }
                              })
            continuation.finish()
        }
        thread.name = "cvt-pipeline"
        thread.start()
        return stream
    }
}

extension Evaluator {
    /// `evaluate` on a thread of its own; stops between batches, throwing `CancellationError`,
    /// when the task is cancelled.
    public static func evaluate(pipeline: ImageClassificationPipeline, count: Int, batchSize: Int,
                                image: @escaping @Sendable (Int) throws -> RGBImage, label: @escaping @Sendable (Int) -> Int,
                                progress: (@Sendable (ProgressReport) -> Void)? = nil) async throws -> EvaluationResult {
        try await runOffPool("cvt-evaluate") { flag in
            try evaluate(pipeline: pipeline, count: count, batchSize: batchSize, image: image, label: label,
                         progress: { done, total in
                             if flag.isCancelled { throw CancellationError() }
                             progress?(ProgressReport(completed: done, total: total))
                         })
        }
    }
}

extension Trainer {
    /// `run` on a thread of its own. Cancelling the task stops the run as `hooks.shouldStop` does:
    /// after the current step, with a checkpoint written, returning `.interrupted`.
    public func run(resumeFrom: URL? = nil, hooks: TrainerHooks = TrainerHooks()) async throws -> TrainOutcome {
        try await runOffPool("cvt-train") { flag in
            var h = hooks
            let asked = hooks.shouldStop
            h.shouldStop = { flag.isCancelled || asked?() == true }
            return try self.run(resumeFrom: resumeFrom, hooks: h)
        }
    }
}
