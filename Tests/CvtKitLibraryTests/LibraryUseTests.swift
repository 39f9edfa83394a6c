// What a Swift 6 app sees: only `import CvtKit` (no @testable, no @preconcurrency), models and
// pipelines shared between tasks, async calls that can be cancelled.
import CvtKit
import Foundation
import Synchronization
import XCTest

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let bundledModel = repositoryRoot.appendingPathComponent("models/cvt-fashion-mnist")
let sampleImages: [String] = {
    let folder = bundledModel.appendingPathComponent("samples")
    let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
    return names.filter { $0.hasSuffix(".png") }.sorted().map { folder.appendingPathComponent($0).path }
}()

func scores(_ results: [Result<[Prediction], Error>]) throws -> [[Float]] {
    try results.map { try $0.get().map(\.score) }
}

final class PerModelStateTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipIf(sampleImages.count < 4, "the bundled model's samples are missing")
    }

    /// Loading a pipeline in bfloat16 leaves an earlier float32 one in float32, also on a shared engine.
    func testDTypeOfOneModelDoesNotChangeAnother() throws {
        let paths = Array(sampleImages.prefix(4))
        let fp32 = try ImageClassificationPipeline(model: bundledModel)
        let before = try scores(fp32.classify(paths, topK: 3))
        _ = try ImageClassificationPipeline(model: bundledModel, dtype: .bfloat16)
        XCTAssertEqual(try scores(fp32.classify(paths, topK: 3)), before, "a bfloat16 pipeline changed a float32 one")

        let shared = try Engine()
        let a = try ImageClassificationPipeline(model: bundledModel, engine: shared)
        let sharedBefore = try scores(a.classify(paths, topK: 3))
        let b = try ImageClassificationPipeline(model: bundledModel, engine: shared, dtype: .bfloat16)
        let bf16 = try scores(b.classify(paths, topK: 3))
        XCTAssertEqual(try scores(a.classify(paths, topK: 3)), sharedBefore, "a bfloat16 model changed a float32 one on the same engine")
        XCTAssertEqual(sharedBefore, before)
        XCTAssertNotEqual(bf16, before, "bfloat16 gave float32's exact scores: was it applied?")
        XCTAssertEqual(b.model.precision, .bfloat16)
        XCTAssertEqual(shared.precision, .float32)
    }

    /// Thread counts belong to the engine they are set on.
    func testThreadsBelongToTheirEngine() throws {
        let one = try Engine(threads: 1)
        let model = try CvtForImageClassification(pretrained: bundledModel, engine: one)
        let other = try CvtForImageClassification(pretrained: bundledModel)
        XCTAssertFalse(model.engine === other.engine, "models share an engine nobody passed them")
        let otherThreads = other.engine.threads
        _ = try Engine.shared()
        _ = try Engine(threads: 3)
        XCTAssertEqual(one.threads, 1)
        XCTAssertEqual(other.engine.threads, otherThreads)
        let processor = ConvNextImageProcessor(config: try JSONDecoder().decode(PreprocessorConfig.self, from: Data(contentsOf: bundledModel.appendingPathComponent("preprocessor_config.json"))))
        let x = try processor(sampleImages.prefix(4).map { try ImageDecoder.load(contentsOf: URL(fileURLWithPath: $0)) })
        XCTAssertEqual(try model.logits(x).scalars, try other.logits(x).scalars, "1 and \(otherThreads) threads disagree")
    }

    /// transformers initialises a model made from a config randomly; so do we (seeded).
    func testModelFromConfigIsRandomlyInitialized() throws {
        let config = try CvtConfig.decode(Data(contentsOf: bundledModel.appendingPathComponent("config.json")))
        let a = try CvtForImageClassification(config: config), b = try CvtForImageClassification(config: config)
        let c = try CvtForImageClassification(config: config, seed: 7)
        let (sa, sb, sc) = (try a.stateDict(), try b.stateDict(), try c.stateDict())
        let key = "classifier.weight"
        let w = try XCTUnwrap(sa.tensors[key]).scalars
        XCTAssertGreaterThan(w.map { abs($0) }.max() ?? 0, 0, "\(key) is all zero")
        let std = (w.map { $0 * $0 }.reduce(0, +) / Float(w.count)).squareRoot()
        XCTAssertEqual(std, Float(config.initializerRange), accuracy: Float(config.initializerRange) * 0.2)
        XCTAssertEqual(sa.tensors[key]?.scalars, sb.tensors[key]?.scalars, "same seed, different weights")
        XCTAssertNotEqual(sa.tensors[key]?.scalars, sc.tensors[key]?.scalars, "another seed, same weights")
        XCTAssertEqual(sa.tensors["layernorm.weight"]?.scalars.allSatisfy { $0 == 1 }, true)
        XCTAssertEqual(sa.tensors["classifier.bias"]?.scalars.allSatisfy { $0 == 0 }, true)
    }

    /// A pipeline saved and loaded again preprocesses and scores as before, without warnings;
    /// config.json records the dtype the weights were saved in.
    func testSavedPipelineRoundTrips() throws {
        let pipeline = try ImageClassificationPipeline(model: bundledModel)
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-saved-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: out) }
        try pipeline.savePretrained(to: out)
        let again = try ImageClassificationPipeline(model: out)
        XCTAssertEqual(again.warnings, [])
        XCTAssertEqual(again.processor.config, pipeline.processor.config)
        let paths = Array(sampleImages.prefix(3))
        XCTAssertEqual(try scores(again.classify(paths)), try scores(pipeline.classify(paths)))

        try pipeline.model.savePretrained(to: out, dtype: .bf16)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("config.json"))) as? [String: Any]
        XCTAssertEqual(json?["dtype"] as? String, "bfloat16")
        let saved = try SafetensorsFile(url: out.appendingPathComponent("model.safetensors"))
        XCTAssertEqual(saved.info("classifier.weight")?.dtype, .bf16)
    }
}

final class ConcurrencyTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipIf(sampleImages.count < 8, "the bundled model's samples are missing")
    }

    /// Four tasks share one pipeline (batches of 2): every result equals the serial one.
    func testTasksShareOnePipeline() async throws {
        let pipeline = try ImageClassificationPipeline(model: bundledModel)
        let paths = Array(sampleImages.prefix(8))
        let serial = try scores(await pipeline.classify(paths, topK: 10, batchSize: 2))
        let results = try await withThrowingTaskGroup(of: (Int, [[Float]]).self) { group in
            for t in 0..<4 {
                group.addTask {
                    let order = t % 2 == 0 ? paths : paths.reversed()
                    var got = try scores(await pipeline.classify(order, topK: 10, batchSize: 2))
                    if t % 2 == 1 { got.reverse() }
                    return (t, got)
                }
            }
            var all: [(Int, [[Float]])] = []
            for try await r in group { all.append(r) }
            return all
        }
        XCTAssertEqual(results.count, 4)
        for (t, got) in results { XCTAssertEqual(got, serial, "task \(t)") }
    }

    /// Engine settings may be changed while another thread computes (the change waits its turn).
    func testSettingsChangeDuringCalls() async throws {
        let pipeline = try ImageClassificationPipeline(model: bundledModel)
        let engine = pipeline.model.engine
        let paths = Array(sampleImages.prefix(8))
        let expected = try scores(await pipeline.classify(paths, topK: 10, batchSize: 4))
        async let computed = pipeline.classify(paths, topK: 10, batchSize: 4)
        for i in 0..<50 {
            engine.imagesPerPart = i % 2 == 0 ? 4 : 2
            engine.profile = false
            _ = engine.threads
        }
        let got = try scores(try await computed)
        XCTAssertEqual(got, expected)
    }
}

/// The synchronous call, from an async context.
func syncClassify(_ p: ImageClassificationPipeline, _ paths: [String], batchSize: Int) -> [Result<[Prediction], Error>] {
    p.classify(paths, batchSize: batchSize)
}

final class AsyncAndCancellationTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipIf(sampleImages.count < 4, "the bundled model's samples are missing")
    }

    func testAsyncClassifyReportsProgressAndMatchesTheSyncCall() async throws {
        let pipeline = try ImageClassificationPipeline(model: bundledModel)
        let paths = Array(sampleImages.prefix(5)) + ["/nonexistent.png"]
        let seen = Mutex<[ProgressReport]>([])
        let results = try await pipeline.classify(paths, batchSize: 2) { p in seen.withLock { $0.append(p) } }
        let reports = seen.withLock { $0 }
        XCTAssertEqual(reports.last, ProgressReport(completed: 6, total: 6))
        XCTAssertEqual(reports.map(\.completed), reports.map(\.completed).sorted(), "progress went backwards")
        let sync = syncClassify(pipeline, paths, batchSize: 2)
        XCTAssertEqual(try scores(Array(results.prefix(5))), try scores(Array(sync.prefix(5))))
        guard case .failure = results[5] else { return XCTFail("a missing file was classified") }
    }

    func testStreamYieldsEveryItemInOrder() async throws {
        let pipeline = try ImageClassificationPipeline(model: bundledModel)
        let paths = Array(sampleImages.prefix(4)) + ["/nonexistent.png"] + Array(sampleImages.prefix(2))
        var indices: [Int] = []
        var failures = 0
        for await item in pipeline.stream(paths, batchSize: 2) {
            indices.append(item.index)
            if case .failure = item.result { failures += 1 }
        }
        XCTAssertEqual(indices, Array(paths.indices))
        XCTAssertEqual(failures, 1)
    }

    /// Cancelling the task stops the work between batches with CancellationError.
    func testCancelledClassifyStopsEarly() async throws {
        let pipeline = try ImageClassificationPipeline(model: bundledModel)
        let paths = Array(repeating: sampleImages, count: 400).flatMap { $0 }
        let batches = Mutex(0)
        let task = Task {
            try await pipeline.classify(paths, batchSize: 1) { _ in batches.withLock { $0 += 1 } }
        }
        while batches.withLock({ $0 }) < 2 { try await Task.sleep(nanoseconds: 1_000_000) }
        task.cancel()
        do {
            _ = try await task.value
            XCTFail("a cancelled classification returned results")
        } catch is CancellationError {}
        XCTAssertLessThan(batches.withLock { $0 }, paths.count, "ran to the end")
    }

    func testCancelledEvaluationThrowsCancellationError() async throws {
        let pipeline = try ImageClassificationPipeline(model: bundledModel)
        let images = try sampleImages.prefix(4).map { try ImageDecoder.load(contentsOf: URL(fileURLWithPath: $0)) }
        let count = 4000
        let done = Mutex(0)
        let task = Task {
            try await Evaluator.evaluate(pipeline: pipeline, count: count, batchSize: 4,
                                         image: { images[$0 % images.count] }, label: { _ in 0 },
                                         progress: { p in done.withLock { $0 = p.completed } })
        }
        while done.withLock({ $0 }) < 8 { try await Task.sleep(nanoseconds: 1_000_000) }
        task.cancel()
        do {
            _ = try await task.value
            XCTFail("a cancelled evaluation returned a result")
        } catch is CancellationError {}
        XCTAssertLessThan(done.withLock { $0 }, count)
    }

    /// Cancelling an async training run stops it after a step, at a checkpoint, as Ctrl-C does.
    func testCancelledTrainingEndsInterruptedAtACheckpoint() async throws {
        var config = try CvtConfig.decode(Data(contentsOf: bundledModel.appendingPathComponent("config.json")))
        config.depth = [1, 1, 1]
        let model = try CvtForImageClassification(config: config, seed: 1)
        var rng = SplitMix64(seed: 3)
        let n = 8
        let data = TrainingTensors(pixelValues: Tensor(shape: [n, 3, 28, 28]) { _ in rng.nextGaussian() },
                                   labels: .classIndices((0..<n).map { $0 % config.numLabels }))
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-async-train-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: out) }
        var args = TrainingArguments()
        args.outputDir = out.path
        args.maxSteps = 100_000
        args.perDeviceTrainBatchSize = 4
        args.saveStrategy = .no
        let trainer = try Trainer(model: model, args: args, trainSource: TensorBatchSource(data))
        let steps = Mutex(0)
        let task = Task {
            var hooks = TrainerHooks()
            hooks.onStep = { _ in steps.withLock { $0 += 1 } }
            return try await trainer.run(hooks: hooks)
        }
        while steps.withLock({ $0 }) < 3 { try await Task.sleep(nanoseconds: 1_000_000) }
        task.cancel()
        let outcome = try await task.value
        guard case .interrupted(let step, let checkpoint) = outcome else { return XCTFail("not interrupted: \(outcome)") }
        XCTAssertGreaterThanOrEqual(step, 3)
        XCTAssertLessThan(step, 100_000)
        XCTAssertTrue(FileManager.default.fileExists(atPath: checkpoint.appendingPathComponent("model.safetensors").path), checkpoint.path)
    }
}
