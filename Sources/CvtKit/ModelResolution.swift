import Foundation
@_exported import HubClient

/// Turns what a user types after `--model` into a local checkpoint folder: a folder on disk, or a
/// Hub id `org/name[@revision]` found in the Hugging Face cache (shared with Python) or downloaded
/// into it. `HF_HUB_OFFLINE=1` never touches the network.
public enum ModelResolver {
    /// Files a CvT checkpoint folder needs; weights are safetensors first, then the pickle format.
    static let required = ["config.json"]
    static let optional = ["preprocessor_config.json"]
    static let weights = [["model.safetensors", "pytorch_model.bin", "tf_model.h5"]]

    /// The local checkpoint folder for `reference`: an existing folder as it is, or a Hub id
    /// (`org/name`, `org/name@revision`) resolved through `client`'s cache, downloading `config.json`,
    /// `preprocessor_config.json` (if it exists) and the first of `model.safetensors`,
    /// `pytorch_model.bin` and `tf_model.h5` that exists. `progress` reports each download.
    /// - Throws: `HubError` when the reference is invalid, the repository or files are missing, or a download fails.
    public static func resolve(_ reference: String, client: HubClient = HubClient(), progress: DownloadProgress? = nil) throws -> URL {
        let ref = try ModelReference.parse(reference)
        if case .local(let url) = ref { return url }
        return try client.snapshot(ref, files: required, optionalFiles: optional, alternatives: weights, progress: progress)
    }
}

extension CvtForImageClassification {
    /// Loads from a local folder or a Hub id (`microsoft/cvt-13`, `org/name@revision`).
    public convenience init(pretrained reference: String, engine: Engine? = nil, dtype: InferenceDType? = nil,
                            progress: DownloadProgress? = nil) throws {
        try self.init(pretrained: ModelResolver.resolve(reference, progress: progress), engine: engine, dtype: dtype)
    }
}

extension ImageClassificationPipeline {
    /// Loads model and processor from a local folder or a Hub id.
    public convenience init(model reference: String, engine: Engine? = nil, dtype: InferenceDType? = nil,
                            progress: DownloadProgress? = nil) throws {
        try self.init(model: ModelResolver.resolve(reference, progress: progress), engine: engine, dtype: dtype)
    }
}

/// This package's version (`cvt --version`).
public let swiftCvtVersion = "0.9.0"
