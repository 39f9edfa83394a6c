import Cvt
import Foundation
import XCTest

/// Sizes a config.json may declare are bounded before anything is allocated: each hostile value
/// is a `CvtConfigError` naming its field, never an allocation abort or an overflow trap.
final class HostileConfigTests: XCTestCase {
    func expectError(_ json: String, field: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try CvtConfig.decode(Data(json.utf8)), json, file: file, line: line) { error in
            guard let e = error as? CvtConfigError else { return XCTFail("\(json): \(error) is not a CvtConfigError", file: file, line: line) }
            XCTAssertEqual(e.field, field, "\(json): \(e)", file: file, line: line)
            XCTAssertTrue(e.description.contains("`\(field)`"), e.description, file: file, line: line)
        }
    }

    func testHugeSizesNameTheirField() {
        let max = Int.max
        expectError(#"{"embed_dim": [1000000000, 192, 384]}"#, field: "embed_dim")
        expectError(#"{"embed_dim": [64, 192, \#(max)], "num_heads": [1, 3, 1]}"#, field: "embed_dim")
        expectError(#"{"num_heads": [1, 3, \#(max)]}"#, field: "num_heads")
        expectError(#"{"mlp_ratio": [4, 4, 1e300]}"#, field: "mlp_ratio")
        expectError(#"{"mlp_ratio": [4, 4, 1e6]}"#, field: "mlp_ratio")
        expectError(#"{"depth": [1, 2, 100000]}"#, field: "depth")
        expectError(#"{"depth": [1, 2, \#(max)]}"#, field: "depth")
        for key in ["patch_sizes", "patch_stride", "patch_padding", "kernel_qkv", "stride_kv", "padding_kv"] {
            expectError(#"{"\#(key)": [1, 1, \#(max)]}"#, field: key)
            expectError(#"{"\#(key)": [1, 1, 100000]}"#, field: key)
        }
        expectError(#"{"padding_q": [1, 1, \#(max)]}"#, field: "padding_q")
        expectError(#"{"stride_q": [1, 1, \#(max)]}"#, field: "stride_q")
        expectError(#"{"num_channels": \#(max)}"#, field: "num_channels")
        expectError(#"{"num_labels": 1000000000}"#, field: "num_labels")
        expectError(#"{"num_labels": \#(max)}"#, field: "num_labels")
        // Numbers that are not integers where integers are expected (Foundation names no key).
        expectError(#"{"patch_sizes": [7, 3, 1e300]}"#, field: "patch_sizes")
        expectError(#"{"padding_q": [1, 1, 1.5]}"#, field: "padding_q")
        expectError(#"{"num_labels": 1e300}"#, field: "num_labels")
        expectError(#"{"num_channels": 3.5}"#, field: "num_channels")
        let stages = Array(repeating: "1", count: 100).joined(separator: ",")
        expectError(#"{"depth": [\#(stages)]}"#, field: "depth")
    }

    /// Every field within its bound, the product still too large: the parameter count is checked too.
    func testParameterCountIsBounded() {
        expectError(#"{"embed_dim": [16384, 16384, 16384], "num_heads": [1, 1, 1], "depth": [1024, 1024, 1024]}"#, field: "embed_dim")
        XCTAssertNil(overflowingCount())
        XCTAssertNoThrow(try CvtConfig.cvtW24.validate())
    }

    private func overflowingCount() -> Int? {
        var c = CvtConfig()
        c.embedDim = [Int.max / 2, 192, 384]
        return c.parameterCount
    }

    /// An input size is checked against what one image's forward pass would hold (attention is
    /// quadratic in the token count), overflow-safe.
    func testInputSizeIsBounded() throws {
        let c = CvtConfig.cvt13
        XCTAssertNoThrow(try c.checkInputSize(height: 384, width: 384, what: "image size"))
        XCTAssertNoThrow(try c.checkInputSize(height: 1024, width: 1024, what: "image size"), "docs/security.md: up to 1024×1024")
        XCTAssertThrowsError(try c.checkInputSize(height: 1100, width: 1100, what: "image size"))
        XCTAssertThrowsError(try c.checkInputSize(height: 8192, width: 8192, what: "image size")) { e in
            XCTAssertEqual((e as? CvtConfigError)?.field, "image size")
        }
        XCTAssertThrowsError(try c.checkInputSize(height: Int.max, width: Int.max, what: "image size"))
        XCTAssertThrowsError(try c.checkInputSize(height: 0, width: 224, what: "image size"))
    }
}
