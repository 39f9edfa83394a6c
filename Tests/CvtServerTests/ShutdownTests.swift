import CvtKit
@testable import CvtServer
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Graceful shutdown: stop accepting, finish the requests in flight, then stop (exit 0 for `cvt serve`).
final class ShutdownTests: XCTestCase {
    /// Sends a request's head and the start of its body, and waits (bounded) until the server holds it.
    func startSlowRequest(port: Int, image: Data, inFlight: () async throws -> Double?) async throws -> HTTPClient.Connection {
        let c = try HTTPClient.Connection(port: port)
        try c.send(HTTPClient.head(method: "POST", path: "/", headers: [("Content-Type", "image/png")], contentLength: image.count))
        try c.send(image.prefix(16))
        for _ in 0..<500 where try await inFlight() != 1 { try await Task.sleep(for: .milliseconds(10)) }
        let held = try await inFlight()
        XCTAssertEqual(held, 1, "the server never held the request")
        return c
    }

    func connects(_ port: Int) -> Bool {
        guard let c = try? HTTPClient.Connection(port: port) else { return false }
        c.close()
        return true
    }

    func testGracefulShutdownFinishesTheRequestInFlight() async throws {
        let server = try await TestServer.start()
        let image = try Data(contentsOf: samples.appendingPathComponent("09-ankle-boot.png"))
        let expected = try await referencePipeline.pipeline.classify(encoded: [image])[0].get()
        let c = try await startSlowRequest(port: server.port, image: image) {
            metricValue(try await server.get("/metrics").text, "cvt_requests_in_flight")
        }
        defer { c.close() }
        await server.group.triggerGracefulShutdown()
        // Shutdown has begun once new connections are refused; the held request is still open.
        var refused = false
        for _ in 0..<500 {
            if !connects(server.port) { refused = true; break }
            try await Task.sleep(for: .milliseconds(10))
        }
        XCTAssertTrue(refused, "the server still accepts connections after graceful shutdown began")
        try c.send(image.dropFirst(16))
        let answer = try await HTTPClient.onThread { try c.readResponse() }
        XCTAssertEqual(answer.status, 200, answer.text)
        XCTAssertEqual(answer.predictions, expected)
        try await server.run.value
    }

    /// The command as a user runs it (`--model NAME=PATH`): port 0 prints the bound address; answers equal
    /// `cvt classify --json`; SIGTERM (then SIGINT, on a second server) lets the request in flight
    /// finish and the process exit 0.
    func testServeCommandStopsGracefullyOnSignals() async throws {
        let image = samples.appendingPathComponent("04-coat.png")
        let imageData = try Data(contentsOf: image)
        let classify = try runCvt(["classify", "--json", "--model", bundledModel.path, image.path])
        XCTAssertEqual(classify.status, 0, classify.stderr)
        let cli = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(classify.stdout.utf8)) as? [[String: Any]])?.first?["predictions"]
            as? [[String: Any]])

        for signal in [SIGTERM, SIGINT] {
            let process = Process()
            process.executableURL = cvtExecutable
            process.environment = ProcessInfo.processInfo.environment.merging(["SWIFT_BACKTRACE": "enable=no"]) { $1 }
            process.arguments = ["serve", "--port", "0", "--model", "fashion=\(bundledModel.path)", "--threads", "1", "--log-format", "json"]
            let stdout = Pipe()
            let logURL = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-serve-\(UUID().uuidString).log")
            FileManager.default.createFile(atPath: logURL.path, contents: nil)
            defer { try? FileManager.default.removeItem(at: logURL) }
            process.standardOutput = stdout
            process.standardError = try FileHandle(forWritingTo: logURL)
            try process.run()
            defer { if process.isRunning { process.terminate() } }
            let line = try await HTTPClient.onThread { () -> String in
                var text = ""
                // Bounded: the first line, or end of output.
                while !text.contains("\n") {
                    let chunk = stdout.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    text += String(decoding: chunk, as: UTF8.self)
                }
                return text
            }
            let port = try XCTUnwrap(line.split(separator: ":").last.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) },
                                     "no address in \(line)")
            XCTAssertTrue(line.hasPrefix("cvt serve: listening on http://127.0.0.1:"), line)
            for _ in 0..<1000 {
                if (try? await HTTPClient.request(port: port, method: "GET", path: "/ready"))?.status == 200 { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            let answer: HTTPResult
            do {
                answer = try await HTTPClient.request(port: port, method: "POST", path: "/models/fashion", headers: [("Content-Type", "image/png")],
                                                      body: imageData)
            } catch {
                return XCTFail("\(error); log: \((try? String(contentsOf: logURL, encoding: .utf8)) ?? "")")
            }
            let served = try XCTUnwrap(answer.json as? [[String: Any]], answer.text)
            XCTAssertEqual(served.map { $0["label"] as? String }, cli.map { $0["label"] as? String })
            XCTAssertEqual(served.map { ($0["score"] as? NSNumber)?.doubleValue }, cli.map { ($0["score"] as? NSNumber)?.doubleValue },
                           "the server's scores differ from cvt classify's")

            let c = try await startSlowRequest(port: port, image: imageData) {
                metricValue(try await HTTPClient.request(port: port, method: "GET", path: "/metrics").text, "cvt_requests_in_flight")
            }
            defer { c.close() }
            kill(process.processIdentifier, signal)
            var refused = false
            for _ in 0..<500 {
                if !connects(port) { refused = true; break }
                try await Task.sleep(for: .milliseconds(10))
            }
            XCTAssertTrue(refused, "still accepting after signal \(signal)")
            try c.send(imageData.dropFirst(16))
            let inFlight = try await HTTPClient.onThread { try c.readResponse() }
            XCTAssertEqual(inFlight.status, 200, inFlight.text)
            try await HTTPClient.onThread { process.waitUntilExit() }
            let log = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
            XCTAssertEqual(process.terminationReason, .exit, "signal \(signal): \(log)")
            XCTAssertEqual(process.terminationStatus, 0, "signal \(signal): \(log)")
            // Structured request logs: one JSON object per line, with the request's fields.
            let requests = log.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                .filter { $0["message"] as? String == "request" }
            XCTAssertTrue(requests.contains { $0["path"] as? String == "/" && $0["status"] as? String == "200" && $0["duration_ms"] != nil },
                          log)
        }
    }
}

let cvtExecutable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("cvt")

func runCvt(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let p = Process()
    p.executableURL = cvtExecutable
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}
