import CvtKit
@testable import CvtServer
import Foundation
import XCTest

/// Dynamic batching: a batch's results are the single-image results, bit for bit.
final class BatchingTests: XCTestCase {
    func images() throws -> [Data] {
        var all = try sampleNames().map { try Data(contentsOf: samples.appendingPathComponent($0)) }
        for name in ["rocket.jpg", "coffee.png", "chelsea_small.jpg", "camera_gray.png"] {
            all.append(try Data(contentsOf: fixtureImages.appendingPathComponent(name)))
        }
        return all
    }

    /// The model thread's batch: each row equals that image run alone, with its own top_k and function.
    func testBatchRowsEqualSingleImages() throws {
        let models = [bundledModel, repoRoot.appendingPathComponent("Tests/Fixtures/pipeline/single_label")]
        for url in models {
            let model = ServedModel(name: "m", pipeline: try ImageClassificationPipeline(model: url))
            let prepared = try images().map { try model.prepare(encoded: $0, maxPixels: 10_000_000) }
            let functions: [ClassificationFunction?] = [nil, .softmax, .sigmoid, ClassificationFunction.none]
            let options = prepared.indices.map { (topK: 1 + $0 % 4, function: functions[$0 % 4]) }
            let batched = try model.run(prepared, options: options)
            XCTAssertEqual(batched.count, prepared.count)
            for i in prepared.indices {
                let alone = try model.run([prepared[i]], options: [options[i]])[0]
                XCTAssertEqual(batched[i], alone, "\(url.lastPathComponent) image \(i): batch row differs from the image alone")
                XCTAssertEqual(batched[i].count, min(options[i].topK, model.config.numLabels))
            }
        }
    }

    /// Concurrent requests are run as one forward pass (the metrics count one batch of all of
    /// them), and each answer equals the pipeline's for that image alone.
    func testConcurrentRequestsShareABatchWithIdenticalResults() async throws {
        let images = try images()
        // A long delay: the batch runs when it is full, so a full batch proves the requests met.
        let server = try await TestServer.start {
            $0.maxBatchSize = images.count
            $0.maxBatchDelay = .seconds(60)
        }
        let alone = try await referencePipeline.pipeline.classify(encoded: images, batchSize: 1).map { try? $0.get() }
        let answers = try await withThrowingTaskGroup(of: (Int, HTTPResult).self) { group in
            for (i, image) in images.enumerated() {
                group.addTask { (i, try await server.post(contentType: "application/octet-stream", body: image)) }
            }
            var out = [HTTPResult?](repeating: nil, count: images.count)
            for try await (i, r) in group { out[i] = r }
            return out
        }
        for (i, r) in answers.enumerated() {
            XCTAssertEqual(r?.status, 200, r?.text ?? "")
            XCTAssertEqual(r?.predictions, alone[i], "image \(i)")
        }
        let metrics = try await server.get("/metrics").text
        XCTAssertEqual(metricValue(metrics, "cvt_batch_size_count"), 1, metrics)
        XCTAssertEqual(metricValue(metrics, "cvt_batch_size_sum"), Double(images.count), metrics)
        try await server.stop()
    }

    /// Requests for different models are batched apart, each with its own model.
    func testModelsAreBatchedApart() async throws {
        let second = ModelSource(name: "small") {
            try ImageClassificationPipeline(model: repoRoot.appendingPathComponent("Tests/Fixtures/pipeline/single_label"))
        }
        let server = try await TestServer.start({
            $0.maxBatchSize = 4
            $0.maxBatchDelay = .seconds(60)
        }, models: [bundledSource(), second])
        let images = Array(try images().prefix(4))
        let small = try ImageClassificationPipeline(model: repoRoot.appendingPathComponent("Tests/Fixtures/pipeline/single_label"))
        let expectedSmall = try await small.classify(encoded: images).map { try? $0.get() }
        let expectedFashion = try await referencePipeline.pipeline.classify(encoded: images).map { try? $0.get() }
        try await withThrowingTaskGroup(of: (String, Int, HTTPResult).self) { group in
            for (i, image) in images.enumerated() {
                group.addTask { ("small", i, try await server.post("/models/small", contentType: "image/png", body: image)) }
                group.addTask { ("fashion", i, try await server.post("/", contentType: "image/png", body: image)) }
            }
            for try await (model, i, r) in group {
                XCTAssertEqual(r.predictions, model == "small" ? expectedSmall[i] : expectedFashion[i], "\(model) image \(i): \(r.text)")
            }
        }
        let metrics = try await server.get("/metrics").text
        XCTAssertEqual(metricValue(metrics, "cvt_batch_size_count"), 2, metrics)
        XCTAssertEqual(metricValue(metrics, "cvt_batch_size_sum"), 8, metrics)
        try await server.stop()
    }
}
