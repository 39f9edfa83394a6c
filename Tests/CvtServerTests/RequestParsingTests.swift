import CvtKit
@testable import CvtServer
import Foundation
import XCTest

/// The request formats, without a server.
final class RequestParsingTests: XCTestCase {
    let png = Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 1, 2, 3])

    func parse(_ contentType: String?, _ body: String, query: [String: String] = [:]) throws -> ClassificationRequest {
        try ClassificationRequest.parse(contentType: contentType, body: Data(body.utf8), query: query)
    }

    func assertError(_ type: String, _ expression: @autoclosure () throws -> ClassificationRequest, line: UInt = #line) {
        XCTAssertThrowsError(try expression(), line: line) { error in
            guard let e = error as? ServeError else { return XCTFail("not a ServeError: \(error)", line: line) }
            XCTAssertEqual(e.type, type, e.message, line: line)
            XCTAssertEqual(e.status.code, 400, line: line)
        }
    }

    func testRawBytesWithQueryParameters() throws {
        let r = try ClassificationRequest.parse(contentType: "image/png", body: png)
        XCTAssertEqual(r, ClassificationRequest(image: png, topK: 5, function: nil))
        let q = try ClassificationRequest.parse(contentType: "application/octet-stream", body: png,
                                                query: ["top_k": "2", "function_to_apply": "SIGMOID"])
        XCTAssertEqual(q, ClassificationRequest(image: png, topK: 2, function: .sigmoid))
        XCTAssertEqual(try ClassificationRequest.parse(contentType: nil, body: png).image, png, "no Content-Type: raw bytes")
        assertError("invalid_parameters", try ClassificationRequest.parse(contentType: "image/png", body: png, query: ["topk": "2"]))
        assertError("invalid_parameters", try ClassificationRequest.parse(contentType: "image/png", body: png, query: ["top_k": "two"]))
        assertError("invalid_image", try ClassificationRequest.parse(contentType: "image/png", body: Data()))
    }

    func testJSONInHuggingFaceFormat() throws {
        let b64 = png.base64EncodedString()
        XCTAssertEqual(try parse("application/json", #"{"inputs": "\#(b64)"}"#), ClassificationRequest(image: png))
        XCTAssertEqual(try parse("application/json; charset=utf-8",
                                 #"{"inputs": "\#(b64)", "parameters": {"top_k": 3, "function_to_apply": "none", "timeout": 5}}"#),
                       ClassificationRequest(image: png, topK: 3, function: ClassificationFunction.none))
        XCTAssertEqual(try parse(nil, #" {"inputs": "\#(b64)"}"#).image, png, "no Content-Type, JSON object")
        XCTAssertEqual(try parse("application/json", #"{"inputs": "data:image/png;base64,\#(b64)"}"#).image, png)
        let unpadded = b64.replacingOccurrences(of: "=", with: "")
        XCTAssertEqual(try parse("application/json", #"{"inputs": "\#(unpadded)\n"}"#).image, png)
        XCTAssertEqual(try parse("application/json", #"{"inputs": "\#(b64)", "parameters": null}"#).topK, 5)
    }

    func testBadRequestsAreNamed() {
        let b64 = png.base64EncodedString()
        assertError("unsupported_content_type", try parse("text/plain", "hello"))
        assertError("unsupported_content_type", try parse("multipart/form-data; boundary=x", "--x"))
        assertError("invalid_json", try parse("application/json", "{broken"))
        assertError("invalid_json", try parse("application/json", "[1, 2]"))
        assertError("invalid_json", try parse("application/json", "{}"))
        assertError("invalid_json", try parse("application/json", #"{"inputs": 5}"#))
        assertError("invalid_json", try parse("application/json", #"{"inputs": "\#(b64)", "extra": 1}"#))
        assertError("invalid_base64", try parse("application/json", #"{"inputs": "not base64!!"}"#))
        assertError("invalid_base64", try parse("application/json", #"{"inputs": "abcde"}"#))
        assertError("invalid_base64", try parse("application/json", #"{"inputs": ""}"#))
        assertError("invalid_inputs", try parse("application/json", #"{"inputs": "https://example.com/cat.jpg"}"#))
        assertError("invalid_parameters", try parse("application/json", #"{"inputs": "\#(b64)", "parameters": {"top_k": -1}}"#))
        assertError("invalid_parameters", try parse("application/json", #"{"inputs": "\#(b64)", "parameters": {"top_k": 2.5}}"#))
        assertError("invalid_parameters", try parse("application/json", #"{"inputs": "\#(b64)", "parameters": {"top_k": true}}"#))
        assertError("invalid_parameters", try parse("application/json", #"{"inputs": "\#(b64)", "parameters": {"top_k": "3"}}"#))
        assertError("invalid_parameters", try parse("application/json", #"{"inputs": "\#(b64)", "parameters": {"function_to_apply": "relu"}}"#))
        assertError("invalid_parameters", try parse("application/json", #"{"inputs": "\#(b64)", "parameters": {"topk": 3}}"#))
        assertError("invalid_parameters", try parse("application/json", #"{"inputs": "\#(b64)", "parameters": [1]}"#))
    }

    func testModelNames() {
        XCTAssertEqual(ModelSource.defaultName(for: "models/cvt-fashion-mnist"), "cvt-fashion-mnist")
        XCTAssertEqual(ModelSource.defaultName(for: "microsoft/cvt-13@main"), "cvt-13")
        XCTAssertEqual(ModelSource.defaultName(for: "/tmp/my model/"), "my-model")
        XCTAssertTrue(ModelSource.isValidName("cvt_13.v2-a"))
        XCTAssertFalse(ModelSource.isValidName("a/b"))
        XCTAssertFalse(ModelSource.isValidName(".."))
        XCTAssertThrowsError(try CvtServer(configuration: ServerConfiguration(), models: [bundledSource(name: "a"), bundledSource(name: "a")]))
        XCTAssertThrowsError(try CvtServer(configuration: ServerConfiguration(), models: [bundledSource(name: "a/b")]))
        XCTAssertThrowsError(try CvtServer(configuration: ServerConfiguration(), models: []))
        var bad = ServerConfiguration()
        bad.maxBatchSize = 0
        XCTAssertThrowsError(try CvtServer(configuration: bad, models: [bundledSource()]))
    }
}
