import CvtKit
import Foundation
import XCTest

/// transformers' image-classification pipeline outputs (Scripts/make_pipeline_fixtures.py).
final class PipelineTests: XCTestCase {
    struct Expected: Decodable {
        struct Run: Decodable {
            var top_k: Int?
            var function_to_apply: String?
            var results: [[Prediction]]
        }
        struct Model: Decodable { var runs: [Run] }
        var images: [String]
        var models: [String: Model]
    }

    let root = fixturesRoot.appendingPathComponent("pipeline")

    func testBFloat16PipelineSaysWhenItIsEmulated() throws {
        let pipeline = try ImageClassificationPipeline(model: root.appendingPathComponent("single_label"), engine: Engine(), dtype: .bfloat16)
        XCTAssertEqual(pipeline.warnings, Engine.hasNativeBFloat16 ? [] : [InferenceDType.bfloat16EmulationNote])
        let f32 = try ImageClassificationPipeline(model: root.appendingPathComponent("single_label"), engine: Engine())
        XCTAssertEqual(f32.warnings, [])
    }

    func testLabelsAndScoresMatchTransformers() throws {
        let expected = try JSONDecoder().decode(Expected.self, from: Data(contentsOf: root.appendingPathComponent("expected.json")))
        let paths = expected.images.map { fixturesRoot.appendingPathComponent("images/\($0)").path }
        XCTAssertEqual(Set(expected.models.keys), ["single_label", "multi_label", "regression"])
        for (name, model) in expected.models.sorted(by: { $0.key < $1.key }) {
            let pipeline = try ImageClassificationPipeline(model: root.appendingPathComponent(name))
            XCTAssertTrue(pipeline.warnings.isEmpty)
            for run in model.runs {
                let function = try run.function_to_apply.map { try XCTUnwrap(ClassificationFunction(caseInsensitive: $0)) }
                for batchSize in [1, 4] {
                    let got = try pipeline(paths, topK: run.top_k ?? 5, function: function, batchSize: batchSize)
                    XCTAssertEqual(got.count, run.results.count)
                    for (i, (g, e)) in zip(got, run.results).enumerated() {
                        let what = "\(name) top_k=\(String(describing: run.top_k)) fn=\(run.function_to_apply ?? "default") batch=\(batchSize) \(expected.images[i])"
                        XCTAssertEqual(g.map(\.label), e.map(\.label), what)
                        let err = zip(g, e).map { abs($0.score - $1.score) }.max() ?? 0
                        XCTAssertLessThanOrEqual(err, 1e-5, "\(what): max score error \(err); got \(g.prefix(3)), expected \(e.prefix(3))")
                    }
                }
            }
        }
    }

    func testDefaultFunctionFollowsProblemType() {
        var c = CvtConfig()
        c.numLabels = 3
        XCTAssertEqual(ClassificationFunction.default(for: c), .softmax)
        c.problemType = "multi_label_classification"
        XCTAssertEqual(ClassificationFunction.default(for: c), .sigmoid)
        c.problemType = "regression"
        XCTAssertEqual(ClassificationFunction.default(for: c), .none)
        c.problemType = nil; c.numLabels = 1
        XCTAssertEqual(ClassificationFunction.default(for: c), .sigmoid)
        c.numLabels = 0
        XCTAssertEqual(ClassificationFunction.default(for: c), .none)
        XCTAssertEqual(ClassificationFunction(caseInsensitive: "SoftMax"), .softmax)
    }

    func testBadImagesFailAloneAndTheRestAreClassified() throws {
        let pipeline = try ImageClassificationPipeline(model: root.appendingPathComponent("single_label"))
        let images = fixturesRoot.appendingPathComponent("images")
        let paths = ["rocket.jpg", "not_an_image.jpg", "truncated.jpg", "empty.jpg", "huge.png", "coffee.png", "missing.png"]
            .map { images.appendingPathComponent($0).path }
        let results = pipeline.classify(paths, batchSize: 3)
        XCTAssertEqual(results.count, paths.count)
        for (i, r) in results.enumerated() {
            switch (i, r) {
            case (0, .success(let p)), (5, .success(let p)): XCTAssertEqual(p.count, 3, "top-5 clipped to 3 labels")
            case (_, .failure(let e)): XCTAssertTrue("\(e)".contains(URL(fileURLWithPath: paths[i]).lastPathComponent), "\(e)")
            default: XCTFail("\(paths[i]): unexpected \(r)")
            }
        }
    }

    /// Encoded bytes in memory give what the same files give; a bad one fails alone, named.
    func testEncodedImagesFromMemoryEqualFiles() throws {
        let pipeline = try ImageClassificationPipeline(model: root.appendingPathComponent("single_label"))
        let images = fixturesRoot.appendingPathComponent("images")
        let names = ["rocket.jpg", "rocket_exif6.jpg", "coffee.png", "not_an_image.jpg"]
        let fromFiles = pipeline.classify(names.map { images.appendingPathComponent($0).path }, batchSize: 2)
        let bytes = try names.map { try Data(contentsOf: images.appendingPathComponent($0)) }
        let fromMemory = pipeline.classify(encoded: bytes, names: ["a", "b", "c", "upload.jpg"], batchSize: 2)
        for i in 0..<3 {
            let f = try fromFiles[i].get(), m = try fromMemory[i].get()
            XCTAssertEqual(f.map(\.label), m.map(\.label), names[i])
            XCTAssertEqual(f.map(\.score), m.map(\.score), names[i])
        }
        guard case .failure(let e) = fromMemory[3] else { return XCTFail("not an image, yet classified") }
        XCTAssertTrue("\(e)".contains("upload.jpg"), "\(e)")
    }

    /// `cvt classify -` reads the image from standard input.
    func testClassifyReadsStandardInput() throws {
        let image = fixturesRoot.appendingPathComponent("images/coffee.png")
        let p = Process()
        p.executableURL = CLITests.executable
        p.arguments = ["classify", "--model", root.appendingPathComponent("single_label").path, "--json", "-", image.path]
        let input = Pipe(), output = Pipe()
        p.standardInput = input; p.standardOutput = output; p.standardError = FileHandle.nullDevice
        try p.run()
        input.fileHandleForWriting.write(try Data(contentsOf: image))
        try input.fileHandleForWriting.close()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, String(decoding: out, as: UTF8.self))
        let results = try XCTUnwrap(JSONSerialization.jsonObject(with: out) as? [[String: Any]], String(decoding: out, as: UTF8.self))
        XCTAssertEqual(results.count, 2)
        XCTAssertEqual(results[0]["image"] as? String, "-")
        XCTAssertEqual((results[0]["predictions"] as? [[String: Any]])?.first?["label"] as? String,
                       (results[1]["predictions"] as? [[String: Any]])?.first?["label"] as? String)
    }

    func testMissingPreprocessorConfigFallsBackToCvt13WithWarning() throws {
        let pipeline = try ImageClassificationPipeline(model: fixturesRoot.appendingPathComponent("parity/nonsquare_batch"))
        XCTAssertEqual(pipeline.warnings.count, 1)
        XCTAssertEqual(pipeline.processor.config, PreprocessorConfig.cvt13Default)
    }
}
