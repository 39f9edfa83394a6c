import CvtTensor
import CvtVision
import Foundation
import XCTest

/// `PreprocessorConfig` parsing and `ConvNextImageProcessor` against transformers'
/// `ConvNextImageProcessorPil` (`Tests/Fixtures/preprocess`).
final class ProcessorTests: XCTestCase {
    // MARK: config

    func testCvt13ConfigFile() throws {
        let url = Fixtures.preprocess.appendingPathComponent("configs/cvt13.json")
        XCTAssertEqual(try Data(contentsOf: url).count, 266, "size of microsoft/cvt-13's preprocessor_config.json")
        let config = try PreprocessorConfig.load(contentsOf: url)
        XCTAssertEqual(config, .cvt13Default)
        XCTAssertEqual(config.size, .shortestEdge(224))
        XCTAssertEqual(config.cropPct, 0.875)
        XCTAssertEqual(config.resample, .bicubic)
        XCTAssertTrue(config.doRescale)
        XCTAssertEqual(config.rescaleFactor, 1.0 / 255.0)
        XCTAssertEqual(config.rescaleFactor, 0.00392156862745098)
        XCTAssertEqual(config.imageMean, [0.485, 0.456, 0.406])
        XCTAssertEqual(config.imageStd, [0.229, 0.224, 0.225])
        XCTAssertEqual(config.featureExtractorType, "ConvNextFeatureExtractor")
    }

    func testMissingKeysTakeClassDefaults() throws {
        let c = try PreprocessorConfig.decode(Data("{\"some_unknown_key\": [1, 2]}".utf8))
        XCTAssertEqual(c, PreprocessorConfig())
        XCTAssertEqual(c.size, .shortestEdge(384))
        XCTAssertEqual(c.cropPct, 224.0 / 256.0)
        XCTAssertEqual(c.resample, .bicubic)
        XCTAssertEqual(c.imageMean, [0.5, 0.5, 0.5])
        XCTAssertEqual(c.imageStd, [0.5, 0.5, 0.5])
        XCTAssertTrue(c.doResize && c.doRescale && c.doNormalize)
        XCTAssertFalse(c.doCenterCrop)
    }

    func testSizeForms() throws {
        func size(_ json: String) throws -> PreprocessorConfig.Size? {
            try PreprocessorConfig.decode(Data("{\"size\": \(json)}".utf8)).size
        }
        XCTAssertEqual(try size("224"), .shortestEdge(224))
        XCTAssertEqual(try size("{\"shortest_edge\": 256}"), .shortestEdge(256))
        XCTAssertEqual(try size("{\"shortest_edge\": 256, \"longest_edge\": 1333}"), .shortestEdge(256))
        XCTAssertEqual(try size("{\"height\": 200, \"width\": 300}"), .heightWidth(height: 200, width: 300))
        XCTAssertEqual(try size("[200, 300]"), .heightWidth(height: 200, width: 300))
        XCTAssertEqual(try size("null"), nil)
        XCTAssertThrowsError(try size("{\"max_height\": 10, \"max_width\": 10}"))
        XCTAssertThrowsError(try size("\"big\""))
    }

    func testResampleCodes() throws {
        for (code, r) in [(0, Resampling.nearest), (2, .bilinear), (3, .bicubic)] {
            XCTAssertEqual(try PreprocessorConfig.decode(Data("{\"resample\": \(code)}".utf8)).resample, r)
        }
        for code in [1, 4, 5, 9] {
            XCTAssertThrowsError(try PreprocessorConfig.decode(Data("{\"resample\": \(code)}".utf8), name: "x/preprocessor_config.json")) { error in
                XCTAssertTrue("\(error)".contains("x/preprocessor_config.json"), "\(error)")
                XCTAssertTrue("\(error)".contains("unsupported resample \(code)"), "\(error)")
            }
        }
        XCTAssertThrowsError(try PreprocessorConfig.decode(Data("{\"resample\": 1}".utf8))) { error in
            XCTAssertTrue("\(error)".contains("LANCZOS"), "\(error)")
        }
    }

    func testNullsAndScalars() throws {
        let c = try PreprocessorConfig.decode(Data("""
            {"do_resize": null, "crop_pct": null, "image_mean": 0.3, "image_std": [0.1, 0.2, 0.3], "rescale_factor": null,
             "do_rescale": false}
            """.utf8))
        XCTAssertFalse(c.doResize)
        XCTAssertNil(c.cropPct)
        XCTAssertNil(c.rescaleFactor)
        XCTAssertEqual(c.imageMean, [0.3, 0.3, 0.3])
        // do_rescale false: the missing factor does not matter
        let t = try ConvNextImageProcessor(config: c)(RGBImage(width: 2, height: 1) { _, _ in (3, 3, 3) })
        XCTAssertEqual(t.shape, [1, 3, 1, 2])
        XCTAssertEqual(t.scalars[0], (Float(3) - Float(0.3)) / Float(0.1))
        // a missing crop_pct is an error only where it is needed (shortest_edge < 384)
        var d = PreprocessorConfig.cvt13Default
        d.cropPct = nil
        XCTAssertThrowsError(try ConvNextImageProcessor(config: d)(formulaImage(width: 8, height: 8)))
        d.size = .shortestEdge(384)
        XCTAssertEqual(try ConvNextImageProcessor(config: d)(formulaImage(width: 8, height: 8)).shape, [1, 3, 384, 384])
    }

    func testEncodeDecodeRoundTrip() throws {
        for c in [PreprocessorConfig.cvt13Default, PreprocessorConfig(),
                  PreprocessorConfig(doResize: false, size: .heightWidth(height: 3, width: 4), resample: .nearest,
                                     doCenterCrop: true, cropSize: .heightWidth(height: 2, width: 2))] {
            let data = try JSONEncoder().encode(c)
            XCTAssertEqual(try PreprocessorConfig.decode(data), c)
        }
    }

    func testHeightWidthSizeIsRefusedLikeTransformers() throws {
        var c = PreprocessorConfig.cvt13Default
        c.size = .heightWidth(height: 224, width: 224)
        XCTAssertThrowsError(try ConvNextImageProcessor(config: c)(formulaImage(width: 10, height: 10))) { error in
            XCTAssertTrue(error is PreprocessingError)
            XCTAssertTrue("\(error)".contains("shortest_edge"), "\(error)")
        }
    }

    // MARK: processor vs transformers

    func testEveryCaseMatchesTransformers() throws {
        let manifest = try Fixtures.json(Fixtures.preprocess.appendingPathComponent("manifest.json"))
        XCTAssertEqual(manifest["processor_class"] as? String, "ConvNextImageProcessorPil")
        let cases = try XCTUnwrap(manifest["cases"] as? [String: [String: Any]])
        XCTAssertEqual(Set(cases.keys), ["cvt13", "warp384", "bilinear160", "nearest128", "croppad64", "noresize"])
        let luts = try SafetensorsFile(contentsOf: Fixtures.preprocess.appendingPathComponent("luts.safetensors"))
        let full = try SafetensorsFile(contentsOf: Fixtures.preprocess.appendingPathComponent("pixel_values.safetensors"))
        var checked = 0, fullChecked = 0
        for (name, spec) in cases.sorted(by: { $0.key < $1.key }) {
            let configURL = Fixtures.preprocess.appendingPathComponent(try XCTUnwrap(spec["config_file"] as? String))
            let processor = ConvNextImageProcessor(config: try PreprocessorConfig.load(contentsOf: configURL))
            let lut = try luts.floats(name)
            XCTAssertEqual(lut.shape, [3, 256])
            let images = try XCTUnwrap(spec["images"] as? [String: [String: Any]])
            for (file, e) in images.sorted(by: { $0.key < $1.key }) {
                let label = "\(name)/\(file)"
                let image = try ImageDecoder.load(contentsOf: Fixtures.image(file))
                let t = try processor([image])
                let shape = try XCTUnwrap(e["shape"] as? [Int])
                XCTAssertEqual(t.shape, shape, label)
                guard t.shape == shape else { continue }
                let (h, w) = (shape[2], shape[3])
                let values = t.scalars

                // The uint8 image the output encodes: the same as transformers' (CRC-32, sums).
                let u8 = try processor.resizeAndCrop(image)
                XCTAssertEqual([u8.width, u8.height], [w, h], label)
                var chw = [UInt8](repeating: 0, count: 3 * h * w)
                for c in 0..<3 { for i in 0..<(h * w) { chw[c * h * w + i] = u8.pixels[3 * i + c] } }
                XCTAssertEqual(Int(CRC32.checksum(chw)), e["u8_crc32"] as? Int, "\(label): uint8 image differs from transformers'")
                XCTAssertEqual((0..<3).map { c in chw[(c * h * w)..<((c + 1) * h * w)].reduce(0) { $0 + Int($1) } },
                               e["u8_channel_sums"] as? [Int], label)

                // Every output value is transformers' value for that uint8 level, bit for bit.
                var mismatches = 0
                for c in 0..<3 {
                    for i in 0..<(h * w) where values[c * h * w + i].bitPattern != lut.values[c * 256 + Int(chw[c * h * w + i])].bitPattern {
                        mismatches += 1
                    }
                }
                XCTAssertEqual(mismatches, 0, "\(label): values not equal to transformers' rescale+normalize")

                let total = values.reduce(0.0) { $0 + Double($1) }
                let expectedSum = try XCTUnwrap(e["sum"] as? Double)
                XCTAssertEqual(total, expectedSum, accuracy: 1e-6 * max(1, abs(expectedSum)), label)
                for (i, v) in try XCTUnwrap(e["first"] as? [Double]).enumerated() {
                    XCTAssertEqual(Double(values[i]), v, accuracy: 1e-6, label)
                }
                for (i, v) in try XCTUnwrap(e["last"] as? [Double]).enumerated() {
                    XCTAssertEqual(Double(values[values.count - 4 + i]), v, accuracy: 1e-6, label)
                }
                if full.entries["\(name)/\(file)"] != nil {
                    let ref = try full.floats("\(name)/\(file)")
                    XCTAssertEqual(ref.shape, shape)
                    let maxDiff = zip(ref.values, values).map { abs($0 - $1) }.max() ?? .infinity
                    XCTAssertLessThanOrEqual(maxDiff, 1e-6, label)
                    XCTAssertEqual(maxDiff, 0, "\(label): expected bit-exact")
                    fullChecked += 1
                }
                checked += 1
            }
        }
        XCTAssertEqual(checked, 24 + 7 + 24 + 24 + 4 + 9)
        XCTAssertEqual(fullChecked, 5)
    }

    // MARK: batches

    func testBatchEqualsSingleImages() throws {
        let processor = ConvNextImageProcessor(config: .cvt13Default)
        let images = try ["rocket.jpg", "chelsea_tall.jpg", "camera_gray.png"].map { try ImageDecoder.load(contentsOf: Fixtures.image($0)) }
        let batch = try processor(images)
        XCTAssertEqual(batch.shape, [3, 3, 224, 224])
        let all = batch.scalars
        let n = 3 * 224 * 224
        for (i, image) in images.enumerated() {
            XCTAssertEqual(Array(all[(i * n)..<((i + 1) * n)]), try processor(image).scalars)
        }
    }

    func testDifferentSizesWithoutResizeIsAnError() throws {
        var c = PreprocessorConfig.cvt13Default
        c.doResize = false
        let processor = ConvNextImageProcessor(config: c)
        let a = formulaImage(width: 40, height: 30), b = formulaImage(width: 30, height: 40)
        XCTAssertEqual(try processor([a, a]).shape, [2, 3, 30, 40])
        XCTAssertThrowsError(try processor([a, b])) { error in
            XCTAssertTrue(error is PreprocessingError)
            XCTAssertTrue("\(error)".contains("same size"), "\(error)")
        }
        XCTAssertThrowsError(try processor([]))
    }

    func testCenterCropOption() throws {
        var c = PreprocessorConfig.cvt13Default
        c.doCenterCrop = true
        c.cropSize = .heightWidth(height: 100, width: 120)
        let t = try ConvNextImageProcessor(config: c)(formulaImage())
        XCTAssertEqual(t.shape, [1, 3, 100, 120])
    }

    func testShortestEdgeSize() {
        XCTAssertTrue(ConvNextImageProcessor.shortestEdgeSize(width: 640, height: 480, shortestEdge: 256) == (341, 256))
        XCTAssertTrue(ConvNextImageProcessor.shortestEdgeSize(width: 480, height: 640, shortestEdge: 256) == (256, 341))
        XCTAssertTrue(ConvNextImageProcessor.shortestEdgeSize(width: 457, height: 123, shortestEdge: 256) == (951, 256))
        XCTAssertTrue(ConvNextImageProcessor.shortestEdgeSize(width: 50, height: 50, shortestEdge: 256) == (256, 256))
    }
}
