import CvtKit
import Foundation
import NIOPosix
import ServiceLifecycle

/// Dynamic batching: images that arrive concurrently (already decoded and resized) wait here and
/// run through the model together, up to `maxBatchSize` images, the oldest waiting at most
/// `maxBatchDelay` for others. Forward passes run one at a time on a thread of their own (the
/// compute engine is shared and not reentrant); while one runs, new images queue up and form the
/// next batch. Images of different models or sizes never share a batch.
///
/// As a `Service` it runs until graceful shutdown, then finishes every queued image and returns.
public actor Batcher: Service {
    struct Job: Sendable {
        let model: ServedModel
        let image: RGBImage
        let topK: Int
        let function: ClassificationFunction?
        let enqueued: ContinuousClock.Instant
        let continuation: CheckedContinuation<[Prediction], any Error>

        func batches(with other: Job) -> Bool {
            model === other.model && image.width == other.image.width && image.height == other.image.height
        }
    }

    public let maxBatchSize: Int
    public let maxBatchDelay: Duration
    let metrics: ServerMetrics?
    /// The model thread: forward passes, and loading models before they are served.
    let modelThread: NIOThreadPool

    private var queue: [Job] = []
    private var wakeUp: CheckedContinuation<Void, Never>?
    private var armedDeadline: ContinuousClock.Instant?
    private var stopping = false
    private var finished = false

    public init(maxBatchSize: Int, maxBatchDelay: Duration, metrics: ServerMetrics? = nil) {
        self.maxBatchSize = max(1, maxBatchSize)
        self.maxBatchDelay = maxBatchDelay
        self.metrics = metrics
        modelThread = NIOThreadPool(numberOfThreads: 1)
        modelThread.start()
    }

    /// Runs `body` on the model thread (e.g. loading a model, so that it never blocks the
    /// concurrency pool's few threads).
    public nonisolated func onModelThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await modelThread.runIfActive(body)
    }

    /// Classifies one prepared image in the next batch of its model.
    public func classify(_ image: RGBImage, model: ServedModel, topK: Int, function: ClassificationFunction?) async throws -> [Prediction] {
        guard !finished else {
            throw ServeError(.serviceUnavailable, "shutting_down", "the server is shutting down", retryAfter: 1)
        }
        return try await withCheckedThrowingContinuation { continuation in
            queue.append(Job(model: model, image: image, topK: topK, function: function, enqueued: .now, continuation: continuation))
            metrics?.queueDepth.record(queue.count)
            signal()
        }
    }

    /// Images waiting for a batch.
    public var queueDepth: Int { queue.count }

    public func run() async throws {
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await loop()
            } onGracefulShutdown: {
                Task { await self.stop() }
            }
        } onCancel: {
            Task { await self.stop() }
        }
        finished = true
        try? await modelThread.shutdownGracefully()
    }

    /// Stops once the queue is empty; queued images are still classified.
    public func stop() {
        stopping = true
        signal()
    }

    private func signal() {
        wakeUp?.resume()
        wakeUp = nil
    }

    private func waitForSignal() async {
        await withCheckedContinuation { wakeUp = $0 }
    }

    private func loop() async {
        while true {
            guard let head = queue.first else {
                if stopping { finished = true; return }
                await waitForSignal()
                continue
            }
            let ready = queue.lazy.filter { $0.batches(with: head) }.prefix(maxBatchSize).count
            if ready < maxBatchSize, !stopping {
                let deadline = head.enqueued.advanced(by: maxBatchDelay)
                if ContinuousClock.now < deadline {
                    armTimer(deadline)
                    await waitForSignal()
                    continue
                }
            }
            var batch: [Job] = [], rest: [Job] = []
            for job in queue {
                if batch.count < maxBatchSize && job.batches(with: head) { batch.append(job) } else { rest.append(job) }
            }
            queue = rest
            metrics?.queueDepth.record(queue.count)
            metrics?.batchSize.record(batch.count)
            let start = ContinuousClock.now
            let results = await execute(batch)
            metrics?.batchDuration.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
            for (job, result) in zip(batch, results) { job.continuation.resume(with: result) }
        }
    }

    private func armTimer(_ deadline: ContinuousClock.Instant) {
        guard armedDeadline != deadline else { return }
        armedDeadline = deadline
        Task {
            try? await Task.sleep(until: deadline, clock: .continuous)
            self.signal()
        }
    }

    private nonisolated func execute(_ batch: [Job]) async -> [Result<[Prediction], any Error>] {
        do {
            let ranked = try await modelThread.runIfActive {
                try batch[0].model.run(batch.map(\.image), options: batch.map { ($0.topK, $0.function) })
            }
            return ranked.map { .success($0) }
        } catch {
            return batch.map { _ in .failure(error) }
        }
    }
}
