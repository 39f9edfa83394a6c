import CvtKit
import Foundation
import XCTest

/// Runs the built `cvt` executable as a user would.
final class CLITests: XCTestCase {
    static var executable: URL {
        // The test runner (…/debug/<package>PackageTests.xctest) sits next to the package's executables.
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("cvt")
    }

    func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let exe = Self.executable
        guard FileManager.default.isExecutableFile(atPath: exe.path) else {
            struct MissingExecutable: Error, CustomStringConvertible { let description: String }
            throw MissingExecutable(description: "the cvt executable is not at \(exe.path); `swift test` builds it")
        }
        let p = Process()
        p.executableURL = exe
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func testForwardWritesTransformersOutputs() throws {
        let dir = fixturesRoot.appendingPathComponent("parity/tiny")
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-forward-\(UUID().uuidString).safetensors")
        defer { try? FileManager.default.removeItem(at: output) }
        let r = try run(["forward", "--model", dir.path, "--input", dir.appendingPathComponent("input.safetensors").path,
                         "--output", output.path, "--hidden-states", "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let got = try SafetensorsFile(url: output)
        let expected = try SafetensorsFile(url: dir.appendingPathComponent("expected.safetensors"))
        XCTAssertEqual(Set(got.tensorNames), Set(expected.tensorNames))
        for name in expected.tensorNames {
            assertTensorClose(name, try got.tensor(name), try expected.tensor(name), tol: 1e-4)
        }
    }

    func testErrorsGoToStderrWithNonZeroExit() throws {
        let dir = fixturesRoot.appendingPathComponent("parity/tiny")
        let missing = try run(["forward", "--model", "/nonexistent/model", "--input", dir.appendingPathComponent("input.safetensors").path,
                               "--output", "/tmp/x.safetensors"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("/nonexistent/model"), missing.stderr)
        let noPixels = try run(["forward", "--model", dir.path, "--input", dir.appendingPathComponent("expected.safetensors").path,
                                "--output", "/tmp/x.safetensors"])
        XCTAssertNotEqual(noPixels.status, 0)
        XCTAssertTrue(noPixels.stderr.contains("pixel_values"), noPixels.stderr)
    }

    func testBenchJSON() throws {
        let r = try run(["bench", "--model", fixturesRoot.appendingPathComponent("parity/tiny").path, "--image-size", "64",
                         "--batch-size", "2", "--iterations", "2", "--threads", "1", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        for key in ["median_ms", "images_per_second", "peak_rss_mb", "batch_size", "threads", "dtype"] {
            XCTAssertNotNil(obj[key], "missing \(key) in \(r.stdout)")
        }
        XCTAssertEqual(obj["batch_size"] as? Int, 2)
    }
}
