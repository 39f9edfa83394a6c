import CvtVision
import Foundation
import XCTest

/// Malformed and hostile PNG/JPEG files (`Scripts/make_hostile_images.py`), each decided as
/// Pillow decides it: refused where Pillow raises, the same RGB bytes where Pillow decodes.
final class HostileImageTests: XCTestCase {
    static let dir = Fixtures.root.appendingPathComponent("hostile")

    static func fnv1a(_ bytes: [UInt8]) -> String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return String(format: "%016llx", h)
    }

    func testEachFileAsPillowDecidesIt() throws {
        let manifest = try Fixtures.json(Self.dir.appendingPathComponent("manifest.json"))
        let files = try XCTUnwrap(manifest["files"] as? [String: [String: Any]])
        XCTAssertGreaterThan(files.count, 30)
        var disagreements: [String] = []
        for (name, expected) in files.sorted(by: { $0.key < $1.key }) {
            let data = try Data(contentsOf: Self.dir.appendingPathComponent(name))
            let result = Result { try ImageDecoder.decode(data: data, name: name) }
            switch (expected["pillow"] as? String, result) {
            case ("ok", .success(let image)):
                let hash = Self.fnv1a(image.pixels)
                if hash != expected["fnv1a"] as? String || [image.width, image.height] != expected["size"] as? [Int] {
                    disagreements.append("\(name): decoded \(image.width)x\(image.height) \(hash), Pillow \(expected["size"] ?? "") \(expected["fnv1a"] ?? "")")
                }
            case ("ok", .failure(let error)):
                disagreements.append("\(name): refused (\(error)) but Pillow decodes it")
            case ("error", .success):
                disagreements.append("\(name): decoded but Pillow raises \(expected["error"] ?? "")")
            case ("error", .failure(let error)):
                let text = "\(error)"
                XCTAssertTrue(text.hasPrefix(name), text)
                XCTAssertFalse(text.unicodeScalars.contains { $0.value < 0x20 }, "control bytes in \(text.debugDescription)")
            default:
                XCTFail("\(name): bad manifest entry \(expected)")
            }
        }
        XCTAssertEqual(disagreements, [], disagreements.joined(separator: "\n"))
    }
}
