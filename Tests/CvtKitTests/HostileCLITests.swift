import CvtKit
import Foundation
import XCTest

/// Hostile arguments, environment and configs: the `cvt` process exits with an error naming the
/// argument or field, never a signal (a trap, an allocation abort, a segfault in libgomp).
final class HostileCLITests: XCTestCase {
    let tiny = fixturesRoot.appendingPathComponent("parity/tiny").path

    func expectRefused(_ args: [String], naming what: String, environment: [String: String]? = nil,
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try runCvt(args, environment: environment)
        // Exit codes above 128 (or a Process termination by signal) mean a crash.
        XCTAssertTrue(r.status != 0 && r.status < 128, "\(args): status \(r.status)\n\(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.contains(what), "\(args): \(r.stderr)", file: file, line: line)
        XCTAssertLessThan(r.stderr.utf8.count, 4000, file: file, line: line)
    }

    func testHugeArgumentsAreRefused() throws {
        let bench = ["bench", "--model", tiny, "--iterations", "1"]
        try expectRefused(bench + ["--threads", "100000"], naming: "--threads")
        try expectRefused(bench + ["--image-size", "100000"], naming: "--image-size")
        try expectRefused(bench + ["--image-size", "4096"], naming: "--image-size")
        try expectRefused(bench + ["--batch-size", "10000000"], naming: "--batch-size")
        try expectRefused(bench + ["--batch-size", "60000", "--image-size", "1024"], naming: "--batch-size")
        try expectRefused(["classify", "--model", tiny, "--batch-size", "10000000", "x.png"], naming: "--batch-size")
    }

    func testEndpointWithASpaceIsAnError() throws {
        let home = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-hostile-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: home) }
        try expectRefused(["classify", "--model", "org/model", "x.png"], naming: "HF_ENDPOINT",
                          environment: ["HF_HOME": home.path, "HF_ENDPOINT": "http://exa mple.invalid"])
    }

    /// A model folder whose config.json declares a huge model is refused, naming the file and field.
    func testHostileConfigInAModelFolder() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-hostile-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(at: URL(fileURLWithPath: tiny).appendingPathComponent("model.safetensors"),
                                         to: dir.appendingPathComponent("model.safetensors"))
        for (json, field) in [(#"{"embed_dim": [1000000000, 192, 384]}"#, "embed_dim"),
                              (#"{"num_labels": 1000000000}"#, "num_labels"),
                              (#"{"padding_q": [1, 1, 9223372036854775807]}"#, "padding_q"),
                              // Within every bound, but far more parameters than the file holds.
                              (#"{"embed_dim": [1024, 1024, 1024], "num_heads": [1, 1, 1], "depth": [8, 8, 8]}"#, "parameters")] {
            try Data(json.utf8).write(to: dir.appendingPathComponent("config.json"))
            try expectRefused(["classify", "--model", dir.path, "x.png"], naming: field)
        }
        try Data(#"{"size": {"shortest_edge": 1000000}}"#.utf8).write(to: dir.appendingPathComponent("preprocessor_config.json"))
        try FileManager.default.copyItem(at: URL(fileURLWithPath: tiny).appendingPathComponent("config.json"),
                                         to: dir.appendingPathComponent("config.json.tmp"))
        try FileManager.default.removeItem(at: dir.appendingPathComponent("config.json"))
        try FileManager.default.moveItem(at: dir.appendingPathComponent("config.json.tmp"), to: dir.appendingPathComponent("config.json"))
        try expectRefused(["classify", "--model", dir.path, "x.png"], naming: "shortest_edge")
    }
}
