import CvtVision
import Foundation
import XCTest

/// preprocessor_config.json sizes are bounded when the file is read, with an error naming the field.
final class HostilePreprocessorTests: XCTestCase {
    func expectError(_ json: String, naming field: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try PreprocessorConfig.decode(Data(json.utf8), name: "p.json"), file: file, line: line) { error in
            let text = "\(error)"
            XCTAssertTrue(error is PreprocessingError, text, file: file, line: line)
            XCTAssertTrue(text.contains(field) && text.contains("p.json"), text, file: file, line: line)
        }
    }

    func testHugeSizesAreRefused() {
        expectError(#"{"size": {"shortest_edge": 1000000}}"#, naming: "size.shortest_edge")
        expectError(#"{"size": \#(Int.max)}"#, naming: "size.shortest_edge")
        expectError(#"{"size": {"height": 100000, "width": 4}}"#, naming: "size.height")
        expectError(#"{"size": [4, \#(Int.max)]}"#, naming: "size.width")
        expectError(#"{"size": {"shortest_edge": 0}}"#, naming: "size.shortest_edge")
        expectError(#"{"do_center_crop": true, "crop_size": 1000000}"#, naming: "crop_size.height")
        expectError(#"{"size": {"shortest_edge": 224}, "crop_pct": 1e-300}"#, naming: "crop_pct")
        expectError(#"{"size": {"shortest_edge": 224}, "crop_pct": -1}"#, naming: "crop_pct")
        XCTAssertNoThrow(try PreprocessorConfig.decode(Data(#"{"size": {"shortest_edge": 384}, "crop_pct": null}"#.utf8)))
        XCTAssertNoThrow(try PreprocessorConfig.decode(Data(#"{"size": {"shortest_edge": 224}, "crop_pct": 0.875}"#.utf8)))
    }

    /// A long, thin image does not resize into billions of pixels.
    func testAspectRatioBombIsRefused() throws {
        let p = ConvNextImageProcessor(config: .cvt13Default)
        let thin = RGBImage(width: 1, height: 2_000_000, pixels: [UInt8](repeating: 0, count: 6_000_000))
        XCTAssertThrowsError(try p.resizeAndCrop(thin)) { error in
            XCTAssertTrue("\(error)".contains("1x2000000"), "\(error)")
        }
    }
}
