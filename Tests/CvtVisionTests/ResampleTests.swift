import CvtTensor
import CvtVision
import Foundation
import XCTest

/// The formula image (cvt-13 settings) and Pillow `Image.resize` vectors.
final class ResampleTests: XCTestCase {
    func testSpecBicubicResizeAndCrop() throws {
        let image = formulaImage()
        let r = try image.resized(width: 341, height: 256, resample: .bicubic)
        XCTAssertEqual(r.width, 341)
        XCTAssertEqual(r.height, 256)
        XCTAssertEqual(sum(r.pixels), 33_305_760)
        XCTAssertEqual((0..<8).map { Int(r[x: $0, y: 0].r) }, [4, 17, 30, 43, 57, 70, 83, 96])
        XCTAssertEqual((100..<104).map { Int(r[x: $0, y: 100].g) }, [139, 128, 124, 127])

        let crop = r.cropped(left: 58, top: 16, width: 224, height: 224)
        XCTAssertEqual(sum(crop.pixels), 19_283_188)
        XCTAssertEqual(r.centerCropped(width: 224, height: 224), crop)
    }

    func testSpecOtherResizeSums() throws {
        let image = formulaImage()
        XCTAssertEqual(sum(try image.resized(width: 300, height: 480, resample: .bicubic).pixels), 54_945_248)
        XCTAssertEqual(sum(try image.resized(width: 640, height: 200, resample: .bicubic).pixels), 48_864_720)
        XCTAssertEqual(sum(try image.resized(width: 1000, height: 700, resample: .bicubic).pixels), 267_118_110)
        XCTAssertEqual(sum(try image.resized(width: 384, height: 384, resample: .bicubic).pixels), 56_258_186)
    }

    func testSpecPixelValues() throws {
        let processor = ConvNextImageProcessor(config: .cvt13Default)
        let t = try processor(formulaImage())
        XCTAssertEqual(t.shape, [1, 3, 224, 224])
        let v = t.scalars
        XCTAssertEqual(v.reduce(0.0) { $0 + Double($1) }, 35691.728191, accuracy: 1e-5)
        let first: [Float] = [-0.6109256148, -0.3883038163, -0.1656820476, 0.0740646273, 0.2966864109]
        for (i, e) in first.enumerated() { XCTAssertEqual(v[i], e, accuracy: 1e-7) }
        let plane = 224 * 224
        let lastRow = 2 * plane + 223 * 224
        let last: [Float] = [1.7336820364, 1.7685405016, 1.8033988476]
        for (i, e) in last.enumerated() { XCTAssertEqual(v[lastRow + 221 + i], e, accuracy: 1e-7) }
    }

    /// Pillow 13 `Image.resize` of the formula image with NEAREST, BILINEAR and BICUBIC to sizes that
    /// shrink, enlarge, change one axis, or stay the same (`manifest.json` "resize").
    func testResizeMatchesPillow() throws {
        let manifest = try Fixtures.json(Fixtures.preprocess.appendingPathComponent("manifest.json"))
        let vectors = try XCTUnwrap(manifest["resize"] as? [String: [String: Any]])
        XCTAssertEqual(vectors.count, 36)
        let image = formulaImage()
        for (key, e) in vectors.sorted(by: { $0.key < $1.key }) {
            let parts = key.split(separator: "/")
            let filter: Resampling = parts[0] == "nearest" ? .nearest : parts[0] == "bilinear" ? .bilinear : .bicubic
            let dims = parts[1].split(separator: "x").map { Int($0)! }
            let r = try image.resized(width: dims[0], height: dims[1], resample: filter)
            XCTAssertEqual(Int(CRC32.checksum(r.pixels)), e["crc32"] as? Int, "\(key): CRC-32")
            XCTAssertEqual(sum(r.pixels), e["sum"] as? Int, "\(key): sum")
            let p0 = r[x: 0, y: 0], p1 = r[x: r.width - 1, y: r.height - 1]
            XCTAssertEqual([Int(p0.r), Int(p0.g), Int(p0.b)], e["first"] as? [Int], key)
            XCTAssertEqual([Int(p1.r), Int(p1.g), Int(p1.b)], e["last"] as? [Int], key)
        }
    }

    func testRegionEqualsResizeThenCrop() throws {
        let image = formulaImage(width: 97, height: 61)
        for filter in Resampling.allCases {
            for (w, h) in [(41, 23), (150, 90), (97, 30), (50, 61), (97, 61)] {
                let full = try image.resized(width: w, height: h, resample: filter)
                for (l, t, rw, rh) in [(0, 0, w, h), (3, 2, w - 5, h - 4), (w / 2, h / 3, w / 4 + 1, h / 2)] {
                    let part = try image.resizedRegion(width: w, height: h, resample: filter,
                                                       left: l, top: t, regionWidth: rw, regionHeight: rh)
                    XCTAssertEqual(part, full.cropped(left: l, top: t, width: rw, height: rh), "\(filter) \(w)x\(h) region \(l),\(t)")
                }
            }
        }
    }

    func testSameSizeIsUnchangedAndZeroSizeThrows() throws {
        let image = formulaImage(width: 33, height: 17)
        for filter in Resampling.allCases {
            XCTAssertEqual(try image.resized(width: 33, height: 17, resample: filter), image)
        }
        XCTAssertThrowsError(try image.resized(width: 0, height: 5, resample: .bicubic)) { error in
            XCTAssertTrue(error is PreprocessingError, "\(error)")
        }
    }

    func testCenterCropPadsLikeTransformers() {
        let image = formulaImage(width: 5, height: 3)
        // crop 4x6 of 5x3: left = (5-4)//2 = 0, top = (3-6)//2 = -2 → rows -2...3, rows -2,-1,3 black
        let c = image.centerCropped(width: 4, height: 6)
        XCTAssertEqual(c.width, 4)
        XCTAssertEqual(c.height, 6)
        for x in 0..<4 {
            XCTAssertTrue(c[x: x, y: 0] == (0, 0, 0) && c[x: x, y: 1] == (0, 0, 0) && c[x: x, y: 5] == (0, 0, 0))
            for y in 0..<3 { XCTAssertTrue(c[x: x, y: y + 2] == image[x: x, y: y]) }
        }
    }

    func testTransposeMatchesPillowDefinitions() {
        // 3 wide × 2 high, pixel value = 10·row + column in every channel
        let image = RGBImage(width: 3, height: 2) { x, y in (UInt8(10 * y + x), UInt8(10 * y + x), UInt8(10 * y + x)) }
        func rows(_ i: RGBImage) -> [[Int]] { (0..<i.height).map { y in (0..<i.width).map { Int(i[x: $0, y: y].r) } } }
        XCTAssertEqual(rows(image), [[0, 1, 2], [10, 11, 12]])
        XCTAssertEqual(rows(image.transposed(.flipLeftRight)), [[2, 1, 0], [12, 11, 10]])
        XCTAssertEqual(rows(image.transposed(.flipTopBottom)), [[10, 11, 12], [0, 1, 2]])
        XCTAssertEqual(rows(image.transposed(.rotate180)), [[12, 11, 10], [2, 1, 0]])
        XCTAssertEqual(rows(image.transposed(.rotate90)), [[2, 12], [1, 11], [0, 10]])   // counter-clockwise
        XCTAssertEqual(rows(image.transposed(.rotate270)), [[10, 0], [11, 1], [12, 2]])  // clockwise
        XCTAssertEqual(rows(image.transposed(.transpose)), [[0, 10], [1, 11], [2, 12]])
        XCTAssertEqual(rows(image.transposed(.transverse)), [[12, 2], [11, 1], [10, 0]])
        XCTAssertEqual(image.applyingEXIFOrientation(1), image)
        XCTAssertEqual(image.applyingEXIFOrientation(9), image)
        XCTAssertEqual(image.applyingEXIFOrientation(6), image.transposed(.rotate270))
    }
}
