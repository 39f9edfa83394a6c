import Foundation

/// The image-processor settings of a checkpoint folder's `preprocessor_config.json`, with
/// transformers' key names. A key that is absent takes the class default of transformers'
/// `ConvNextImageProcessor` (the processor the `cvt` model type maps to); an explicit `null` is
/// kept as "not set" (nil), which — as in transformers — is an error only when the step that needs
/// it is enabled (`do_*: null` counts as false). Unknown keys are ignored.
public struct PreprocessorConfig: Codable, Equatable, Sendable {
    /// `size`: `{"shortest_edge": N}` (or a bare `N`), or `{"height": H, "width": W}` (or `[H, W]`).
    public enum Size: Equatable, Sendable {
        case shortestEdge(Int)
        case heightWidth(height: Int, width: Int)
    }

    /// `do_resize`: resize (and crop) to `size` (default true).
    public var doResize: Bool
    /// `size`: the target size (default shortest edge 384); see `ConvNextImageProcessor` for how it is used.
    public var size: Size?
    /// `crop_pct`: with a shortest edge below 384, resize to `shortest_edge / crop_pct` then centre-crop (default 0.875).
    public var cropPct: Double?
    /// `resample`: the PIL filter for resizing (default BICUBIC, code 3).
    public var resample: Resampling?
    /// `do_rescale`: multiply pixel values by `rescale_factor` (default true).
    public var doRescale: Bool
    /// `rescale_factor`: the factor for `do_rescale` (default 1/255).
    public var rescaleFactor: Double?
    /// `do_normalize`: subtract `image_mean` and divide by `image_std` per channel (default true).
    public var doNormalize: Bool
    /// Per-channel mean and std (a scalar in the JSON is stored as three equal values).
    public var imageMean: [Double]?
    /// `image_std`: per-channel divisor for `do_normalize`.
    public var imageStd: [Double]?
    /// Optional extra crop after the resize (transformers' `do_center_crop` / `crop_size`); off for CvT.
    public var doCenterCrop: Bool
    /// `crop_size`: the size of the optional `do_center_crop`.
    public var cropSize: Size?
    /// `image_processor_type`: the processor class name recorded by transformers (e.g. `ConvNextImageProcessor`); informational.
    public var imageProcessorType: String?
    /// `feature_extractor_type`: the older class name field (e.g. `ConvNextFeatureExtractor`); informational.
    public var featureExtractorType: String?

    /// transformers' `ConvNextImageProcessor` class defaults (used for absent keys).
    public init(doResize: Bool = true,
                size: Size? = .shortestEdge(384),
                cropPct: Double? = 224.0 / 256.0,
                resample: Resampling? = .bicubic,
                doRescale: Bool = true,
                rescaleFactor: Double? = 1.0 / 255.0,
                doNormalize: Bool = true,
                imageMean: [Double]? = [0.5, 0.5, 0.5],
                imageStd: [Double]? = [0.5, 0.5, 0.5],
                doCenterCrop: Bool = false,
                cropSize: Size? = nil,
                imageProcessorType: String? = nil,
                featureExtractorType: String? = nil) {
        self.doResize = doResize
        self.size = size
        self.cropPct = cropPct
        self.resample = resample
        self.doRescale = doRescale
        self.rescaleFactor = rescaleFactor
        self.doNormalize = doNormalize
        self.imageMean = imageMean
        self.imageStd = imageStd
        self.doCenterCrop = doCenterCrop
        self.cropSize = cropSize
        self.imageProcessorType = imageProcessorType
        self.featureExtractorType = featureExtractorType
    }

    /// microsoft/cvt-13's `preprocessor_config.json` (on the Hugging Face Hub): shortest edge 224, crop_pct 0.875,
    /// BICUBIC, ImageNet mean/std. For a checkpoint folder without a preprocessor config.
    public static var cvt13Default: PreprocessorConfig {
        PreprocessorConfig(size: .shortestEdge(224), cropPct: 0.875, resample: .bicubic,
                           imageMean: [0.485, 0.456, 0.406], imageStd: [0.229, 0.224, 0.225],
                           featureExtractorType: "ConvNextFeatureExtractor")
    }

    /// Reads a `preprocessor_config.json`.
    public static func load(contentsOf url: URL) throws -> PreprocessorConfig {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw PreprocessingError("\(url.path): cannot read the preprocessor config (\(error.localizedDescription))")
        }
        return try decode(data, name: url.path)
    }

    /// `preprocessor_config.json` bytes as `save_pretrained` writes them (keys sorted, indented).
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }

    /// Parses `preprocessor_config.json` bytes; `name` is used in error messages.
    public static func decode(_ data: Data, name: String = "preprocessor_config.json") throws -> PreprocessorConfig {
        do {
            return try JSONDecoder().decode(PreprocessorConfig.self, from: data)
        } catch let error as PreprocessingError {
            throw PreprocessingError("\(name): \(error.message)")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.dataCorrupted(context) {
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw PreprocessingError("\(name): invalid value\(path.isEmpty ? "" : " for \(path)"): \(context.debugDescription)")
        } catch {
            throw PreprocessingError("\(name): not a valid preprocessor config (\(error))")
        }
    }

    // MARK: Codable

    enum CodingKeys: String, CodingKey {
        case doResize = "do_resize", size, cropPct = "crop_pct", resample
        case doRescale = "do_rescale", rescaleFactor = "rescale_factor"
        case doNormalize = "do_normalize", imageMean = "image_mean", imageStd = "image_std"
        case doCenterCrop = "do_center_crop", cropSize = "crop_size"
        case imageProcessorType = "image_processor_type", featureExtractorType = "feature_extractor_type"
    }

    /// Decodes a `preprocessor_config.json` object: absent keys take the class defaults, `null` is kept
    /// as nil, a scalar mean/std becomes three equal values, unknown keys are ignored.
    /// - Throws: `PreprocessingError` for an unsupported `size`, `crop_size` or `resample`;
    ///   `DecodingError` for a value of the wrong type.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = PreprocessorConfig()

        /// Absent → `fallback`; null → nil; otherwise the decoded value.
        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T?) throws -> T? {
            guard c.contains(key) else { return fallback }
            if try c.decodeNil(forKey: key) { return nil }
            return try c.decode(T.self, forKey: key)
        }
        func flag(_ key: CodingKeys, _ fallback: Bool) throws -> Bool {
            try value(key, fallback) ?? false
        }
        func sizeValue(_ key: CodingKeys, _ fallback: Size?, squareInt: Bool) throws -> Size? {
            guard c.contains(key) else { return fallback }
            if try c.decodeNil(forKey: key) { return nil }
            if let n = try? c.decode(Int.self, forKey: key) {
                return squareInt ? .heightWidth(height: n, width: n) : .shortestEdge(n)
            }
            if let list = try? c.decode([Int].self, forKey: key) {
                if list.count == 2 { return .heightWidth(height: list[0], width: list[1]) }
                if list.count == 1 { return squareInt ? .heightWidth(height: list[0], width: list[0]) : .shortestEdge(list[0]) }
                throw PreprocessingError("\(key.rawValue) must have 1 or 2 elements, got \(list.count)")
            }
            let dict: [String: Int?]
            do {
                dict = try c.decode([String: Int?].self, forKey: key)
            } catch {
                throw PreprocessingError("\(key.rawValue) must be an integer, a [height, width] list or a dictionary of integers")
            }
            let keys = Set(dict.compactMap { $0.value == nil ? nil : $0.key })
            if let s = dict["shortest_edge"] ?? nil, keys.isSubset(of: ["shortest_edge", "longest_edge"]) {
                return .shortestEdge(s)  // a longest_edge is not used by ConvNext's resize
            }
            if let h = dict["height"] ?? nil, let w = dict["width"] ?? nil, keys == ["height", "width"] {
                return .heightWidth(height: h, width: w)
            }
            throw PreprocessingError(
                "unsupported \(key.rawValue) \(keys.sorted()): expected {\"shortest_edge\": N} or {\"height\": H, \"width\": W}")
        }
        func channels(_ key: CodingKeys, _ fallback: [Double]?) throws -> [Double]? {
            guard c.contains(key) else { return fallback }
            if try c.decodeNil(forKey: key) { return nil }
            if let x = try? c.decode(Double.self, forKey: key) { return [x, x, x] }
            return try c.decode([Double].self, forKey: key)
        }

        doResize = try flag(.doResize, d.doResize)
        size = try sizeValue(.size, d.size, squareInt: false)
        cropPct = try value(.cropPct, d.cropPct)
        if c.contains(.resample), try !c.decodeNil(forKey: .resample) {
            resample = try Resampling(pilCode: try c.decode(Int.self, forKey: .resample))
        } else {
            resample = c.contains(.resample) ? nil : d.resample
        }
        doRescale = try flag(.doRescale, d.doRescale)
        rescaleFactor = try value(.rescaleFactor, d.rescaleFactor)
        doNormalize = try flag(.doNormalize, d.doNormalize)
        imageMean = try channels(.imageMean, d.imageMean)
        imageStd = try channels(.imageStd, d.imageStd)
        doCenterCrop = try flag(.doCenterCrop, d.doCenterCrop)
        cropSize = try sizeValue(.cropSize, d.cropSize, squareInt: true)
        imageProcessorType = try? c.decodeIfPresent(String.self, forKey: .imageProcessorType)
        featureExtractorType = try? c.decodeIfPresent(String.self, forKey: .featureExtractorType)
        try checkBounds()
    }

    /// The largest `shortest_edge`, height or width a config may ask for (the model is then fed
    /// images of that size: 8192² RGB floats are 805 MB per image). Published CvT checkpoints use
    /// 224 and 384.
    public static let maxEdge = 8192
    /// The largest resize target `shortest_edge / crop_pct` (ConvNext resizes, then crops).
    public static let maxResizeEdge = 65536

    var shortestEdge: Int? { if case .shortestEdge(let e)? = size { return e } else { return nil } }

    /// Sizes within `1...maxEdge` and a resize target within `maxResizeEdge`, before any image is resized.
    public func checkBounds() throws {
        func edge(_ field: String, _ v: Int) throws {
            guard (1...Self.maxEdge).contains(v) else {
                throw PreprocessingError("\(field) is \(v); it must be between 1 and \(Self.maxEdge)")
            }
        }
        func check(_ key: String, _ s: Size?) throws {
            switch s {
            case nil: break
            case .shortestEdge(let n)?: try edge("\(key).shortest_edge", n)
            case .heightWidth(let h, let w)?: try edge("\(key).height", h); try edge("\(key).width", w)
            }
        }
        try check("size", size); try check("crop_size", cropSize)
        // ConvNext resizes to shortest_edge / crop_pct: a tiny crop_pct asks for a huge image.
        if let p = cropPct, let e = shortestEdge, e < 384, !(p > 0 && Double(e) / p <= Double(Self.maxResizeEdge)) {
            throw PreprocessingError("crop_pct is \(p); shortest_edge / crop_pct must be between 1 and \(Self.maxResizeEdge)")
        }
        for (key, v) in [("rescale_factor", rescaleFactor.map { [$0] }), ("image_mean", imageMean), ("image_std", imageStd)] {
            if let v, v.contains(where: { !$0.isFinite }) { throw PreprocessingError("\(key) must be finite, got \(v.prefix(3))") }
            if let v, v.count > 4 { throw PreprocessingError("\(key) must have 3 values, got \(v.count)") }
        }
    }

    /// Encodes with transformers' key names; nil values are written as `null`.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        func encodeSize(_ s: Size?, _ key: CodingKeys) throws {
            switch s {
            case nil: try c.encodeNil(forKey: key)
            case .shortestEdge(let n)?: try c.encode(["shortest_edge": n], forKey: key)
            case .heightWidth(let h, let w)?: try c.encode(["height": h, "width": w], forKey: key)
            }
        }
        try c.encode(doResize, forKey: .doResize)
        try encodeSize(size, .size)
        try c.encode(cropPct, forKey: .cropPct)
        try c.encode(resample?.rawValue, forKey: .resample)
        try c.encode(doRescale, forKey: .doRescale)
        try c.encode(rescaleFactor, forKey: .rescaleFactor)
        try c.encode(doNormalize, forKey: .doNormalize)
        try c.encode(imageMean, forKey: .imageMean)
        try c.encode(imageStd, forKey: .imageStd)
        if doCenterCrop || cropSize != nil {
            try c.encode(doCenterCrop, forKey: .doCenterCrop)
            try encodeSize(cropSize, .cropSize)
        }
        try c.encodeIfPresent(imageProcessorType, forKey: .imageProcessorType)
        try c.encodeIfPresent(featureExtractorType, forKey: .featureExtractorType)
    }
}
