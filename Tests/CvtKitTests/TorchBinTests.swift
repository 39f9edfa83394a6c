import CvtKit
import Foundation
import XCTest

/// Checkpoint folders that hold only pytorch_model.bin (read by the restricted unpickler).
final class TorchBinTests: XCTestCase {
    let source = fixturesRoot.appendingPathComponent("torch/cvt_tiny")

    func folder(with files: [String]) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-bin-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for f in files { try FileManager.default.copyItem(at: source.appendingPathComponent(f), to: dir.appendingPathComponent(f)) }
        return dir
    }

    func testBinOnlyFolderGivesTransformersLogitsAndMatchesSafetensors() throws {
        let binDir = try folder(with: ["config.json", "pytorch_model.bin"])
        let stDir = try folder(with: ["config.json", "model.safetensors"])
        defer { try? FileManager.default.removeItem(at: binDir); try? FileManager.default.removeItem(at: stDir) }
        let x = try SafetensorsFile(url: source.appendingPathComponent("input.safetensors")).tensor("pixel_values")
        let fromBin = try CvtForImageClassification(pretrained: binDir)(x).logits
        let fromST = try CvtForImageClassification(pretrained: stDir)(x).logits
        XCTAssertEqual(fromBin.scalars, fromST.scalars, "both loaders must give identical weights")
        let expected = try SafetensorsFile(url: source.appendingPathComponent("expected.safetensors")).tensor("logits")
        assertTensorClose("logits from pytorch_model.bin", fromBin, expected, tol: 1e-4)
    }

    func testMaliciousBinIsRefusedNamingTheGlobal() throws {
        let dir = try folder(with: ["config.json"])
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(at: fixturesRoot.appendingPathComponent("torch/malicious_os_system.bin"),
                                         to: dir.appendingPathComponent("pytorch_model.bin"))
        XCTAssertThrowsError(try CvtForImageClassification(pretrained: dir)) { error in
            let m = "\(error)"
            XCTAssertTrue(m.contains("os.system") || m.contains("posix.system"), m)
            XCTAssertTrue(m.contains("pytorch_model.bin"), m)
        }
    }

    func testTruncatedBinIsAClearError() throws {
        let dir = try folder(with: ["config.json"])
        defer { try? FileManager.default.removeItem(at: dir) }
        let full = try Data(contentsOf: source.appendingPathComponent("pytorch_model.bin"))
        try full.prefix(full.count * 2 / 3).write(to: dir.appendingPathComponent("pytorch_model.bin"))
        XCTAssertThrowsError(try CvtForImageClassification(pretrained: dir)) { XCTAssertTrue("\($0)".contains("pytorch_model.bin"), "\($0)") }
    }
}
