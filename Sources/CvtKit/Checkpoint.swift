@_exported import Cvt
@_exported import CvtNN
@_exported import CvtTensor
import Foundation
@_exported import Safetensors
@_exported import TorchCheckpoint
@_exported import TFCheckpoint

/// A checkpoint folder that cannot be used, naming the file and what is wrong with it.
public struct CheckpointError: Error, CustomStringConvertible, LocalizedError, Sendable {
    /// The folder or file concerned.
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

extension SafetensorsFile: TensorSource {
    /// The shape of tensor `name`, or nil when the file has none.
    public func shape(of name: String) -> [Int]? { info(name)?.shape }
}

/// `pytorch_model.bin` through the restricted unpickler (no code from the file ever runs).
extension TorchCheckpoint: TensorSource {}

/// `tf_model.h5` (TFCvtForImageClassification), TF names and layouts mapped to PyTorch's.
extension TFCheckpoint: TensorSource {}

extension SafetensorsFile {
    /// The named tensor as float32 (F32/F16/BF16/F64 stored), or an error naming file and key.
    public func tensor(_ name: String) throws -> Tensor {
        guard let info = info(name) else { throw SafetensorsError(file: fileName, message: "no tensor named '\(name)'") }
        return try Tensor(shape: info.shape, scalars: floats(name))
    }
}

extension SafetensorsWriter {
    /// Adds `tensor` (row-major, its shape) under `name`, stored as `dtype` (F32 by default; F16, BF16 and F64 are rounded from float32).
    public mutating func add(_ name: String, _ tensor: Tensor, as dtype: SafetensorsDType = .f32) throws {
        try add(name, floats: tensor.scalars, shape: tensor.shape, as: dtype)
    }
}

/// The files of a Hugging Face checkpoint folder.
public struct CheckpointFolder: Sendable {
    /// The folder.
    public let url: URL
    /// The checkpoint folder at `url` (nothing is read until asked).
    public init(_ url: URL) { self.url = url }

    /// `config.json`: the model config (`CvtConfig`).
    public var configURL: URL { url.appendingPathComponent("config.json") }
    /// `model.safetensors`: the weights in safetensors format (read first when present).
    public var safetensorsURL: URL { url.appendingPathComponent("model.safetensors") }
    /// `pytorch_model.bin`: the weights in PyTorch's zip format (read through a restricted unpickler).
    public var pytorchBinURL: URL { url.appendingPathComponent("pytorch_model.bin") }
    /// `tf_model.h5`: the weights of a TensorFlow `TFCvtForImageClassification` (HDF5).
    public var tfH5URL: URL { url.appendingPathComponent("tf_model.h5") }
    /// `preprocessor_config.json`: the image processor settings (`PreprocessorConfig`).
    public var preprocessorURL: URL { url.appendingPathComponent("preprocessor_config.json") }

    /// The image processor settings: `preprocessor_config.json`, or, for a folder without one,
    /// microsoft/cvt-13's (not the processor class's defaults) with a warning to show the user.
    public func loadPreprocessorConfig() throws -> (config: PreprocessorConfig, warning: String?) {
        let path = preprocessorURL.path
        guard FileManager.default.fileExists(atPath: path) else {
            return (.cvt13Default, "\(path) not found; using the microsoft/cvt-13 preprocessing (224, crop_pct 0.875, bicubic, ImageNet mean/std)")
        }
        guard let data = Self.regularFileContents(path, maxBytes: Self.maxConfigBytes) else {
            throw CheckpointError(path: path, "cannot be read (unreadable, not a regular file or over \(Self.maxConfigBytes >> 20) MiB)")
        }
        return (try PreprocessorConfig.decode(data, name: path), nil)
    }

    /// Reads and validates `config.json`.
    /// - Throws: `CheckpointError` naming the file when the folder does not exist, the file cannot be
    ///   read, is not JSON, or is not a valid CvT config.
    public func loadConfig() throws -> CvtConfig {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), isDir.boolValue else {
            throw CheckpointError(path: url.path, "is not a checkpoint folder (expected a directory with config.json and model.safetensors)")
        }
        guard let data = Self.regularFileContents(configURL.path, maxBytes: Self.maxConfigBytes) else {
            throw CheckpointError(path: configURL.path, "cannot be read (missing, unreadable, not a regular file or over \(Self.maxConfigBytes >> 20) MiB)")
        }
        do {
            return try CvtConfig.decode(data)
        } catch let e as CvtConfigError {
            throw CheckpointError(path: configURL.path, e.description)
        } catch let e as DecodingError {
            throw CheckpointError(path: configURL.path, "is not a valid CvT config: \(Self.describe(e))")
        } catch {
            throw CheckpointError(path: configURL.path, "is not valid JSON: \(error)")
        }
    }

    /// The bytes of a regular file (following symlinks, as the Hugging Face cache uses them), nil
    /// for anything else: a FIFO would block the read, a device never end it.
    static func regularFileContents(_ path: String, maxBytes: Int = Int.max) -> Data? {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= maxBytes else { return nil }
        return FileManager.default.contents(atPath: path)
    }

    /// The largest config.json / preprocessor_config.json read (an id2label of a million labels is
    /// about 30 MB).
    public static let maxConfigBytes = 64 << 20

    static func describe(_ e: DecodingError) -> String {
        func path(_ c: DecodingError.Context) -> String { c.codingPath.map(\.stringValue).joined(separator: ".") }
        switch e {
        case .typeMismatch(let t, let c): return "`\(path(c))` has the wrong type (expected \(t))"
        case .valueNotFound(let t, let c): return "`\(path(c))` is null (expected \(t))"
        case .keyNotFound(let k, let c): return "missing key `\(k.stringValue)` at `\(path(c))`"
        case .dataCorrupted(let c): return "\(c.debugDescription) at `\(path(c))`"
        @unknown default: return "\(e)"
        }
    }

    /// Opens the weights: `model.safetensors` first (as transformers prefers it), else
    /// `pytorch_model.bin`, else `tf_model.h5`. Returns the source and the file it came from.
    public func openWeights() throws -> (source: TensorSource, path: String) {
        if FileManager.default.fileExists(atPath: safetensorsURL.path) {
            return (try SafetensorsFile(url: safetensorsURL), safetensorsURL.path)
        }
        if FileManager.default.fileExists(atPath: pytorchBinURL.path) {
            return (try TorchCheckpoint(url: pytorchBinURL), pytorchBinURL.path)
        }
        if FileManager.default.fileExists(atPath: tfH5URL.path) {
            return (try TFCheckpoint(url: tfH5URL), tfH5URL.path)
        }
        throw CheckpointError(path: url.path, "has no model.safetensors, pytorch_model.bin or tf_model.h5")
    }
}

extension CvtForImageClassification {
    /// Loads a Hugging Face checkpoint folder (`config.json` + `model.safetensors`), strictly.
    /// `dtype`, when given, sets the model's precision and weight storage first, so half-precision
    /// storage is filled layer by layer (never the whole model in float32); nil leaves the engine as is.
    public convenience init(pretrained url: URL, engine: Engine? = nil, dtype: InferenceDType? = nil) throws {
        let folder = CheckpointFolder(url)
        let config = try folder.loadConfig()
        let (weights, path) = try folder.openWeights()
        try Self.checkSize(of: config, against: weights, configPath: folder.configURL.path, weightsPath: path)
        try self.init(zeroed: config, engine: engine)
        try dtype?.apply(to: self)
        try load(from: weights, sourceName: path)
        if let file = weights as? SafetensorsFile { try loadBatchNormCounters(from: file) }
    }

    /// Models above this many parameters are allocated only when the weights file holds at least as
    /// many values (a config.json cannot make a small checkpoint allocate gigabytes). Below it the
    /// strict load reports the missing keys by name.
    public static let parametersAllocatedWithoutWeights = 1 << 24

    static func checkSize(of config: CvtConfig, against weights: TensorSource, configPath: String, weightsPath: String) throws {
        guard let count = config.parameterCount, count > parametersAllocatedWithoutWeights else { return }
        var held = 0
        for name in weights.tensorNames {
            guard let shape = weights.shape(of: name) else { continue }
            var n = 1
            for d in shape {
                let (r, o) = n.multipliedReportingOverflow(by: max(d, 0))
                n = o ? Int.max : r
            }
            held = held.addingReportingOverflow(n).overflow ? Int.max : held + n
        }
        if count > held {
            throw CheckpointError(path: configPath, "declares a model with \(count) parameters but \(weightsPath) holds only \(held) values")
        }
    }

    /// Each BatchNorm's `num_batches_tracked`, where the file has it (the counters are unused at
    /// inference; training continues counting from them).
    public func loadBatchNormCounters(from file: SafetensorsFile) throws {
        for (key, bn) in namedBatchNorms {
            let name = "\(key).num_batches_tracked"
            guard file.info(name) != nil, let v = try file.int64s(name).first else { continue }
            bn.numBatchesTracked = Int(v)
        }
    }

    /// Every BatchNorm of the Q/K/V projections with its checkpoint key (without the last segment).
    public var namedBatchNorms: [(key: String, module: BatchNorm2d)] {
        cvt.stages.enumerated().flatMap { s, stage in
            stage.layers.enumerated().flatMap { l, layer -> [(key: String, module: BatchNorm2d)] in
                let a = layer.attention
                return [("query", a.convolutionProjectionQuery), ("key", a.convolutionProjectionKey), ("value", a.convolutionProjectionValue)]
                    .compactMap { name, p in
                        p.normalization.map { ("cvt.encoder.stages.\(s).layers.\(l).attention.attention.convolution_projection_\(name).convolution_projection.normalization", $0) }
                    }
            }
        }
    }

    /// Writes `config.json` and `model.safetensors` (weights in `dtype`, which `config.json`
    /// records), as `save_pretrained` does. A pipeline's `savePretrained` also writes its image
    /// processor's settings.
    public func savePretrained(to url: URL, dtype: SafetensorsDType = .f32) throws {
        let dtypeName: String
        switch dtype {
        case .f32: dtypeName = "float32"
        case .bf16: dtypeName = "bfloat16"
        case .f16: dtypeName = "float16"
        default: throw CheckpointError(path: url.path, "weights can be saved as F32, BF16 or F16, not \(dtype.rawValue)")
        }
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        // Each file is replaced by a rename, which would replace a device node or FIFO too.
        for name in ["config.json", "model.safetensors"] {
            var st = stat()
            let path = url.appendingPathComponent(name).path
            if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) != S_IFREG {
                throw CheckpointError(path: path, "exists and is not a regular file (a device, FIFO, folder or symlink); refusing to replace it")
            }
        }
        try config.jsonData(dtype: dtypeName).write(to: url.appendingPathComponent("config.json"), options: .atomic)
        var writer = SafetensorsWriter(metadata: ["format": "pt"])
        let sd = try stateDict()
        for key in sd.order { if let t = sd.tensors[key] { try writer.add(key, t, as: dtype) } }
        // transformers' state_dict also holds each BatchNorm's step counter (training-mode passes).
        for (key, bn) in namedBatchNorms {
            try writer.add("\(key).num_batches_tracked", int64s: [Int64(bn.numBatchesTracked)], shape: [])
        }
        try writer.write(to: url.appendingPathComponent("model.safetensors"))
    }
}
