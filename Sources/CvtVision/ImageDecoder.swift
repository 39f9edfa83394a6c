import CImageCodecs
import Foundation

/// The container formats `ImageDecoder` decodes.
public enum ImageFormat: String, Sendable {
    case jpeg = "JPEG"
    case png = "PNG"
}

/// An image as stored in the file, before the EXIF orientation is applied.
public struct DecodedImage: Sendable {
    /// The stored pixels, converted to RGB like Pillow's `convert("RGB")`.
    public let image: RGBImage
    /// The container format the bytes were in.
    public let format: ImageFormat
    /// Pillow's mode for the stored image ("RGB", "L", "LA", "RGBA", "P", "1", "I;16", "CMYK").
    public let mode: String
    /// The EXIF orientation `PIL.ImageOps.exif_transpose` acts on (1 = upright / none).
    public let orientation: Int

    /// The upright image, as transformers' `load_image` returns it.
    public var upright: RGBImage { image.applyingEXIFOrientation(orientation) }
}

/// Reads JPEG and PNG files into RGB the way transformers' `load_image` does with Pillow:
/// `PIL.Image.open` → `PIL.ImageOps.exif_transpose` → `.convert("RGB")`.
public enum ImageDecoder {
    /// Pillow's decompression-bomb limit: `2 × PIL.Image.MAX_IMAGE_PIXELS` = 178,956,970 pixels.
    /// Larger images are refused before any pixel memory is allocated.
    public static let defaultMaxPixels = 2 * warningPixels
    /// Pillow's `PIL.Image.MAX_IMAGE_PIXELS`: larger images get a `DecompressionBombWarning`
    /// (Image.py, `_decompression_bomb_check`), twice as large an error.
    public static let warningPixels = 89_478_485

    /// Decodes and orients an image. `name` is used in error messages.
    /// - Parameter data: the bytes of a JPEG or PNG file.
    /// - Parameter name: what error messages call the image (e.g. its path).
    /// - Parameter maxPixels: the largest `width × height` accepted; nil for no limit.
    public static func decode(data: Data, name: String, maxPixels: Int? = defaultMaxPixels) throws -> RGBImage {
        try decodeStored(data: data, name: name, maxPixels: maxPixels).upright
    }

    /// Reads, decodes and orients the image file at `url`.
    public static func load(contentsOf url: URL, maxPixels: Int? = defaultMaxPixels) throws -> RGBImage {
        try decodeStored(data: readFile(url), name: url.path, maxPixels: maxPixels).upright
    }

    /// Decodes without applying the orientation, and tells the source mode and orientation.
    public static func decodeStored(data: Data, name: String, maxPixels: Int? = defaultMaxPixels) throws -> DecodedImage {
        if data.isEmpty { throw ImageError(kind: .emptyFile, file: name, message: "empty file (0 bytes), not an image") }
        let format = try sniff(data, name: name)
        let limit = UInt64(max(0, maxPixels ?? 0))
        if let maxPixels, maxPixels <= 0 {
            throw ImageError(kind: .tooManyPixels, file: name, message: "pixel limit \(maxPixels) admits no image")
        }
        let result: UnsafeMutablePointer<cvt_image>? = data.withUnsafeBytes { raw in
            let base = raw.bindMemory(to: UInt8.self).baseAddress
            switch format {
            case .jpeg: return cvt_decode_jpeg(base, raw.count, limit)
            case .png: return cvt_decode_png(base, raw.count, limit)
            }
        }
        guard let result else {
            throw ImageError(kind: .outOfMemory, file: name, message: "out of memory while decoding")
        }
        defer { cvt_image_free(result) }
        let r = result.pointee
        let message = withUnsafeBytes(of: r.message) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let mode = withUnsafeBytes(of: r.mode) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        guard r.status == Int32(CVT_OK), let px = r.pixels else {
            throw ImageError(kind: kind(ofStatus: r.status), file: name, message: message)
        }
        let w = Int(r.width), h = Int(r.height)
        let pixels = [UInt8](UnsafeBufferPointer(start: px, count: w * h * 3))
        return DecodedImage(image: RGBImage(width: w, height: h, pixels: pixels), format: format, mode: mode,
                            orientation: Int(r.orientation))
    }

    /// Reads a whole file, with `ImageError`s that name it.
    static func readFile(_ url: URL) throws -> Data {
        let path = url.path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ImageError(kind: .fileNotFound, file: path, message: "no such file")
        }
        if isDirectory.boolValue {
            throw ImageError(kind: .unreadable, file: path, message: "is a directory, not an image file")
        }
        // A FIFO or device would block or never end: only regular files are read.
        if let type = (try? FileManager.default.attributesOfItem(atPath: path))?[.type] as? FileAttributeType, type != .typeRegular {
            throw ImageError(kind: .unreadable, file: path, message: "is not a regular file (\(type.rawValue))")
        }
        do {
            return try Data(contentsOf: url, options: .mappedIfSafe)
        } catch {
            throw ImageError(kind: .unreadable, file: path, message: "cannot read the file (\(error.localizedDescription))")
        }
    }

    /// The format from the leading bytes (JPEG `FF D8 FF`, PNG signature); other known image
    /// signatures are reported as unsupported, anything else as not an image.
    static func sniff(_ data: Data, name: String) throws -> ImageFormat {
        let head = [UInt8](data.prefix(16))
        func starts(_ sig: [UInt8], at offset: Int = 0) -> Bool {
            head.count >= offset + sig.count && Array(head[offset..<(offset + sig.count)]) == sig
        }
        if starts([0xFF, 0xD8, 0xFF]) { return .jpeg }
        if starts([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        let other: String?
        if starts(Array("GIF87a".utf8)) || starts(Array("GIF89a".utf8)) {
            other = "GIF"
        } else if starts(Array("BM".utf8)) {
            other = "BMP"
        } else if starts(Array("RIFF".utf8)) && starts(Array("WEBP".utf8), at: 8) {
            other = "WebP"
        } else if starts([0x49, 0x49, 0x2A, 0x00]) || starts([0x4D, 0x4D, 0x00, 0x2A]) {
            other = "TIFF"
        } else if starts(Array("ftyp".utf8), at: 4) {
            other = "HEIF/AVIF (ISO media)"
        } else if starts([0x00, 0x00, 0x00, 0x0C, 0x6A, 0x50, 0x20, 0x20]) || starts([0xFF, 0x4F, 0xFF, 0x51]) {
            other = "JPEG 2000"
        } else if starts([0x00, 0x00, 0x01, 0x00]) {
            other = "ICO"
        } else {
            other = nil
        }
        if let other {
            throw ImageError(kind: .unsupportedFormat, file: name,
                             message: "unsupported image format \(other) (only JPEG and PNG are supported)")
        }
        let hex = head.prefix(8).map { String(format: "%02x", $0) }.joined(separator: " ")
        throw ImageError(kind: .notAnImage, file: name,
                         message: "not an image: unrecognised data (first bytes \(hex)); expected JPEG or PNG")
    }

    static func kind(ofStatus status: Int32) -> ImageError.Kind {
        switch Int(status) {
        case Int(CVT_ERR_FORMAT): return .notAnImage
        case Int(CVT_ERR_TRUNCATED): return .truncated
        case Int(CVT_ERR_TOO_LARGE): return .tooManyPixels
        case Int(CVT_ERR_EMPTY): return .zeroSized
        case Int(CVT_ERR_MEMORY): return .outOfMemory
        case Int(CVT_ERR_UNSUPPORTED): return .unsupportedFormat
        default: return .corrupt
        }
    }
}

extension ImageDecoder {
    /// The orientation (1…8) `PIL.ImageOps.exif_transpose` acts on for an EXIF blob (a TIFF
    /// structure, optionally preceded by "Exif\0\0") and, when the EXIF has no Orientation tag, an
    /// XMP packet's `tiff:Orientation`. Malformed data gives 1 (no change).
    public static func exifOrientation(exif: Data?, xmp: Data? = nil) -> Int {
        let e = exif ?? Data(), x = xmp ?? Data()
        return e.withUnsafeBytes { eb in
            x.withUnsafeBytes { xb in
                Int(cvt_orientation_from_metadata(eb.bindMemory(to: UInt8.self).baseAddress, eb.count,
                                                  xb.bindMemory(to: UInt8.self).baseAddress, xb.count))
            }
        }
    }
}
