import CZlib
import Foundation

/// A malformed data-set file, naming the file and what is wrong.
public struct DatasetError: Error, CustomStringConvertible, LocalizedError {
    /// The file or folder concerned.
    public let path: String
    /// What is wrong with it.
    public let message: String
    /// Creates an error about `path`.
    public init(path: String, _ message: String) { self.path = path; self.message = message }
    /// `"<path>: <message>"`.
    public var description: String { "\(path): \(message)" }
    /// The same text as `description`, for `LocalizedError`.
    public var errorDescription: String? { description }
}

/// Reads gzip-compressed (or plain) bytes fully, with zlib. `limit` is asked, with the bytes
/// inflated so far, how many the whole may have: inflating stops with an error past it, so a
/// small file cannot inflate into more memory than its header declares.
func gunzipIfNeeded(_ data: Data, path: String, limit: (Data) -> Int = { _ in Int.max }) throws -> Data {
    guard data.count >= 2, data[data.startIndex] == 0x1F, data[data.startIndex + 1] == 0x8B else { return data }
    var stream = z_stream()
    // 16 + MAX_WBITS: expect a gzip header.
    guard inflateInit2_(&stream, 16 + MAX_WBITS, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
        throw DatasetError(path: path, "cannot initialise gzip decompression")
    }
    defer { inflateEnd(&stream) }
    var out = Data()
    let chunk = 1 << 20
    var buffer = [UInt8](repeating: 0, count: chunk)
    var status: Int32 = Z_OK
    try data.withUnsafeBytes { (input: UnsafeRawBufferPointer) in
        stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
        stream.avail_in = uInt(input.count)
        repeat {
            try buffer.withUnsafeMutableBufferPointer { b in
                stream.next_out = b.baseAddress
                stream.avail_out = uInt(chunk)
                status = inflate(&stream, Z_NO_FLUSH)
                guard status == Z_OK || status == Z_STREAM_END else {
                    throw DatasetError(path: path, "corrupt gzip data (zlib status \(status))")
                }
                out.append(b.baseAddress!, count: chunk - Int(stream.avail_out))
            }
            let most = limit(out)
            if out.count > most {
                throw DatasetError(path: path, "inflates to more than the \(most) bytes its header declares")
            }
            if status != Z_STREAM_END && stream.avail_in == 0 && stream.avail_out != 0 {
                throw DatasetError(path: path, "truncated gzip data")
            }
        } while status != Z_STREAM_END
    }
    return out
}

/// The IDX format of (Fashion-)MNIST: a big-endian header (magic with type and rank, then the
/// dimensions) followed by the values.
public struct IDXFile: Sendable {
    /// The dimensions from the header, e.g. `[10000, 28, 28]` for images or `[10000]` for labels.
    public let shape: [Int]
    /// The values (unsigned bytes) in row-major order.
    public let bytes: [UInt8]

    /// Reads an IDX file of unsigned bytes (type 0x08), gzip-compressed or not.
    /// - Throws: `DatasetError` when the file cannot be read, is not IDX, holds another element type, or its size disagrees with its header.
    public init(url: URL) throws {
        guard let raw = CheckpointFolder.regularFileContents(url.path) else {
            throw DatasetError(path: url.path, "cannot be read (missing, unreadable or not a regular file)")
        }
        let data = [UInt8](try gunzipIfNeeded(raw, path: url.path, limit: Self.declaredSize))
        guard data.count >= 4, data[0] == 0, data[1] == 0 else {
            throw DatasetError(path: url.path, "is not an IDX file (bad magic number)")
        }
        guard data[2] == 0x08 else {
            throw DatasetError(path: url.path, "has IDX element type 0x\(String(data[2], radix: 16)); only unsigned bytes (0x08) are supported")
        }
        let rank = Int(data[3])
        guard rank >= 1, data.count >= 4 + 4 * rank else { throw DatasetError(path: url.path, "is truncated in its header") }
        var shape: [Int] = []
        var count = 1
        for i in 0..<rank {
            let o = 4 + 4 * i
            let d = Int(data[o]) << 24 | Int(data[o + 1]) << 16 | Int(data[o + 2]) << 8 | Int(data[o + 3])
            shape.append(d)
            let (c, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow, c <= Self.maxValues else {
                throw DatasetError(path: url.path, "declares \(shape): more than \(Self.maxValues) values")
            }
            count = c
        }
        let header = 4 + 4 * rank
        guard data.count - header == count else {
            throw DatasetError(path: url.path, "declares shape \(shape) (\(count) values) but holds \(data.count - header)")
        }
        self.shape = shape
        bytes = Array(data[header...])
    }
}

extension IDXFile {
    /// The most values an IDX file may declare (8 GiB of bytes; Fashion-MNIST's training images are 47 MB).
    public static let maxValues = 1 << 33

    /// Header plus declared values, once the header has been inflated (Int.max before, and
    /// for a header that is not IDX: the parser reports it).
    static func declaredSize(_ prefix: Data) -> Int {
        let p = [UInt8](prefix.prefix(4 + 4 * 255))
        guard p.count >= 4 else { return Int.max }
        let rank = Int(p[3])
        guard p.count >= 4 + 4 * rank else { return Int.max }
        var count = 1
        for i in 0..<rank {
            let o = 4 + 4 * i
            let d = Int(p[o]) << 24 | Int(p[o + 1]) << 16 | Int(p[o + 2]) << 8 | Int(p[o + 3])
            let (c, overflow) = count.multipliedReportingOverflow(by: d)
            count = overflow ? Int.max : c
        }
        return min(count, maxValues) + 4 + 4 * rank
    }
}

/// An images + labels pair of IDX files, e.g. Fashion-MNIST's test split.
public struct IDXDataset: Sendable {
    /// The images `[N, H, W]`, 8-bit grayscale.
    public let images: IDXFile
    /// The class index of each image.
    public let labels: [Int]
    /// Number of images.
    public var count: Int { labels.count }
    /// Image height in pixels.
    public var height: Int { images.shape[1] }
    /// Image width in pixels.
    public var width: Int { images.shape[2] }

    /// `url` is the images file, or a folder holding `<split>-images-idx3-ubyte[.gz]` and the labels file.
    public init(url: URL, split: String = "t10k") throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) else {
            throw DatasetError(path: url.path, "does not exist")
        }
        let imagesURL: URL, labelsURL: URL
        if isDir.boolValue {
            func find(_ base: String) throws -> URL {
                for name in [base + ".gz", base] {
                    let u = url.appendingPathComponent(name)
                    if FileManager.default.fileExists(atPath: u.path) { return u }
                }
                throw DatasetError(path: url.path, "has no \(base)[.gz]")
            }
            imagesURL = try find("\(split)-images-idx3-ubyte")
            labelsURL = try find("\(split)-labels-idx1-ubyte")
        } else {
            imagesURL = url
            let name = url.lastPathComponent
            guard name.contains("images-idx3") else {
                throw DatasetError(path: url.path, "is not an IDX images file (expected a name with images-idx3) or a folder")
            }
            labelsURL = url.deletingLastPathComponent().appendingPathComponent(name.replacingOccurrences(of: "images-idx3", with: "labels-idx1"))
        }
        images = try IDXFile(url: imagesURL)
        let labelFile = try IDXFile(url: labelsURL)
        guard images.shape.count == 3 else {
            throw DatasetError(path: imagesURL.path, "has shape \(images.shape); expected [count, height, width]")
        }
        guard labelFile.shape.count == 1 else {
            throw DatasetError(path: labelsURL.path, "has shape \(labelFile.shape); expected [count]")
        }
        guard labelFile.shape[0] == images.shape[0] else {
            throw DatasetError(path: labelsURL.path, "has \(labelFile.shape[0]) labels for \(images.shape[0]) images in \(imagesURL.lastPathComponent)")
        }
        labels = labelFile.bytes.map(Int.init)
    }

    /// Image `i` as 8-bit RGB (grey replicated, as Pillow's convert("RGB") does).
    public func image(_ i: Int) -> RGBImage {
        let n = height * width
        let grey = images.bytes[(i * n)..<((i + 1) * n)]
        var rgb = [UInt8](repeating: 0, count: n * 3)
        for (j, v) in grey.enumerated() { rgb[3 * j] = v; rgb[3 * j + 1] = v; rgb[3 * j + 2] = v }
        return RGBImage(width: width, height: height, pixels: rgb)
    }
}
