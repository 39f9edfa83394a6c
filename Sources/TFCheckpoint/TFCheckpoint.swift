import CheckpointSupport
import CHDF5
import Foundation

/// A TensorFlow CvT checkpoint (`tf_model.h5` as written by transformers 4.x
/// `TFCvtForImageClassification` / `TFCvtModel` `.save_pretrained`, i.e. tf-keras HDF5 weights),
/// read through Debian's libhdf5 and presented under the PyTorch state-dict keys and layouts of
/// transformers' `CvtForImageClassification` (or `CvtModel` for a base-model file).
///
/// `init` opens the file read-only, walks every group (hard links only; soft and external links
/// are listed in `skippedLinks` and not followed), records each dataset's type and shape, and
/// maps the names with `TFNameMapping`. Values are read when asked for (`floats`), converted by
/// HDF5 to float32 (float16, float64 and big-endian data are accepted) and re-laid-out into
/// PyTorch order (Conv2D `[kH,kW,in,out]` → `[out,in,kH,kW]`, Dense `[in,out]` → `[out,in]`).
///
/// A Keras BatchNormalization has no `num_batches_tracked`, so those (int64, unused at inference)
/// keys of the PyTorch state dict have no counterpart here; every other key has exactly one.
///
/// Errors (`TFCheckpointError`): missing or unreadable file, not an HDF5 file, an HDF5 file the
/// library cannot open (truncated, corrupt), and "unknown layout": no dataset maps to a CvT weight,
/// two datasets map to the same key, or a dataset's rank does not fit its key.
///
/// The file stays open until the instance is released; all HDF5 access is serialised, so
/// instances are safe to share between threads.
public final class TFCheckpoint: @unchecked Sendable {
    struct Entry {
        let datasetPath: String
        let tfShape: [Int]
        let shape: [Int]
        let count: Int
        let layout: TFLayout
        let dtype: String
    }

    /// The file's URL.
    public let url: URL
    /// The path used in error messages.
    public let fileName: String
    /// The PyTorch state-dict keys after mapping, sorted. `cvt.`-prefixed encoder keys plus
    /// `layernorm.*` / `classifier.*` for a classification checkpoint; without the `cvt.` prefix
    /// for a base-model (`TFCvtModel`) checkpoint.
    public let tensorNames: [String]
    /// True when the file holds a `TFCvtModel` (no `layernorm` / `classifier`): keys are then those
    /// of PyTorch's `CvtModel`, without `cvt.`.
    public let isBaseModel: Bool
    /// HDF5 dataset paths that map to no CvT key (non-float data, optimizer state, names outside
    /// the CvT state dict), sorted. Empty for a checkpoint written by `save_pretrained`.
    public let unmappedDatasets: [String]
    /// Why each entry of `unmappedDatasets` was left out.
    public let unmappedReasons: [String: String]
    /// Soft, external and other non-hard links found while walking, as "path (kind)"; not followed.
    public let skippedLinks: [String]
    /// Number of datasets found in the file.
    public let datasetCount: Int

    private let file: HDF5.File
    private let entries: [String: Entry]

    /// Opens `url` read-only. Throws `TFCheckpointError` if the file is missing or unreadable, is not
    /// HDF5, cannot be opened by HDF5 (truncated/corrupt), or has no recognisable CvT layout.
    public init(url: URL) throws {
        self.url = url
        let fileName = url.path
        self.fileName = fileName
        let parsed: Parsed
        do {
            try Self.checkSignature(path: url.path)
            parsed = try HDF5.locked { try Self.parse(path: url.path) }
        } catch let error as FormatError {
            throw TFCheckpointError(file: fileName, message: error.message)
        }
        file = parsed.file
        entries = parsed.entries
        tensorNames = parsed.entries.keys.sorted()
        isBaseModel = parsed.isBaseModel
        unmappedReasons = parsed.unmapped
        unmappedDatasets = parsed.unmapped.keys.sorted()
        skippedLinks = parsed.skippedLinks
        datasetCount = parsed.datasetCount
    }

    /// The tensor's shape in PyTorch layout, or nil if there is no such key.
    public func shape(of name: String) -> [Int]? { entries[name]?.shape }

    /// The stored element type: `"float16"`, `"float32"`, `"float64"` (other widths as `"floatN"`),
    /// with `" big-endian"` appended for big-endian data. Values are always returned as float32.
    public func dtype(of name: String) -> String? { entries[name]?.dtype }

    /// The HDF5 dataset a key comes from, e.g. `/cvt/tf_cvt_for_image_classification/cvt/encoder/...:0`.
    public func datasetPath(of name: String) -> String? { entries[name]?.datasetPath }

    /// The dataset's shape in TF layout (e.g. `[kH, kW, in, out]` for a convolution kernel).
    public func tfShape(of name: String) -> [Int]? { entries[name]?.tfShape }

    /// The layout conversion applied to a key.
    public func layout(of name: String) -> TFLayout? { entries[name]?.layout }

    /// The tensor's values in PyTorch layout, row-major, as float32.
    public func floats(_ name: String) throws -> [Float] {
        guard let entry = entries[name] else {
            throw TFCheckpointError(file: fileName, message: "no tensor named \(quoted(name))")
        }
        do {
            let raw = try HDF5.locked { try HDF5.readFloats(file: file.id, path: entry.datasetPath, count: entry.count) }
            return permute(raw, shape: entry.tfShape, permutation: entry.layout.permutation(rank: entry.tfShape.count))
        } catch let error as FormatError {
            throw TFCheckpointError(file: fileName, message: error.message)
        }
    }

    /// Every tensor, keyed by `tensorNames`.
    public func allFloats() throws -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for name in tensorNames { out[name] = try floats(name) }
        return out
    }

    // MARK: - Parsing

    private struct Parsed {
        let file: HDF5.File
        let entries: [String: Entry]
        let isBaseModel: Bool
        let unmapped: [String: String]
        let skippedLinks: [String]
        let datasetCount: Int
    }

    private struct Walk {
        var datasets: [(path: String, info: HDF5.DatasetInfo)] = []
        var skippedLinks: [String] = []
        var objects = 0
    }

    private static let maxDepth = 64
    private static let maxObjects = 1_000_000

    /// The HDF5 format signature, at offset 0 or (after a user block) 512, 1024, 2048, ...
    private static let signature: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0D, 0x0A, 0x1A, 0x0A]

    private static func checkSignature(path: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw FormatError("no such file")
        }
        guard !isDirectory.boolValue else { throw FormatError("is a directory, not an HDF5 file") }
        // Opening a FIFO for reading would wait for a writer: only regular files are read.
        if let type = (try? FileManager.default.attributesOfItem(atPath: path))?[.type] as? FileAttributeType, type != .typeRegular {
            throw FormatError("is not a regular file (\(type.rawValue))")
        }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw FormatError("cannot open the file for reading")
        }
        defer { try? handle.close() }
        let size: UInt64
        do {
            size = try handle.seekToEnd()
            try handle.seek(toOffset: 0)
        } catch {
            throw FormatError("cannot read the file: \(error.localizedDescription)")
        }
        func bytes(at offset: UInt64, count: Int) throws -> [UInt8] {
            do {
                try handle.seek(toOffset: offset)
                return [UInt8](try handle.read(upToCount: count) ?? Data())
            } catch {
                throw FormatError("cannot read the file: \(error.localizedDescription)")
            }
        }
        var offset: UInt64 = 0
        while offset + UInt64(signature.count) <= size {
            if try bytes(at: offset, count: signature.count) == signature { return }
            offset = offset == 0 ? 512 : offset * 2
        }
        let head = try bytes(at: 0, count: 16)
        var message = "not an HDF5 file (no HDF5 signature \\x89HDF\\r\\n\\x1a\\n at offset 0, 512, 1024, …"
        message += size == 0 ? "; the file is empty)" : ")"
        if head.starts(with: [0x50, 0x4B, 0x03, 0x04]) {
            message += "; it is a zip archive (a PyTorch pytorch_model.bin?)"
        } else if head.count >= 9, head[8] == UInt8(ascii: "{") {
            message += "; it looks like a safetensors file"
        } else if head.first == UInt8(ascii: "{") {
            message += "; it looks like JSON"
        }
        message += ". Expected tf_model.h5 as written by TFCvtForImageClassification.save_pretrained"
        throw FormatError(message)
    }

    private static func parse(path: String) throws -> Parsed {
        let file = try HDF5.File(path: path)
        var walk = Walk()
        let root = H5Gopen2(file.id, "/", cvt_h5p_default())
        try HDF5.with(root, close: H5Gclose, what: "the root group") { root in
            try visit(group: root, path: "", depth: 0, walk: &walk)
        }

        var entries: [String: Entry] = [:]
        var unmapped: [String: String] = [:]
        for (dpath, info) in walk.datasets {
            guard case let .float(bits, bigEndian) = info.element else {
                if case let .other(kind) = info.element { unmapped[dpath] = "not floating-point (\(kind))" }
                continue
            }
            guard let tfShape = info.shape else {
                unmapped[dpath] = "null dataspace (no data)"
                continue
            }
            guard let mapped = TFNameMapping.map(datasetPath: dpath, rank: tfShape.count) else {
                unmapped[dpath] = "not a Keras weight path (/<layer>/<variable name>)"
                continue
            }
            guard let rank = TFNameMapping.cvtRank(of: mapped.key) else {
                unmapped[dpath] = "maps to \(quoted(mapped.key)), which is not a CvT state-dict key"
                continue
            }
            guard rank == tfShape.count else {
                throw FormatError("unknown layout: dataset \(quoted(dpath)) maps to \(quoted(mapped.key)), "
                    + "which has rank \(rank) in PyTorch, but its shape is \(tfShape)")
            }
            if let other = entries[mapped.key] {
                throw FormatError("unknown layout: datasets \(quoted(other.datasetPath)) and \(quoted(dpath)) "
                    + "both map to \(quoted(mapped.key))")
            }
            var count = 1
            for d in tfShape {
                let (product, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow, product <= Int.max / 8 else {
                    throw FormatError("dataset \(quoted(dpath)) of shape \(tfShape) is too large")
                }
                count = product
            }
            let perm = mapped.layout.permutation(rank: tfShape.count)
            let dtype: String
            switch bits {
            case 16: dtype = "float16"
            case 32: dtype = "float32"
            case 64: dtype = "float64"
            default: dtype = "float\(bits)"
            }
            entries[mapped.key] = Entry(
                datasetPath: dpath, tfShape: tfShape, shape: perm.map { tfShape[$0] }, count: count,
                layout: mapped.layout, dtype: bigEndian ? dtype + " big-endian" : dtype)
        }

        guard !entries.isEmpty else {
            var message = "unknown layout: no dataset maps to a CvT weight (\(walk.datasets.count) dataset\(walk.datasets.count == 1 ? "" : "s")"
            if let first = walk.datasets.first { message += ", e.g. \(quoted(first.path))" }
            message += "). Expected Keras HDF5 weights as written by TFCvtForImageClassification/TFCvtModel"
                + ".save_pretrained, with datasets such as /cvt/<model>/cvt/encoder/stages.0/embedding/"
                + "convolution_embeddings/projection/kernel:0"
            if walk.datasets.contains(where: { $0.path.hasPrefix("/layers/") || $0.path.contains("/vars/") }) {
                message += "; this looks like a Keras 3 .weights.h5 file (layers/…/vars/N), which is not supported"
            }
            throw FormatError(message)
        }

        // TFCvtModel: the main layer's name `cvt` leads every key; PyTorch's CvtModel has no such level.
        let isBase = !entries.keys.contains { $0.hasPrefix("layernorm.") || $0.hasPrefix("classifier.") }
        if isBase {
            var stripped: [String: Entry] = [:]
            for (key, entry) in entries { stripped[String(key.dropFirst("cvt.".count))] = entry }
            entries = stripped
        }
        return Parsed(file: file, entries: entries, isBaseModel: isBase, unmapped: unmapped,
                      skippedLinks: walk.skippedLinks, datasetCount: walk.datasets.count)
    }

    private static func visit(group: hid_t, path: String, depth: Int, walk: inout Walk) throws {
        for link in try HDF5.links(of: group) {
            let child = path + "/" + link.name
            walk.objects += 1
            guard walk.objects <= maxObjects else {
                throw FormatError("more than \(maxObjects) HDF5 objects; refusing to walk further")
            }
            switch link.kind {
            case .hard: break
            case .soft: walk.skippedLinks.append("\(child) (soft link)"); continue
            case .external: walk.skippedLinks.append("\(child) (external link)"); continue
            case .other: walk.skippedLinks.append("\(child) (user-defined link)"); continue
            }
            try HDF5.with(H5Oopen(group, link.name, cvt_h5p_default()), close: H5Oclose, what: quoted(child)) { object in
                switch try HDF5.objectKind(object) {
                case .group:
                    guard depth < maxDepth else {
                        throw FormatError("groups nested deeper than \(maxDepth) levels at \(quoted(child))")
                    }
                    try visit(group: object, path: child, depth: depth + 1, walk: &walk)
                case .dataset:
                    let info: HDF5.DatasetInfo
                    do {
                        info = try HDF5.datasetInfo(object)
                    } catch let error as FormatError {
                        throw FormatError("dataset \(quoted(child)): \(error.message)")
                    }
                    walk.datasets.append((child, info))
                case .other:
                    break  // committed datatypes: no data
                }
            }
        }
    }
}

/// Row-major transpose: output axis `i` is input axis `permutation[i]`.
func permute(_ values: [Float], shape: [Int], permutation: [Int]) -> [Float] {
    let rank = shape.count
    guard rank > 1, permutation != Array(0..<rank), !values.isEmpty else { return values }
    var inStrides = [Int](repeating: 1, count: rank)
    for i in stride(from: rank - 2, through: 0, by: -1) { inStrides[i] = inStrides[i + 1] * shape[i + 1] }
    let outShape = permutation.map { shape[$0] }
    let strides = permutation.map { inStrides[$0] }  // input stride for each output axis
    var out = [Float](repeating: 0, count: values.count)
    var index = [Int](repeating: 0, count: rank)
    var source = 0
    for o in 0..<values.count {
        out[o] = values[source]
        var axis = rank - 1
        while axis >= 0 {
            index[axis] += 1
            source += strides[axis]
            if index[axis] < outShape[axis] { break }
            source -= strides[axis] * outShape[axis]
            index[axis] = 0
            axis -= 1
        }
    }
    return out
}
