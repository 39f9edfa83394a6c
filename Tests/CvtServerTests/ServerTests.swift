import CvtKit
@testable import CvtServer
import Foundation
import XCTest

/// The routes of a server on an ephemeral loopback port, with the bundled model.
final class ServerTests: XCTestCase {
    func testOperationalRoutes() async throws {
        let server = try await TestServer.start()
        let health = try await server.get("/health")
        XCTAssertEqual(health.status, 200)
        XCTAssertEqual((health.json as? [String: Any])?["status"] as? String, "ok")
        let ready = try await server.get("/ready")
        XCTAssertEqual(ready.status, 200)
        XCTAssertEqual((ready.json as? [String: Any])?["models"] as? [String], ["cvt-fashion-mnist"])
        let models = try await server.get("/models")
        let list = try XCTUnwrap((models.json as? [String: Any])?["models"] as? [[String: Any]], models.text)
        XCTAssertEqual(list.first?["name"] as? String, "cvt-fashion-mnist")
        XCTAssertEqual((list.first?["labels"] as? [String])?.count, 10)
        let missing = try await server.get("/nothing-here")
        XCTAssertEqual(missing.status, 404)
        XCTAssertEqual(missing.errorType, "not_found")
        let wrongMethod = try await HTTPClient.request(port: server.port, method: "DELETE", path: "/health")
        XCTAssertEqual(wrongMethod.status, 405)
        XCTAssertEqual(wrongMethod.errorType, "method_not_allowed")
        XCTAssertEqual(wrongMethod.headers["allow"], "GET")
        let getClassify = try await server.get("/models/cvt-fashion-mnist")
        XCTAssertEqual(getClassify.status, 405)
        XCTAssertEqual(getClassify.headers["allow"], "POST")
        _ = try await server.post(contentType: "image/png", body: Data(contentsOf: samples.appendingPathComponent("07-sneaker.png")))
        _ = try await server.post(contentType: "text/plain", body: Data("x".utf8))
        let metrics = try await server.get("/metrics")
        XCTAssertEqual(metrics.status, 200)
        XCTAssertTrue(metrics.headers["content-type"]?.hasPrefix("text/plain") ?? false)
        let text = metrics.text
        XCTAssertEqual(metricValue(text, #"cvt_http_requests_total{method="POST",route="/",status="200"}"#), 1, text)
        XCTAssertEqual(metricValue(text, #"cvt_http_requests_total{method="POST",route="/",status="400"}"#), 1, text)
        XCTAssertEqual(metricValue(text, #"cvt_http_requests_total{method="GET",route="/health",status="200"}"#), 1, text)
        XCTAssertEqual(metricValue(text, #"cvt_http_request_duration_seconds_count{method="POST",route="/"}"#), 2, text)
        XCTAssertEqual(metricValue(text, "cvt_batch_size_count"), 1, text)
        XCTAssertEqual(metricValue(text, "cvt_queue_depth"), 0, text)
        XCTAssertNotNil(metricValue(text, "cvt_requests_in_flight"), text)
        try await server.stop()
    }

    /// The document lists exactly the server's routes, and each of them answers (none is a 404).
    func testOpenAPIDocumentDescribesEveryRoute() async throws {
        let server = try await TestServer.start()
        let doc = try await server.get("/openapi.json")
        XCTAssertEqual(doc.status, 200)
        let object = try XCTUnwrap(doc.json as? [String: Any])
        XCTAssertEqual(object["openapi"] as? String, "3.1.0")
        let paths = try XCTUnwrap(object["paths"] as? [String: [String: Any]])
        var documented = Set<String>()
        for (path, operations) in paths {
            for (method, operation) in operations {
                documented.insert("\(method.uppercased()) \(path)")
                XCTAssertNotNil((operation as? [String: Any])?["responses"], "\(method) \(path) has no responses")
            }
        }
        XCTAssertEqual(documented, ["POST /", "POST /models/{name}", "GET /models", "GET /health", "GET /ready", "GET /metrics", "GET /openapi.json"])
        let image = try Data(contentsOf: samples.appendingPathComponent("01-trouser.png"))
        for entry in documented.sorted() {
            let parts = entry.split(separator: " ")
            let path = String(parts[1]).replacingOccurrences(of: "{name}", with: "cvt-fashion-mnist")
            let r = parts[0] == "GET" ? try await server.get(path) : try await server.post(path, contentType: "image/png", body: image)
            XCTAssertEqual(r.status, 200, "\(entry): \(r.text)")
        }
        // The model names are in the document.
        let name = (((paths["/models/{name}"]?["post"] as? [String: Any])?["parameters"] as? [[String: Any]])?.first?["schema"] as? [String: Any])?["enum"]
        XCTAssertEqual(name as? [String], ["cvt-fashion-mnist"])
        try await server.stop()
    }

    /// Raw bytes, JSON with base64 and a named model all give what `ImageClassificationPipeline`
    /// (what `cvt classify` runs) gives for the same bytes, score for score.
    func testAnswersEqualThePipeline() async throws {
        let server = try await TestServer.start(models: [bundledSource(name: "fashion"), bundledSource(name: "second")])
        var images = try sampleNames().map { try Data(contentsOf: samples.appendingPathComponent($0)) }
        images.append(try Data(contentsOf: fixtureImages.appendingPathComponent("rocket.jpg")))
        let expected = try await referencePipeline.pipeline.classify(encoded: images).map { try? $0.get() }
        let expectedTop2Sigmoid = try await referencePipeline.pipeline.classify(encoded: images, topK: 2, function: .sigmoid).map { try? $0.get() }
        for (i, image) in images.enumerated() {
            let raw = try await server.post(contentType: i == images.count - 1 ? "image/jpeg" : "image/png", body: image)
            XCTAssertEqual(raw.status, 200, raw.text)
            XCTAssertEqual(raw.predictions, expected[i], "raw image \(i)")
            XCTAssertEqual(raw.headers["content-type"], "application/json")
            let json = try await server.postJSON("/models/second", ["inputs": image.base64EncodedString()])
            XCTAssertEqual(json.predictions, expected[i], "JSON image \(i)")
            let withParameters = try await server.postJSON(
                "/models/fashion", ["inputs": image.base64EncodedString(), "parameters": ["top_k": 2, "function_to_apply": "sigmoid"]])
            XCTAssertEqual(withParameters.predictions, expectedTop2Sigmoid[i], "JSON with parameters, image \(i)")
            let query = try await server.post("/?top_k=2&function_to_apply=sigmoid", contentType: "image/png", body: image)
            XCTAssertEqual(query.predictions, expectedTop2Sigmoid[i], "query parameters, image \(i)")
        }
        XCTAssertEqual(expected.first??.count, 5)
        let unknown = try await server.post("/models/nope", contentType: "image/png", body: images[0])
        XCTAssertEqual(unknown.status, 404)
        XCTAssertEqual(unknown.errorType, "model_not_found")
        try await server.stop()
    }

    /// Every kind of bad input gets a 400 with a JSON error, and good requests sent at the same
    /// time are all answered.
    func testBadInputIsRefusedWithoutHarmingGoodRequests() async throws {
        let server = try await TestServer.start()
        let good = try Data(contentsOf: samples.appendingPathComponent("03-dress.png"))
        let expected = try await referencePipeline.pipeline.classify(encoded: [good])[0].get()
        func fixture(_ name: String) throws -> Data { try Data(contentsOf: fixtureImages.appendingPathComponent(name)) }
        let cases: [(String, String?, Data, String)] = [
            ("wrong content type", "text/plain", good, "unsupported_content_type"),
            ("broken JSON", "application/json", Data("{\"inputs\": ".utf8), "invalid_json"),
            ("bad base64", "application/json", Data(#"{"inputs": "%%%not-base64%%%"}"#.utf8), "invalid_base64"),
            ("base64 of garbage", "application/json", Data(#"{"inputs": "aGVsbG8gd29ybGQ="}"#.utf8), "invalid_image"),
            ("not an image", "image/jpeg", try fixture("not_an_image.jpg"), "invalid_image"),
            ("truncated JPEG", "image/jpeg", try fixture("truncated.jpg"), "invalid_image"),
            ("truncated PNG", "image/png", try fixture("truncated.png"), "invalid_image"),
            ("bad CRC", "image/png", try fixture("bad_crc.png"), "invalid_image"),
            ("zero width", "image/png", try fixture("zero_width.png"), "invalid_image"),
            ("GIF", "image/gif", try fixture("chelsea.gif"), "unsupported_image_format"),
            ("PNG bomb", "image/png", try fixture("huge.png"), "image_too_large"),
            ("JPEG bomb", "image/jpeg", try fixture("huge.jpg"), "image_too_large"),
            ("empty body", "image/png", Data(), "invalid_image"),
            ("unknown parameter", "application/json", Data(#"{"inputs": "\#(good.base64EncodedString())", "parameters": {"k": 1}}"#.utf8), "invalid_parameters"),
        ]
        try await withThrowingTaskGroup(of: (String, HTTPResult, String?).self) { group in
            for (name, type, body, error) in cases {
                group.addTask { (name, try await server.post(contentType: type, body: body), error) }
                group.addTask { ("good request beside \(name)", try await server.post(contentType: "image/png", body: good), nil) }
            }
            for try await (name, result, error) in group {
                if let error {
                    XCTAssertEqual(result.status, 400, "\(name): \(result.text)")
                    XCTAssertEqual(result.errorType, error, "\(name): \(result.text)")
                    XCTAssertEqual(result.headers["content-type"], "application/json", name)
                    XCTAssertFalse(((result.json as? [String: Any])?["error"] as? String ?? "").isEmpty, name)
                } else {
                    XCTAssertEqual(result.status, 200, "\(name): \(result.text)")
                    XCTAssertEqual(result.predictions, expected, name)
                }
            }
        }
        let health = try await server.get("/health").status
        XCTAssertEqual(health, 200)
        try await server.stop()

        // The server's own pixel limit (--max-image-pixels), below the decoder's default.
        let strict = try await TestServer.start { $0.maxImagePixels = 10_000 }
        let large = try await strict.post(contentType: "image/png", body: fixture("coffee.png"))
        XCTAssertEqual(large.status, 400, large.text)
        XCTAssertEqual(large.errorType, "image_too_large")
        XCTAssertTrue(((large.json as? [String: Any])?["error"] as? String ?? "").contains("240x160"), large.text)
        let small = try await strict.post(contentType: "image/png", body: good)
        XCTAssertEqual(small.predictions, expected)
        try await strict.stop()
    }

    /// A body over the limit is refused from its Content-Length before any of it is sent, and a
    /// chunked one as soon as it passes the limit; the connection is closed, not drained.
    func testOversizedBodiesGet413() async throws {
        let server = try await TestServer.start { $0.maxBodyBytes = 10_000 }
        let port = server.port
        let declared = try await HTTPClient.onThread {
            let c = try HTTPClient.Connection(port: port)
            defer { c.close() }
            try c.send(HTTPClient.head(method: "POST", path: "/", headers: [("Content-Type", "image/png")], contentLength: 1_000_000_000))
            return try c.readResponse()
        }
        XCTAssertEqual(declared.status, 413, declared.text)
        XCTAssertEqual(declared.errorType, "body_too_large")
        XCTAssertEqual(declared.headers["connection"], "close")

        let chunked = try await HTTPClient.onThread { () -> (HTTPResult, Int) in
            let c = try HTTPClient.Connection(port: port)
            defer { c.close() }
            try c.send(HTTPClient.head(method: "POST", path: "/", headers: [("Content-Type", "image/png"), ("Transfer-Encoding", "chunked")],
                                       contentLength: nil))
            // 4 KB chunks until the server answers and stops reading (bounded: 1,000 chunks).
            let chunk = Data("1000\r\n".utf8) + Data(repeating: 0x41, count: 4096) + Data("\r\n".utf8)
            var sent = 0
            while sent < 10, c.trySend(chunk) { sent += 1 }
            return (try c.readResponse(), sent)
        }
        XCTAssertEqual(chunked.0.status, 413, chunked.0.text)
        XCTAssertEqual(chunked.0.errorType, "body_too_large")
        // Within the limit is fine.
        let small = try await server.post(contentType: "image/png", body: Data(contentsOf: samples.appendingPathComponent("05-sandal.png")))
        XCTAssertEqual(small.status, 200, small.text)
        try await server.stop()
    }

    /// With every slot taken (a request whose body is still arriving), the next request gets 503
    /// with Retry-After at once; when the slot frees, requests are served again.
    func testFullQueueAnswers503WithRetryAfter() async throws {
        let server = try await TestServer.start {
            $0.maxQueue = 1
            $0.retryAfterSeconds = 3
        }
        let image = try Data(contentsOf: samples.appendingPathComponent("08-bag.png"))
        let slow = try HTTPClient.Connection(port: server.port)
        defer { slow.close() }
        try slow.send(HTTPClient.head(method: "POST", path: "/", headers: [("Content-Type", "image/png")], contentLength: image.count))
        try slow.send(image.prefix(10))
        // Wait (bounded) until the server holds that request.
        for _ in 0..<500 {
            if metricValue(try await server.get("/metrics").text, "cvt_requests_in_flight") == 1 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        let holding = metricValue(try await server.get("/metrics").text, "cvt_requests_in_flight")
        XCTAssertEqual(holding, 1)
        let refused = try await server.post(contentType: "image/png", body: image)
        XCTAssertEqual(refused.status, 503, refused.text)
        XCTAssertEqual(refused.errorType, "queue_full")
        XCTAssertEqual(refused.headers["retry-after"], "3")
        // The held request completes normally, and the next one is served.
        try slow.send(image.dropFirst(10))
        let held = try await HTTPClient.onThread { try slow.readResponse() }
        XCTAssertEqual(held.status, 200, held.text)
        let after = try await server.post(contentType: "image/png", body: image)
        XCTAssertEqual(after.status, 200, after.text)
        let metrics = try await server.get("/metrics").text
        XCTAssertEqual(metricValue(metrics, #"cvt_http_requests_total{method="POST",route="/",status="503"}"#), 1, metrics)
        try await server.stop()
    }

    /// A client that stalls in its headers is disconnected; one that sends its body a byte at a
    /// time (never idle long enough for the idle timeout) gets 408 when the body is overdue.
    func testSlowClientsTimeOut() async throws {
        let server = try await TestServer.start { $0.readTimeout = .seconds(2) }
        let port = server.port
        let stalled = try await HTTPClient.onThread { () -> Data in
            let c = try HTTPClient.Connection(port: port, receiveTimeoutSeconds: 60)
            defer { c.close() }
            try c.send(Data("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty".utf8))
            return try c.readToEnd()
        }
        XCTAssertEqual(stalled.count, 0, "the server answered a request whose headers never ended")

        let trickled = try await HTTPClient.onThread { () -> HTTPResult in
            let c = try HTTPClient.Connection(port: port, receiveTimeoutSeconds: 60)
            defer { c.close() }
            try c.send(HTTPClient.head(method: "POST", path: "/", headers: [("Content-Type", "image/png")], contentLength: 1000))
            // A byte every 0.2 s until the answer arrives (at most 200 bytes); the socket is
            // closed only after the sender has stopped.
            let answered = Flag(), senderDone = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                for _ in 0..<200 where !answered.isSet {
                    guard c.trySend(Data([0x41])) else { break }
                    Thread.sleep(forTimeInterval: 0.2)
                }
                senderDone.signal()
            }
            let response = Result { try c.readResponse() }
            answered.set()
            senderDone.wait()
            return try response.get()
        }
        XCTAssertEqual(trickled.status, 408, trickled.text)
        XCTAssertEqual(trickled.errorType, "request_timeout")
        let health = try await server.get("/health").status
        XCTAssertEqual(health, 200)
        try await server.stop()
    }

    /// `/health` answers while a model loads; `/ready` and classification say 503 until it has.
    func testReadinessWaitsForTheModel() async throws {
        let gate = DispatchSemaphore(value: 0)
        let slowModel = ModelSource(name: "slow") {
            gate.wait()
            return try ImageClassificationPipeline(model: bundledModel)
        }
        let server = try await TestServer.start(models: [slowModel], waitUntilReady: false)
        let health = try await server.get("/health").status
        XCTAssertEqual(health, 200)
        let notReady = try await server.get("/ready")
        XCTAssertEqual(notReady.status, 503)
        XCTAssertEqual((notReady.json as? [String: Any])?["status"] as? String, "loading")
        let early = try await server.post(contentType: "image/png", body: Data(contentsOf: samples.appendingPathComponent("02-pullover.png")))
        XCTAssertEqual(early.status, 503)
        XCTAssertEqual(early.errorType, "model_loading")
        XCTAssertNotNil(early.headers["retry-after"])
        gate.signal()
        var ready = 0
        for _ in 0..<500 {
            ready = try await server.get("/ready").status
            if ready == 200 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        XCTAssertEqual(ready, 200)
        let late = try await server.post(contentType: "image/png", body: Data(contentsOf: samples.appendingPathComponent("02-pullover.png")))
        XCTAssertEqual(late.status, 200, late.text)
        try await server.stop()
    }

    /// A model that cannot be loaded stops the server with its error.
    func testAModelThatFailsToLoadStopsTheServer() async throws {
        let broken = ModelSource(name: "broken") { try ImageClassificationPipeline(model: URL(fileURLWithPath: "/nonexistent/model")) }
        let server = try await TestServer.start(models: [broken], waitUntilReady: false)
        do {
            try await server.run.value
            XCTFail("the server kept running without its model")
        } catch {
            XCTAssertTrue("\(error)".contains("/nonexistent/model"), "\(error)")
        }
    }
}

final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}
