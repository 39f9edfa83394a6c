@testable import CvtKit
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Synchronization
import XCTest

/// The fine-tuning workflow: data sets, split, augmentation, resume, interruption, bad data and
/// the output folder of `cvt train`.
final class FineTuningTests: XCTestCase {
    let fm = FileManager.default

    func scratch(_ name: String) -> URL {
        fm.temporaryDirectory.appendingPathComponent("cvt-ft-\(name)-\(UUID().uuidString)")
    }

    var images: URL { fixturesRoot.appendingPathComponent("images") }

    /// An image folder: label → fixture image names.
    func makeFolder(_ layout: [String: [String]], at root: URL? = nil) throws -> URL {
        let root = root ?? scratch("folder")
        for (label, files) in layout {
            let d = root.appendingPathComponent(label)
            try fm.createDirectory(at: d, withIntermediateDirectories: true)
            for f in files { try fm.copyItem(at: images.appendingPathComponent(f), to: d.appendingPathComponent(f)) }
        }
        return root
    }

    /// Two labels of small real images (8 PNG + 1 JPEG).
    func smallFolder() throws -> URL {
        try makeFolder(["cat": ["orient_1.png", "orient_2.png", "orient_3.png", "orient_4.png", "chelsea_small.jpg"],
                        "dog": ["orient_5.png", "orient_6.png", "orient_7.png", "orient_8.png"]])
    }

    /// Uncompressed IDX images + labels for `split`.
    func writeIDX(_ dir: URL, split: String, labels: [UInt8], size: Int = 12) throws {
        try fm.createDirectory(at: dir, withIntermediateDirectories: true)
        func be(_ v: Int) -> [UInt8] { [UInt8(v >> 24 & 255), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }
        var img: [UInt8] = [0, 0, 8, 3] + be(labels.count) + be(size) + be(size)
        for (i, l) in labels.enumerated() { img += (0..<(size * size)).map { UInt8(truncatingIfNeeded: $0 * (Int(l) + 1) + i) } }
        try Data(img).write(to: dir.appendingPathComponent("\(split)-images-idx3-ubyte"))
        try Data([0, 0, 8, 1] + be(labels.count) + labels).write(to: dir.appendingPathComponent("\(split)-labels-idx1-ubyte"))
    }

    // MARK: data

    func testImageFolderLabelsAreSortedByCodePointAndNestedFilesCount() throws {
        let root = try makeFolder(["b": ["orient_1.png"], "a": ["orient_2.png"], "C": ["orient_3.png"], "é": ["orient_4.png"]])
        try fm.createDirectory(at: root.appendingPathComponent("b/sub"), withIntermediateDirectories: true)
        try fm.copyItem(at: images.appendingPathComponent("orient_5.png"), to: root.appendingPathComponent("b/sub/x.png"))
        try Data("x".utf8).write(to: root.appendingPathComponent("a/.DS_Store"))
        let d = try ImageFolderTrainingDataset(url: root)
        XCTAssertEqual(d.labelNames, ["C", "a", "b", "é"])  // Python's sorted(): code points
        XCTAssertEqual(d.count, 5)
        XCTAssertEqual((0..<d.count).map { d.label(at: $0) }, [0, 1, 2, 2, 3])
        XCTAssertTrue(d.itemName(3).hasSuffix("b/sub/x.png"), d.itemName(3))
        // A validation folder is read against the training labels.
        let val = try makeFolder(["b": ["orient_6.png"]])
        let v = try ImageFolderTrainingDataset(url: val, labelNames: d.labelNames)
        XCTAssertEqual(v.label(at: 0), 2)
        let wrong = try makeFolder(["zebra": ["orient_6.png"]])
        XCTAssertThrowsError(try ImageFolderTrainingDataset(url: wrong, labelNames: d.labelNames)) {
            XCTAssertTrue("\($0)".contains("zebra") && "\($0)".contains("not one of the training labels"), "\($0)")
        }
    }

    func testEmptyLabelFolderAndSingleClassAreErrors() throws {
        let root = try makeFolder(["a": ["orient_1.png"]])
        XCTAssertThrowsError(try ImageFolderTrainingDataset(url: root)) { XCTAssertTrue("\($0)".contains("single label folder"), "\($0)") }
        try fm.createDirectory(at: root.appendingPathComponent("b"), withIntermediateDirectories: true)
        XCTAssertThrowsError(try ImageFolderTrainingDataset(url: root)) {
            XCTAssertTrue("\($0)".contains("/b") && "\($0)".contains("empty label folder"), "\($0)")
        }
    }

    func testBadImagesAreFoundBeforeTrainingAndNamed() throws {
        let root = try makeFolder(["a": ["orient_1.png", "not_an_image.jpg"], "b": ["orient_2.png", "empty.jpg"]])
        // A truncated PNG.
        let png = try Data(contentsOf: images.appendingPathComponent("chelsea_palette4.png"))
        try png.prefix(png.count / 2).write(to: root.appendingPathComponent("b/truncated.png"))
        let d = try ImageFolderTrainingDataset(url: root)
        let bad = d.findBadImages()
        XCTAssertEqual(bad.map { URL(fileURLWithPath: $0.name).lastPathComponent }, ["not_an_image.jpg", "empty.jpg", "truncated.png"])
        var kept = d
        kept.remove(Set(bad.map(\.index)))
        XCTAssertEqual(kept.count, 2)
        XCTAssertTrue(kept.findBadImages().isEmpty)
    }

    func testIDXFolderReadsNamesAndRejectsSingleClass() throws {
        let dir = scratch("idx")
        try writeIDX(dir, split: "train", labels: [0, 1, 2, 1, 0])
        XCTAssertTrue(IDXTrainingDataset.isIDXFolder(dir))
        let d = try IDXTrainingDataset(url: dir, split: "train", labelNames: ["x", "y", "z"])
        XCTAssertEqual(d.count, 5)
        XCTAssertEqual(d.labelNames, ["x", "y", "z"])
        XCTAssertEqual(d.label(at: 3), 1)
        let img = try d.image(at: 1)
        XCTAssertEqual([img.width, img.height], [12, 12])
        XCTAssertEqual(img[x: 1, y: 0].r, 3)  // value 1·2 + 1
        XCTAssertEqual(try IDXTrainingDataset(url: dir, split: "train", labelNames: nil).labelNames, ["0", "1", "2"])
        XCTAssertThrowsError(try IDXTrainingDataset(url: dir, split: "train", labelNames: ["x", "y"])) { XCTAssertTrue("\($0)".contains("label 2"), "\($0)") }
        let one = scratch("idx1")
        try writeIDX(one, split: "train", labels: [4, 4, 4])
        XCTAssertThrowsError(try IDXTrainingDataset(url: one, split: "train", labelNames: nil)) { XCTAssertTrue("\($0)".contains("single class"), "\($0)") }
    }

    func testTrainValidationSplitIsSeededDisjointAndSizedAsDatasets() throws {
        let a = try DatasetSplit.trainValidation(count: 100, fraction: 0.15, seed: 7)
        XCTAssertEqual(a.validation.count, 15)
        XCTAssertEqual(a.train.count, 85)
        XCTAssertEqual(Set(a.train).union(a.validation), Set(0..<100))
        XCTAssertTrue(Set(a.train).isDisjoint(with: a.validation))
        XCTAssertEqual(try DatasetSplit.trainValidation(count: 100, fraction: 0.15, seed: 7).validation, a.validation)
        XCTAssertNotEqual(try DatasetSplit.trainValidation(count: 100, fraction: 0.15, seed: 8).validation, a.validation)
        XCTAssertEqual(try DatasetSplit.trainValidation(count: 7, fraction: 0.15, seed: 1).validation.count, 2)  // ceil(1.05)
        XCTAssertThrowsError(try DatasetSplit.trainValidation(count: 1, fraction: 0.5, seed: 1))
        XCTAssertThrowsError(try DatasetSplit.trainValidation(count: 10, fraction: 1, seed: 1))
    }

    // MARK: augmentation

    func testRandomResizedCropStaysInItsScaleAndRatioRanges() {
        let (w, h) = (200, 200)
        var rng = SplitMix64(seed: 3)
        var scales: [Double] = [], ratios: [Double] = []
        for _ in 0..<20000 {
            let c = RandomResizedCrop.parameters(width: w, height: h, scale: 0.08...1, ratio: (3.0 / 4)...(4.0 / 3), using: &rng)
            XCTAssertTrue(c.left >= 0 && c.top >= 0 && c.width >= 1 && c.height >= 1 && c.left + c.width <= w && c.top + c.height <= h)
            scales.append(Double(c.width * c.height) / Double(w * h))
            ratios.append(Double(c.width) / Double(c.height))
        }
        // Rounding w and h to integers moves area and ratio by at most about a pixel's worth.
        XCTAssertGreaterThanOrEqual(scales.min()!, 0.08 * 0.95)
        XCTAssertLessThanOrEqual(scales.max()!, 1)
        XCTAssertLessThan(scales.min()!, 0.09)
        XCTAssertGreaterThan(scales.max()!, 0.95)
        XCTAssertGreaterThanOrEqual(ratios.min()!, 0.75 * 0.97)
        XCTAssertLessThanOrEqual(ratios.max()!, 4.0 / 3 * 1.03)
        // log-uniform ratio: about half the crops are wider than tall.
        let wide = Double(ratios.filter { $0 > 1 }.count) / Double(ratios.count)
        XCTAssertEqual(wide, 0.5, accuracy: 0.03)
        // Ten failed tries fall back to the central crop with the ratio clamped (torchvision).
        var r2 = SplitMix64(seed: 1)
        let c = RandomResizedCrop.parameters(width: 400, height: 100, scale: 2...3, ratio: 0.5...2, using: &r2)
        XCTAssertEqual([c.left, c.top, c.width, c.height], [100, 0, 200, 100])
    }

    func testFlipRateAndPerImageStreams() throws {
        let img = RGBImage(width: 8, height: 4) { x, _ in (UInt8(x * 30), 0, 0) }
        var config = PreprocessorConfig.cvt13Default
        config.size = .shortestEdge(4); config.cropPct = 1
        let p = ConvNextImageProcessor(config: config)
        let aug = Augmentation.randomResizedCrop(scale: 1...1, ratio: 2...2, flip: true)
        var flips = 0
        let n = 4000
        for i in 0..<n {
            var rng = augmentationGenerator(seed: 5, epoch: 0, index: i)
            let out = try aug.apply(img, processor: p, width: 8, height: 4, using: &rng)
            if out[x: 0, y: 0].r > out[x: 7, y: 0].r { flips += 1 }
        }
        // Binomial(4000, 0.5): sd ≈ 32; 4 sd.
        XCTAssertEqual(Double(flips), Double(n) / 2, accuracy: 126)
        // Same (seed, epoch, index) → same draw; another epoch → another stream.
        var a = augmentationGenerator(seed: 5, epoch: 3, index: 9), b = augmentationGenerator(seed: 5, epoch: 3, index: 9)
        var c = augmentationGenerator(seed: 5, epoch: 4, index: 9)
        let first = a.next()
        XCTAssertEqual(first, b.next())
        XCTAssertNotEqual(first, c.next())
    }

    func testPadCropShiftsWithinThePadding() throws {
        let img = RGBImage(width: 6, height: 6) { _, _ in (200, 200, 200) }
        var config = PreprocessorConfig.cvt13Default
        config.size = .shortestEdge(6); config.cropPct = 1
        let p = ConvNextImageProcessor(config: config)
        var seen = Set<Int>()
        for i in 0..<400 {
            var rng = augmentationGenerator(seed: 1, epoch: 0, index: i)
            let out = try Augmentation.padCrop(padding: 2, flip: false).apply(img, processor: p, width: 6, height: 6, using: &rng)
            let blackColumns = (0..<6).filter { out[x: $0, y: 3].r == 0 }.count
            XCTAssertLessThanOrEqual(blackColumns, 2)
            seen.insert(blackColumns)
        }
        XCTAssertEqual(seen, [0, 1, 2])
    }

    // MARK: trainer: resume and interruption

    func tinyModel(labels: Int = 2) throws -> CvtForImageClassification {
        let base = try CvtForImageClassification(pretrained: fixturesRoot.appendingPathComponent("training/gradients/tiny_ce"))
        return try base.withLabels((0..<labels).map { "c\($0)" }, ignoreMismatchedSizes: true, seed: 11)
    }

    func source(_ seed: UInt64 = 9) throws -> (ImageBatchSource, ImageBatchSource) {
        let dir = scratch("idx-train")
        try writeIDX(dir, split: "train", labels: [0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0], size: 40)
        let d = try IDXTrainingDataset(url: dir, split: "train", labelNames: ["c0", "c1"])
        var config = PreprocessorConfig.cvt13Default
        config.size = .shortestEdge(64); config.cropPct = 1  // K/V grid of the last stage 2×2: BatchNorm sees > 1 value per channel
        let p = ConvNextImageProcessor(config: config)
        return (try ImageBatchSource(dataset: DatasetSubset(d, indices: Array(0..<9)), processor: p, augmentation: .example, seed: seed),
                try ImageBatchSource(dataset: DatasetSubset(d, indices: Array(9..<12)), processor: p, augmentation: .none, seed: 0))
    }

    func arguments(_ out: URL) -> TrainingArguments {
        var a = TrainingArguments()
        a.outputDir = out.path
        a.numTrainEpochs = 3; a.perDeviceTrainBatchSize = 2; a.perDeviceEvalBatchSize = 2
        a.learningRate = 3e-3; a.lrSchedulerType = try! SchedulerType(name: "cosine"); a.warmupSteps = 2
        a.gradientAccumulationSteps = 2; a.weightDecay = 0.05
        a.evalStrategy = .epoch; a.saveStrategy = .steps; a.saveSteps = 2; a.loggingSteps = 1
        return a
    }

    func weights(_ m: CvtForImageClassification) throws -> [String: [Float]] {
        try m.stateDict().tensors.mapValues(\.scalars)
    }

    /// With augmentation and shuffling on, an interrupted run resumed from its checkpoint ends
    /// with the same weights, optimizer state and log as an uninterrupted one, bit for bit.
    func testResumedRunEqualsUninterruptedRunExactly() throws {
        let (train, eval) = try source()
        let outA = scratch("a")
        let a = try Trainer(model: tinyModel(), args: arguments(outA), trainSource: train, evalSource: eval)
        XCTAssertEqual(try a.run(), .completed)
        XCTAssertEqual(a.globalStep, 9)  // 5 micro-batches per epoch → 3 steps per epoch

        // Stop after step 4 (mid-epoch, off the save interval): a checkpoint is written there.
        let outB = scratch("b")
        let b = try Trainer(model: tinyModel(), args: arguments(outB), trainSource: train, evalSource: eval)
        var hooks = TrainerHooks()
        let steps = Mutex(0)
        hooks.onStep = { _ in steps.withLock { $0 += 1 } }
        hooks.shouldStop = { steps.withLock { $0 } >= 4 }
        guard case let .interrupted(step, checkpoint) = try b.run(hooks: hooks) else { return XCTFail("not interrupted") }
        XCTAssertEqual(step, 4)
        XCTAssertEqual(checkpoint.lastPathComponent, "checkpoint-4")
        for f in ["config.json", "model.safetensors", "optimizer.safetensors", "scheduler.json", "rng_state.json", "trainer_state.json", "training_args.json"] {
            XCTAssertTrue(fm.fileExists(atPath: checkpoint.appendingPathComponent(f).path), f)
        }
        XCTAssertFalse(try fm.contentsOfDirectory(atPath: outB.path).contains { $0.contains("partial") })

        let c = try Trainer(model: tinyModel(labels: 2), args: arguments(outB), trainSource: train, evalSource: eval)
        XCTAssertEqual(try c.run(resumeFrom: checkpoint), .completed)
        XCTAssertEqual(c.globalStep, 9)
        let wa = try weights(a.model), wc = try weights(c.model)
        XCTAssertEqual(Set(wa.keys), Set(wc.keys))
        for (k, v) in wa { XCTAssertEqual(v, wc[k], "weights of \(k) differ after resuming") }
        XCTAssertEqual(a.optimizer.state.mapValues(\.step), c.optimizer.state.mapValues(\.step))
        XCTAssertEqual(a.optimizer.stateDict()["classifier.weight.exp_avg_sq"]?.scalars, c.optimizer.stateDict()["classifier.weight.exp_avg_sq"]?.scalars)
        let evalsA = a.state.logHistory.filter { $0.values["eval_loss"] != nil }
        let evalsC = c.state.logHistory.filter { $0.values["eval_loss"] != nil }
        XCTAssertEqual(evalsA.map { $0.values["eval_accuracy"] }, evalsC.map { $0.values["eval_accuracy"] })
        XCTAssertEqual(evalsA.map { $0.values["eval_loss"] }, evalsC.map { $0.values["eval_loss"] })
        XCTAssertEqual(evalsA.count, 3)
    }

    func testSaveTotalLimitKeepsNewestAndBestAndLoadsBestAtEnd() throws {
        let (train, eval) = try source()
        let out = scratch("limit")
        var args = arguments(out)
        args.saveStrategy = .epoch; args.saveTotalLimit = 1; args.loadBestModelAtEnd = true; args.metricForBestModel = "loss"
        let t = try Trainer(model: tinyModel(), args: args, trainSource: train, evalSource: eval)
        XCTAssertEqual(try t.run(), .completed)
        let kept = Trainer.checkpoints(in: out).map(\.step)
        let best = try XCTUnwrap(t.state.bestGlobalStep)
        XCTAssertEqual(Set(kept), Set([9, best]))
        let losses = t.state.logHistory.compactMap { r in r.values["eval_loss"].map { (r.step, $0) } }
        XCTAssertEqual(best, losses.min { $0.1 < $1.1 }!.0)
        // The model holds the best checkpoint's weights.
        let file = try SafetensorsFile(url: out.appendingPathComponent("checkpoint-\(best)/model.safetensors"))
        XCTAssertEqual(try file.floats("classifier.weight"), try t.model.stateDict().tensors["classifier.weight"]!.scalars)
    }

    /// A checkpoint write that fails half-way (a full disk, a crash) leaves no checkpoint folder
    /// behind and the earlier checkpoints as they were.
    func testAFailedCheckpointWriteLeavesTheEarlierOnesIntact() throws {
        let (train, eval) = try source()
        let out = scratch("atomic")
        let t = try Trainer(model: tinyModel(), args: arguments(out), trainSource: train, evalSource: eval)
        struct DiskFull: Error {}
        var hooks = TrainerHooks()
        hooks.onSave = { _ in
            // After the first checkpoint, every later write fails once its files are written.
            t.beforeCheckpointRename = { partial in
                XCTAssertTrue(FileManager.default.fileExists(atPath: partial.appendingPathComponent("model.safetensors").path))
                throw DiskFull()
            }
        }
        XCTAssertThrowsError(try t.run(hooks: hooks)) { XCTAssertTrue("\($0)".contains("checkpoint-4") && "\($0)".contains("DiskFull"), "\($0)") }
        XCTAssertEqual(Trainer.checkpoints(in: out).map(\.step), [2])
        XCTAssertFalse(try fm.contentsOfDirectory(atPath: out.path).contains { $0.hasPrefix(".checkpoint") })
        // The surviving checkpoint is whole: a run resumes from it.
        let c = try Trainer(model: tinyModel(), args: arguments(scratch("atomic-resume")), trainSource: train, evalSource: eval)
        XCTAssertEqual(try c.run(resumeFrom: out.appendingPathComponent("checkpoint-2")), .completed)
    }

    func testResumeRefusesOtherData() throws {
        let (train, eval) = try source()
        let out = scratch("other")
        let b = try Trainer(model: tinyModel(), args: arguments(out), trainSource: train, evalSource: eval)
        var hooks = TrainerHooks()
        hooks.shouldStop = { true }
        guard case let .interrupted(_, checkpoint) = try b.run(hooks: hooks) else { return XCTFail("not interrupted") }
        let fewer = try ImageBatchSource(dataset: DatasetSubset(train.dataset, indices: [0, 1, 2]), processor: train.processor, augmentation: .none, seed: 0)
        let c = try Trainer(model: tinyModel(), args: arguments(out), trainSource: fewer)
        XCTAssertThrowsError(try c.run(resumeFrom: checkpoint)) { XCTAssertTrue("\($0)".contains("9 examples"), "\($0)") }
    }

    func testMismatchedHeadNeedsTheFlag() throws {
        let base = try CvtForImageClassification(pretrained: fixturesRoot.appendingPathComponent("training/gradients/tiny_ce"))
        XCTAssertThrowsError(try base.withLabels(["a", "b"], ignoreMismatchedSizes: false, seed: 0)) {
            XCTAssertTrue("\($0)".contains("10 labels") && "\($0)".contains("--ignore-mismatched-sizes"), "\($0)")
        }
        // Same count: the classifier is kept and only the names change.
        let names = (0..<10).map { "n\($0)" }
        let same = try base.withLabels(names, ignoreMismatchedSizes: false, seed: 0)
        XCTAssertEqual(same.config.id2label[3], "n3")
        XCTAssertEqual(try same.stateDict().tensors["classifier.weight"]?.scalars, try base.stateDict().tensors["classifier.weight"]?.scalars)
        let replaced = try base.withLabels(["a", "b"], ignoreMismatchedSizes: true, seed: 0)
        XCTAssertEqual(replaced.config.numLabels, 2)
        XCTAssertEqual(try replaced.stateDict().tensors["cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight"]?.scalars,
                       try base.stateDict().tensors["cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight"]?.scalars)
    }

    // MARK: the command

    func tinyProcessor() throws -> URL {
        let dir = scratch("proc")
        try fm.createDirectory(at: dir, withIntermediateDirectories: true)
        var config = PreprocessorConfig.cvt13Default
        config.size = .shortestEdge(64); config.cropPct = 1
        try JSONEncoder().encode(config).write(to: dir.appendingPathComponent("preprocessor_config.json"))
        return dir
    }

    func trainCommand(_ data: URL, _ out: URL, _ extra: [String] = []) throws -> [String] {
        ["train", "--model", fixturesRoot.appendingPathComponent("training/gradients/tiny_ce").path, "--ignore-mismatched-sizes",
         "--image-processor", try tinyProcessor().path, "--train-dir", data.path, "--output-dir", out.path,
         "--per-device-train-batch-size", "2", "--threads", "1", "--learning-rate", "1e-3"] + extra
    }

    func testTrainCommandWritesWhatTrainerWrites() throws {
        let data = try smallFolder(), out = scratch("cmd")
        let r = try runCvt(try trainCommand(data, out, ["--num-train-epochs", "2", "--train-val-split", "0.3", "--logging-steps", "1"]))
        XCTAssertEqual(r.status, 0, r.stderr)
        for f in ["config.json", "model.safetensors", "preprocessor_config.json", "trainer_state.json", "training_args.json",
                  "train_results.json", "eval_results.json", "all_results.json", "training_curves.svg", "README.md"] {
            XCTAssertTrue(fm.fileExists(atPath: out.appendingPathComponent(f).path), "missing \(f)")
        }
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("config.json"))) as! [String: Any]
        XCTAssertEqual(config["id2label"] as? [String: String], ["0": "cat", "1": "dog"])
        XCTAssertEqual(config["label2id"] as? [String: Int], ["cat": 0, "dog": 1])
        let state = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("trainer_state.json"))) as! [String: Any]
        let history = state["log_history"] as! [[String: Any]]
        XCTAssertEqual(history.filter { $0["eval_accuracy"] != nil }.count, 3)  // two epochs + the final evaluation
        XCTAssertEqual(history.filter { $0["loss"] != nil }.count, state["global_step"] as? Int)
        let all = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("all_results.json"))) as! [String: Double]
        XCTAssertNotNil(all["eval_accuracy"]); XCTAssertNotNil(all["train_runtime"]); XCTAssertEqual(all["epoch"], 2)
        XCTAssertEqual(Trainer.checkpoints(in: out).count, 2)
        // The curves are well-formed SVG with the two series; the card gives the command.
        let svg = try Data(contentsOf: out.appendingPathComponent("training_curves.svg"))
        XCTAssertTrue(XMLParser(data: svg).parse())
        XCTAssertEqual(String(decoding: svg, as: UTF8.self).components(separatedBy: "<polyline").count - 1, 3)
        let card = try String(contentsOf: out.appendingPathComponent("README.md"), encoding: .utf8)
        XCTAssertTrue(card.contains("cvt train") && card.contains("training_curves.svg") && card.contains("`cat`"), card)
        // The result classifies with the pipeline, under the folder names.
        let c = try runCvt(["classify", "--model", out.path, images.appendingPathComponent("orient_1.png").path])
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertTrue(c.stdout.contains("cat") && c.stdout.contains("dog"), c.stdout)
        // Training again into the same folder needs an explicit choice.
        let again = try runCvt(try trainCommand(data, out, ["--max-steps", "1"]))
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.stderr.contains("--resume-from-checkpoint") && again.stderr.contains("--overwrite-output-dir"), again.stderr)
    }

    func testBadImagesStopTheRunBeforeTheFirstStepUnlessSkipped() throws {
        let data = try smallFolder()
        try fm.copyItem(at: images.appendingPathComponent("not_an_image.jpg"), to: data.appendingPathComponent("dog/bad.jpg"))
        let out = scratch("bad")
        var r = try runCvt(try trainCommand(data, out, ["--max-steps", "1"]))
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("dog/bad.jpg") && r.stderr.contains("--skip-bad-images"), r.stderr)
        XCTAssertFalse(fm.fileExists(atPath: out.appendingPathComponent("model.safetensors").path))
        r = try runCvt(try trainCommand(data, out, ["--max-steps", "1", "--skip-bad-images", "--json"]))
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("skipping 1 of 10"), r.stderr)
        XCTAssertTrue(r.stdout.contains("\"event\":\"skipped_images\""), r.stdout)
    }

    /// IDX data have no names: a model with as many classes lends its labels, else `--label-names`.
    func testIDXTrainingTakesTheModelsLabelNames() throws {
        let dir = scratch("idx-cli")
        try writeIDX(dir, split: "train", labels: (0..<20).map { UInt8($0 % 10) }, size: 28)
        let bundled = fixturesRoot.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("models/cvt-fashion-mnist")
        func run(_ extra: [String]) throws -> [String: String] {
            let out = scratch("idx-out")
            let r = try runCvt(["train", "--config", bundled.appendingPathComponent("config.json").path, "--train-dir", dir.path,
                                "--output-dir", out.path, "--max-steps", "1", "--per-device-train-batch-size", "4", "--threads", "1",
                                "--train-val-split", "0"] + extra)
            XCTAssertEqual(r.status, 0, r.stderr)
            let config = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("config.json"))) as! [String: Any]
            return config["id2label"] as! [String: String]
        }
        XCTAssertEqual(try run([])["0"], "T-shirt/top")
        let named = try run(["--label-names", (0..<10).map { "n\($0)" }.joined(separator: ",")])
        XCTAssertEqual(named["9"], "n9")
    }

    /// Preprocessed tensors are used whole unless a split is asked for; then a seeded part is held
    /// out and evaluated.
    func testTensorDataSplitOnlyWhenAsked() throws {
        let dir = fixturesRoot.appendingPathComponent("training/trainer/adamw_constant")
        let base = ["train", "--model", dir.path, "--train-data", dir.appendingPathComponent("data.safetensors").path,
                    "--max-steps", "2", "--per-device-train-batch-size", "4", "--threads", "1", "--logging-steps", "1"]
        let whole = scratch("whole"), split = scratch("split")
        var r = try runCvt(base + ["--output-dir", whole.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("on 12 images:"), r.stdout)
        XCTAssertFalse(fm.fileExists(atPath: whole.appendingPathComponent("eval_results.json").path))
        r = try runCvt(base + ["--output-dir", split.path, "--train-val-split", "0.25"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("on 9 images, validating on 3"), r.stdout)
        let e = try JSONSerialization.jsonObject(with: Data(contentsOf: split.appendingPathComponent("eval_results.json"))) as! [String: Any]
        XCTAssertNotNil(e["eval_loss"])
    }

    /// SIGINT during training writes a checkpoint, exits with 130, and the run resumes from it.
    func testSIGINTWritesACheckpointAndTheRunResumes() throws {
        try interruptAndResume(SIGINT)
    }

    /// SIGTERM (what a scheduler or `docker stop` sends) does the same, with status 143.
    func testSIGTERMWritesACheckpointAndTheRunResumes() throws {
        try interruptAndResume(SIGTERM)
    }

    func interruptAndResume(_ signal: Int32) throws {
        let data = try smallFolder(), out = scratch("signal-\(signal)")
        let p = Process()
        p.executableURL = CLITests.executable
        p.arguments = try trainCommand(data, out, ["--max-steps", "100000", "--json", "--eval-strategy", "no", "--save-strategy", "no"])
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        try p.run()
        // Wait for the first step, then interrupt.
        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("\"event\":\"step\"") {
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen += chunk
        }
        kill(p.processIdentifier, signal)
        let rest = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 128 + signal, String(decoding: seen + rest, as: UTF8.self))
        let checkpoints = Trainer.checkpoints(in: out)
        XCTAssertEqual(checkpoints.count, 1)
        let ckpt = try XCTUnwrap(checkpoints.first)
        XCTAssertGreaterThanOrEqual(ckpt.step, 1)
        _ = try CvtForImageClassification(pretrained: ckpt.url)
        let r = try runCvt(try trainCommand(data, out, ["--max-steps", "\(ckpt.step + 2)", "--eval-strategy", "no", "--save-strategy", "no", "--resume-from-checkpoint"]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let state = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("trainer_state.json"))) as! [String: Any]
        XCTAssertEqual(state["global_step"] as? Int, ckpt.step + 2)
    }
}

/// What `cvt train` wrote (Fixtures/finetune/model, by Scripts/make_finetune_fixtures.py) loads in
/// transformers: no missing, unexpected or mis-shaped key, the folder labels as id2label, and the
/// same pixels and logits as ours, for the output folder and its last checkpoint.
final class FineTuningFixtureTests: XCTestCase {
    let root = fixturesRoot.appendingPathComponent("finetune")

    func testTransformersLoadsTheOutputAndItsCheckpoint() throws {
        let info = try JSONSerialization.jsonObject(with: Data(contentsOf: root.appendingPathComponent("transformers.json"))) as! [String: Any]
        let loaded = info["loaded"] as! [String: [String: Any]]
        let reference = try SafetensorsFile(url: root.appendingPathComponent("transformers.safetensors"))
        let probes = (info["probes"] as! [String]).map { fixturesRoot.appendingPathComponent("images/\($0)") }
        XCTAssertEqual(Set(loaded.keys), ["output", "checkpoint"])
        for (name, entry) in loaded {
            for (k, v) in entry["loading_info"] as! [String: [Any]] { XCTAssertTrue(v.isEmpty, "\(name): transformers reports \(k) \(v)") }
            XCTAssertEqual(entry["id2label"] as? [String: String], ["0": "cat", "1": "dog"])
            let folder = root.appendingPathComponent("model").appendingPathComponent(entry["folder"] as! String)
            let pipeline = try ImageClassificationPipeline(model: folder)
            XCTAssertEqual(pipeline.model.config.id2label, [0: "cat", 1: "dog"])
            let pixels = try pipeline.processor(probes.map { try ImageDecoder.load(contentsOf: $0) })
            XCTAssertEqual(pixels.scalars, try reference.tensor("\(name).pixel_values").scalars, "\(name): pixel_values")
            assertGradientClose("\(name).logits", try pipeline.model.logits(pixels), try reference.tensor("\(name).logits"))
        }
    }
}
