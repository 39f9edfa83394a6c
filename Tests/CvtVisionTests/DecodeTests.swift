import CvtVision
import Foundation
import XCTest

/// Decoding every fixture file exactly as transformers' `load_image` does with Pillow 13
/// (`Tests/Fixtures/images/expected.json`), the error cases, the pixel limit and EXIF orientation.
final class DecodeTests: XCTestCase {
    private func expected() throws -> [String: Any] {
        try Fixtures.json(Fixtures.image("expected.json"))
    }

    func testEveryGoodFixtureDecodesLikePillow() throws {
        let good = try XCTUnwrap(try expected()["good"] as? [String: [String: Any]])
        XCTAssertEqual(good.count, 32)
        for (name, e) in good.sorted(by: { $0.key < $1.key }) {
            let url = Fixtures.image(name)
            let stored = try ImageDecoder.decodeStored(data: Data(contentsOf: url), name: name)
            XCTAssertEqual(stored.mode, e["mode"] as? String, "\(name): source mode")
            XCTAssertEqual([stored.image.width, stored.image.height], e["stored_size"] as? [Int], "\(name): stored size")
            let exifOrientation = e["exif_orientation"] as? Int ?? 1
            XCTAssertEqual(stored.orientation, (2...8).contains(exifOrientation) ? exifOrientation : 1, "\(name): orientation")

            let image = try ImageDecoder.load(contentsOf: url)
            XCTAssertEqual(image, stored.upright)
            XCTAssertEqual([image.width, image.height], e["size"] as? [Int], "\(name): size")
            XCTAssertEqual(sum(image.pixels), e["sum"] as? Int, "\(name): sum")
            let crcs = try XCTUnwrap(e["row_crc32"] as? [Int])
            XCTAssertEqual(crcs.count, image.height)
            let rowBytes = image.width * 3
            var badRows: [Int] = []
            for y in 0..<min(image.height, crcs.count) {
                let row = image.pixels[(y * rowBytes)..<((y + 1) * rowBytes)]
                if Int(CRC32.checksum(row)) != crcs[y] { badRows.append(y) }
            }
            XCTAssertEqual(badRows, [], "\(name): rows differing from Pillow")
            for s in try XCTUnwrap(e["samples"] as? [[Int]]) {
                let p = image[x: s[0], y: s[1]]
                XCTAssertEqual([Int(p.r), Int(p.g), Int(p.b)], Array(s[2...]), "\(name): pixel (\(s[0]), \(s[1]))")
            }
        }
    }

    func testBadFilesThrowImageErrorNamingTheFile() throws {
        let bad = try XCTUnwrap(try expected()["bad"] as? [String: [String: Any]])
        XCTAssertEqual(bad.count, 9)
        for (name, e) in bad.sorted(by: { $0.key < $1.key }) {
            let kind = try XCTUnwrap((e["kind"] as? String).flatMap(ImageError.Kind.init(rawValue:)), name)
            let url = Fixtures.image(name)
            XCTAssertThrowsError(try ImageDecoder.load(contentsOf: url), name) { error in
                guard let error = error as? ImageError else { return XCTFail("\(name): \(error) is not an ImageError") }
                XCTAssertEqual(error.kind, kind, "\(name): \(error)")
                XCTAssertEqual(error.file, url.path)
                XCTAssertTrue(error.description.contains(name), error.description)
                XCTAssertFalse(error.message.isEmpty, "\(name): empty message")
            }
            // Same through the in-memory API, with the caller's name.
            XCTAssertThrowsError(try ImageDecoder.decode(data: Data(contentsOf: url), name: "upload:\(name)")) { error in
                XCTAssertEqual((error as? ImageError)?.kind, kind)
                XCTAssertTrue("\(error)".hasPrefix("upload:\(name): "), "\(error)")
            }
        }
    }

    func testMissingFileAndDirectory() {
        let missing = Fixtures.image("does_not_exist.jpg")
        XCTAssertThrowsError(try ImageDecoder.load(contentsOf: missing)) { error in
            XCTAssertEqual((error as? ImageError)?.kind, .fileNotFound)
            XCTAssertTrue("\(error)".contains("does_not_exist.jpg"))
        }
        XCTAssertThrowsError(try ImageDecoder.load(contentsOf: Fixtures.images)) { error in
            XCTAssertEqual((error as? ImageError)?.kind, .unreadable)
        }
    }

    func testEveryTruncationOfAJPEGAndAPNGIsAnErrorNotACrash() throws {
        for name in ["chelsea_small.jpg", "orient_6.png", "astronaut_progressive.jpg", "chelsea_interlaced.png"] {
            let data = try Data(contentsOf: Fixtures.image(name))
            let step = max(1, data.count / 300)
            for cut in stride(from: 0, to: data.count - 2, by: step) {
                do {
                    _ = try ImageDecoder.decode(data: data.prefix(cut), name: name)
                    // PNG tolerates a missing tail after the image data (Pillow does too).
                    XCTAssertTrue(name.hasSuffix(".png"), "\(name) cut at \(cut) decoded")
                } catch let error as ImageError {
                    XCTAssertTrue([.truncated, .corrupt, .emptyFile, .notAnImage].contains(error.kind), "\(name) @\(cut): \(error)")
                }
            }
        }
    }

    func testGarbageNeverCrashes() throws {
        var rng = SeededGenerator(seed: 7)
        let jpeg = try Data(contentsOf: Fixtures.image("chelsea_small.jpg"))
        let png = try Data(contentsOf: Fixtures.image("orient_3.png"))
        for base in [jpeg, png] {
            for _ in 0..<150 {
                var d = [UInt8](base)
                for _ in 0..<4 { d[Int.random(in: 2..<d.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
                _ = try? ImageDecoder.decode(data: Data(d), name: "fuzz")
            }
        }
    }

    // MARK: pixel limit

    func testDecompressionBombLimit() throws {
        XCTAssertEqual(ImageDecoder.defaultMaxPixels, 178_956_970)
        let data = try Data(contentsOf: Fixtures.image("chelsea_small.jpg"))  // 40 x 30
        XCTAssertNoThrow(try ImageDecoder.decode(data: data, name: "small", maxPixels: 1200))
        XCTAssertNoThrow(try ImageDecoder.decode(data: data, name: "small", maxPixels: nil))
        XCTAssertThrowsError(try ImageDecoder.decode(data: data, name: "small", maxPixels: 1199)) { error in
            XCTAssertEqual((error as? ImageError)?.kind, .tooManyPixels)
            XCTAssertTrue("\(error)".contains("1200 pixels"), "\(error)")
        }
        let png = try Data(contentsOf: Fixtures.image("coffee.png"))  // 240 x 160
        XCTAssertThrowsError(try ImageDecoder.decode(data: png, name: "coffee", maxPixels: 240 * 160 - 1)) { error in
            XCTAssertEqual((error as? ImageError)?.kind, .tooManyPixels)
        }
    }

    /// Tiny headers that claim a huge image are refused from the header alone.
    func testHugeHeadersAreRefusedBeforeAllocation() throws {
        // PNG: signature + IHDR 50000 x 40000 RGB + an empty IDAT + IEND
        func chunk(_ type: String, _ body: [UInt8]) -> [UInt8] {
            let t = Array(type.utf8)
            return be32(UInt32(body.count)) + t + body + be32(CRC32.checksum(t + body))
        }
        func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 255), UInt8((v >> 8) & 255), UInt8(v & 255)] }
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
            + chunk("IHDR", be32(50000) + be32(40000) + [8, 2, 0, 0, 0]) + chunk("IDAT", []) + chunk("IEND", [])
        XCTAssertThrowsError(try ImageDecoder.decode(data: Data(png), name: "bomb.png")) { error in
            XCTAssertEqual((error as? ImageError)?.kind, .tooManyPixels, "\(error)")
            XCTAssertTrue("\(error)".contains("2000000000 pixels"), "\(error)")
        }
        // JPEG: SOI + SOF0 60000 x 60000 gray + SOS header
        let jpeg: [UInt8] = [0xFF, 0xD8, 0xFF, 0xC0, 0, 11, 8, 0xEA, 0x60, 0xEA, 0x60, 1, 1, 0x11, 0,
                             0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 0x3F, 0, 0, 0, 0xFF, 0xD9]
        XCTAssertThrowsError(try ImageDecoder.decode(data: Data(jpeg), name: "bomb.jpg")) { error in
            XCTAssertEqual((error as? ImageError)?.kind, .tooManyPixels, "\(error)")
        }
        XCTAssertThrowsError(try ImageDecoder.load(contentsOf: Fixtures.image("huge.png"))) { error in
            XCTAssertEqual((error as? ImageError)?.kind, .tooManyPixels)
        }
    }

    func testUnsupportedFormatsAreNamed() {
        let gif = Data("GIF89a\u{1}\u{0}\u{1}\u{0}".utf8)
        XCTAssertThrowsError(try ImageDecoder.decode(data: gif, name: "a.gif")) { error in
            XCTAssertEqual((error as? ImageError)?.kind, .unsupportedFormat)
            XCTAssertTrue("\(error)".contains("GIF"), "\(error)")
        }
        let webp = Data("RIFF\u{0}\u{0}\u{0}\u{0}WEBPVP8 ".utf8)
        XCTAssertThrowsError(try ImageDecoder.decode(data: webp, name: "a.webp")) { error in
            XCTAssertEqual((error as? ImageError)?.kind, .unsupportedFormat)
        }
    }

    // MARK: EXIF orientation

    func testAllEightOrientationFixtures() throws {
        let upright = try ImageDecoder.load(contentsOf: Fixtures.image("orient_1.png"))
        XCTAssertEqual([upright.width, upright.height], [12, 8])
        let ops: [Int: Transpose] = [2: .flipLeftRight, 3: .rotate180, 4: .flipTopBottom, 5: .transpose,
                                     6: .rotate270, 7: .transverse, 8: .rotate90]
        for o in 2...8 {
            let d = try ImageDecoder.decodeStored(data: Data(contentsOf: Fixtures.image("orient_\(o).png")), name: "o\(o)")
            XCTAssertEqual(d.orientation, o)
            XCTAssertEqual(d.image, upright, "the stored pixels are the same in every file")
            XCTAssertEqual(d.upright, upright.transposed(ops[o]!))
        }
    }

    private func tiff(bigEndian: Bool, entries: [(tag: UInt16, type: UInt16, count: UInt32, value: [UInt8])],
                      ifdOffset: UInt32 = 8, tail: [UInt8] = []) -> [UInt8] {
        func u16(_ v: UInt16) -> [UInt8] { bigEndian ? [UInt8(v >> 8), UInt8(v & 255)] : [UInt8(v & 255), UInt8(v >> 8)] }
        func u32(_ v: UInt32) -> [UInt8] {
            let b = [UInt8(v >> 24), UInt8((v >> 16) & 255), UInt8((v >> 8) & 255), UInt8(v & 255)]
            return bigEndian ? b : b.reversed()
        }
        var out: [UInt8] = bigEndian ? [0x4D, 0x4D, 0, 0x2A] : [0x49, 0x49, 0x2A, 0]
        out += u32(ifdOffset) + u16(UInt16(entries.count))
        for e in entries { out += u16(e.tag) + u16(e.type) + u32(e.count) + e.value }
        return out + u32(0) + tail
    }

    func testEXIFParser() {
        func short(_ v: UInt16, _ be: Bool) -> [UInt8] { be ? [UInt8(v >> 8), UInt8(v & 255), 0, 0] : [UInt8(v & 255), UInt8(v >> 8), 0, 0] }
        let exifPrefix = Array("Exif".utf8) + [0, 0]
        for be in [false, true] {
            for o in 0...9 {
                let blob = tiff(bigEndian: be, entries: [(0x010F, 2, 4, Array("abc\0".utf8)), (0x0112, 3, 1, short(UInt16(o), be))])
                let expected = (2...8).contains(o) ? o : 1
                XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(blob)), expected)
                XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(exifPrefix + blob)), expected)
                XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(exifPrefix + exifPrefix + blob)), expected)
            }
        }
        // LONG and rational values count; BYTE / UNDEFINED values are bytes in Pillow and do not.
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(tiff(bigEndian: false, entries: [(0x0112, 4, 1, [6, 0, 0, 0])]))), 6)
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(tiff(bigEndian: false, entries: [(0x0112, 1, 1, [6, 0, 0, 0])]))), 1)
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(tiff(bigEndian: false, entries: [(0x0112, 7, 1, [6, 0, 0, 0])]))), 1)
        let rational = tiff(bigEndian: false, entries: [(0x0112, 5, 1, [26, 0, 0, 0])], tail: [12, 0, 0, 0, 2, 0, 0, 0])
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(rational)), 6)
        // Two SHORTs: Pillow keeps the first.
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(tiff(bigEndian: false, entries: [(0x0112, 3, 2, [3, 0, 8, 0])]))), 3)
        // Duplicate tag: the first one wins.
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(tiff(bigEndian: true, entries: [(0x0112, 3, 1, short(8, true)), (0x0112, 3, 1, short(3, true))]))), 8)
        // Malformed: bad header, IFD offset past the end, entry count past the end, data offset past the end.
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data("XX*\0\u{8}\0\0\0".utf8)), 1)
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(tiff(bigEndian: false, entries: [(0x0112, 3, 1, short(6, false))], ifdOffset: 4000))), 1)
        var truncated = tiff(bigEndian: false, entries: [(0x0112, 3, 1, short(6, false))])
        truncated[8] = 40  // claims 40 entries
        truncated.removeLast(4)
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(truncated)), 6, "entries before the cut still count")
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(tiff(bigEndian: false, entries: [(0x0112, 3, 3, [0xFF, 0xFF, 0, 0])]))), 1)
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data()), 1)
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data([0x49, 0x49])), 1)
        // XMP is used only when the EXIF has no Orientation tag.
        let xmp = Data(#"<rdf:Description tiff:Orientation="6"/>"#.utf8)
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: nil, xmp: xmp), 6)
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: nil, xmp: Data("<tiff:Orientation>8</tiff:Orientation>".utf8)), 8)
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(tiff(bigEndian: false, entries: [(0x0112, 3, 1, short(1, false))])), xmp: xmp), 1)
        XCTAssertEqual(ImageDecoder.exifOrientation(exif: Data(tiff(bigEndian: false, entries: [(0x010F, 2, 4, Array("abc\0".utf8))])), xmp: xmp), 6)
    }

    /// Random and hostile EXIF blobs: never a crash, always a value in 1...8.
    func testEXIFFuzz() {
        var rng = SeededGenerator(seed: 11)
        for _ in 0..<3000 {
            var entries: [(tag: UInt16, type: UInt16, count: UInt32, value: [UInt8])] = []
            for _ in 0..<Int.random(in: 0...4, using: &rng) {
                let count = Bool.random(using: &rng) ? UInt32.random(in: 0...4, using: &rng) : UInt32.random(in: 0...0xFFFF_FFFF, using: &rng)
                entries.append((UInt16.random(in: 0x0110...0x0114, using: &rng), UInt16.random(in: 0...17, using: &rng), count,
                                (0..<4).map { _ in UInt8.random(in: 0...255, using: &rng) }))
            }
            var blob = tiff(bigEndian: Bool.random(using: &rng), entries: entries)
            blob = Array(blob.prefix(Int.random(in: 0...blob.count, using: &rng)))
            XCTAssertTrue((1...8).contains(ImageDecoder.exifOrientation(exif: Data(blob))))
        }
    }
}
