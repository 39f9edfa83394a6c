import CvtKit
import Foundation
import XCTest

final class EvaluationTests: XCTestCase {
    var tmp: URL!
    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-eval-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: tmp) }

    func idx(_ type: UInt8, _ dims: [Int], _ values: [UInt8]) -> Data {
        var d = Data([0, 0, type, UInt8(dims.count)])
        for v in dims { d += [UInt8(v >> 24 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
        return d + values
    }

    func writeIDX(count: Int, labels: [UInt8]? = nil, imageBytes: Int? = nil) throws {
        let pixels = (0..<(imageBytes ?? count * 28 * 28)).map { UInt8($0 % 251) }
        try idx(0x08, [count, 28, 28], pixels).write(to: tmp.appendingPathComponent("t10k-images-idx3-ubyte"))
        try idx(0x08, [labels?.count ?? count], labels ?? (0..<count).map { UInt8($0 % 10) }).write(to: tmp.appendingPathComponent("t10k-labels-idx1-ubyte"))
    }

    func testIDXReaderPlainAndErrors() throws {
        try writeIDX(count: 3)
        let set = try IDXDataset(url: tmp)
        XCTAssertEqual(set.count, 3)
        XCTAssertEqual(set.labels, [0, 1, 2])
        let img = set.image(1)
        XCTAssertEqual(img.width, 28); XCTAssertEqual(img.pixels.count, 28 * 28 * 3)
        XCTAssertEqual(Array(img.pixels[0..<3]), [UInt8(784 % 251), UInt8(784 % 251), UInt8(784 % 251)], "grey replicated to RGB")

        try writeIDX(count: 3, imageBytes: 3 * 28 * 28 - 5)  // truncated pixels
        XCTAssertThrowsError(try IDXDataset(url: tmp)) { XCTAssertTrue("\($0)".contains("t10k-images-idx3-ubyte") && "\($0)".contains("holds"), "\($0)") }
        try writeIDX(count: 3, labels: [1, 2])  // label count mismatch
        XCTAssertThrowsError(try IDXDataset(url: tmp)) { XCTAssertTrue("\($0)".contains("2 labels for 3 images"), "\($0)") }
        try Data("hello".utf8).write(to: tmp.appendingPathComponent("t10k-labels-idx1-ubyte"))
        XCTAssertThrowsError(try IDXDataset(url: tmp)) { XCTAssertTrue("\($0)".contains("t10k-labels-idx1-ubyte"), "\($0)") }
        try Data([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).write(to: tmp.appendingPathComponent("t10k-labels-idx1-ubyte"))
        XCTAssertThrowsError(try IDXDataset(url: tmp)) { XCTAssertTrue("\($0)".contains("gzip"), "\($0)") }
        XCTAssertThrowsError(try IDXDataset(url: tmp.appendingPathComponent("nope")))
    }

    /// The Debian package's gzipped files (installed by Scripts/setup.sh).
    func testFashionMNISTFromDebianPackage() throws {
        let set = try IDXDataset(url: URL(fileURLWithPath: "/usr/share/datasets/fashion-mnist"))
        XCTAssertEqual(set.count, 10_000)
        XCTAssertEqual(set.width, 28)
        XCTAssertEqual(Set(set.labels), Set(0..<10))
        XCTAssertEqual(set.labels.prefix(5), [9, 2, 1, 1, 6], "first test labels: ankle boot, pullover, trouser, trouser, shirt")
        let train = try IDXDataset(url: URL(fileURLWithPath: "/usr/share/datasets/fashion-mnist"), split: "train")
        XCTAssertEqual(train.count, 60_000)
    }

    func testImageFolderMapsByNameAndRejectsUnknownFolders() throws {
        let labels = [0: "cat", 1: "T-shirt/top", 2: "rocket"]
        let images = fixturesRoot.appendingPathComponent("images")
        for (folder, file) in [("rocket", "rocket.jpg"), ("T-shirt_top", "coffee.png"), ("cat", "chelsea_small.jpg")] {
            try FileManager.default.createDirectory(at: tmp.appendingPathComponent(folder), withIntermediateDirectories: true)
            try FileManager.default.copyItem(at: images.appendingPathComponent(file), to: tmp.appendingPathComponent("\(folder)/\(file)"))
        }
        let set = try ImageFolderDataset(url: tmp, id2label: labels)
        // Sorted folders are T-shirt_top, cat, rocket; labels still come from the names.
        XCTAssertEqual(set.items.map(\.label), [1, 0, 2])
        try FileManager.default.createDirectory(at: tmp.appendingPathComponent("dog"), withIntermediateDirectories: true)
        XCTAssertThrowsError(try ImageFolderDataset(url: tmp, id2label: labels)) { error in
            XCTAssertTrue("\(error)".contains("dog") && "\(error)".contains("is not one of the model's labels"), "\(error)")
        }
    }

    func testSmallEvaluationCountsCorrectly() throws {
        let pipeline = try ImageClassificationPipeline(model: fixturesRoot.appendingPathComponent("pipeline/single_label"))
        let images = fixturesRoot.appendingPathComponent("images")
        let files = ["rocket.jpg", "coffee.png", "chelsea_small.jpg", "chelsea_tall.jpg"]
        let decoded = try files.map { try ImageDecoder.load(contentsOf: images.appendingPathComponent($0)) }
        let expected = try pipeline(images: decoded, topK: 1).map { $0[0].label }
        let truth = [2, 1, 0, 0]  // rocket, coffee, cat, cat
        let result = try Evaluator.evaluate(pipeline: pipeline, count: 4, batchSize: 3, image: { decoded[$0] }, label: { truth[$0] })
        let id = Dictionary(uniqueKeysWithValues: pipeline.model.config.id2label.map { ($1, $0) })
        let predicted = expected.map { id[$0]! }
        XCTAssertEqual(result.predictions, predicted)
        XCTAssertEqual(result.count, 4)
        XCTAssertEqual(result.top1, Double(zip(predicted, truth).filter { $0 == $1 }.count) / 4)
        XCTAssertEqual(result.top5, 1, "3 labels: top-5 always contains the truth")
        XCTAssertEqual(result.confusionMatrix.flatMap { $0 }.reduce(0, +), 4)
        for (t, p) in zip(truth, predicted) { XCTAssertGreaterThan(result.confusionMatrix[t][p], 0) }
        XCTAssertEqual(result.perClass.map(\.count), [2, 1, 1])
        XCTAssertThrowsError(try Evaluator.evaluate(pipeline: pipeline, count: 1, batchSize: 1, image: { decoded[$0] }, label: { _ in 7 }))
    }

    /// The bundled model agrees with transformers (models/cvt-fashion-mnist/eval_reference.json,
    /// written by the training script) image by image on the Fashion-MNIST test set.
    func testBundledModelAgreesWithTransformersOnFashionMNIST() throws {
        let modelDir = fixturesRoot.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("models/cvt-fashion-mnist")
        struct Reference: Decodable { var top1: Double; var predictions: [Int] }
        let reference = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: modelDir.appendingPathComponent("eval_reference.json")))
        let set = try IDXDataset(url: URL(fileURLWithPath: "/usr/share/datasets/fashion-mnist"))
        let pipeline = try ImageClassificationPipeline(model: modelDir)
        // A tenth of the test set keeps the debug-build test short; CVT_EVAL_IMAGES=10000 checks them all.
        let n = min(10000, Int(ProcessInfo.processInfo.environment["CVT_EVAL_IMAGES"] ?? "") ?? 1000)
        let result = try Evaluator.evaluate(pipeline: pipeline, count: n, batchSize: 100, image: { set.image($0) }, label: { set.labels[$0] })
        let agree = zip(result.predictions, reference.predictions.prefix(n)).filter { $0 == $1 }.count
        print("bundled model: \(agree) of \(n) predictions equal transformers'; top-1 \(result.top1)")
        XCTAssertGreaterThanOrEqual(Double(agree) / Double(n), 0.999, "\(n - agree) of \(n) predictions differ from transformers")
        XCTAssertGreaterThan(result.top1, 0.88, "accuracy on the first \(n) test images")
    }
}
