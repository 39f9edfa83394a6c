/// TensorFlow (Keras HDF5) weight names and layouts → transformers' PyTorch CvT state-dict keys.
///
/// A `tf_model.h5` written by `TFPreTrainedModel.save_pretrained` (tf-keras `save_weights`, HDF5
/// format) has one top-level group per top-level Keras layer (`cvt`, and for
/// `TFCvtForImageClassification` also `layernorm` and `classifier`), and under it one dataset per
/// variable at the variable's full name, every `/` of which is a group level:
///
///     /cvt/tf_cvt_for_image_classification/cvt/encoder/stages.0/embedding/convolution_embeddings/projection/kernel:0
///     /cvt/cvt.encoder.stages.2.cls_token:0          (created in __init__, so outside any name scope)
///     /classifier/tf_cvt_for_image_classification/classifier/kernel:0
///
/// The rules are those of transformers 4.x `modeling_tf_pytorch_utils.py`
/// (`convert_tf_weight_name_to_pt_weight_name`, `apply_transpose` and the `running_mean` /
/// `running_var` renames of `load_pytorch_state_dict_in_tf2_model`), applied to the variable name
/// (the dataset path without its top-level layer group):
///
/// 1. drop the `:0` suffix;
/// 2. `$1___$2` path levels become `$2`, `_._` becomes a level separator, empty levels go;
/// 3. the first level (the model's own name scope, e.g. `tf_cvt_for_image_classification` or
///    `tf_cvt_model`) is dropped when there is more than one level;
/// 4. leaf renames: `kernel`, `gamma`, `embeddings` → `weight`; `beta` → `bias`;
///    `moving_mean` → `running_mean`; `moving_variance` → `running_var`;
///    `depthwise_kernel` / `pointwise_kernel` → `depthwise.weight` / `pointwise.weight`;
/// 5. levels are joined with `.`;
/// 6. layouts: a rank-4 `kernel` is a Conv2D kernel `[kH, kW, in/groups, out]` → PyTorch
///    `[out, in/groups, kH, kW]` (axes 3,2,0,1). This covers TFCvt's depthwise Q/K/V projections,
///    which are `Conv2D(groups=C)` with kernel `[k, k, 1, C]` → `[C, 1, k, k]`. A rank-3 `kernel`
///    (Conv1D `[k, in, out]`) → `[out, in, k]`. Any other `kernel` (Dense `[in, out]`) and the
///    separable-conv kernels are transposed by reversing all axes (`[in, out]` → `[out, in]`).
///    Everything else keeps its layout; the CLS token is `[1, 1, C]` in both.
///
/// The base model (`TFCvtModel`, whose h5 has only the `cvt` layer) carries the main layer's name
/// `cvt` as the first key level, which PyTorch's `CvtModel` keys do not have; `TFCheckpoint` strips
/// it for such files (transformers' `start_prefix_to_remove`).
public enum TFLayout: String, Sendable, Equatable {
    /// Same layout in TF and PyTorch (biases, norms, CLS token).
    case identity
    /// Conv2D kernel `[kH, kW, in, out]` → `[out, in, kH, kW]`.
    case conv2D
    /// Conv1D kernel `[k, in, out]` → `[out, in, k]`.
    case conv1D
    /// All axes reversed: Dense kernel `[in, out]` → `[out, in]`.
    case reversed

    /// `permutation[i]` = the TF axis that becomes PyTorch axis `i`.
    func permutation(rank: Int) -> [Int] {
        switch self {
        case .identity: return Array(0..<rank)
        case .conv2D: return rank == 4 ? [3, 2, 0, 1] : Array(0..<rank)
        case .conv1D: return rank == 3 ? [2, 1, 0] : Array(0..<rank)
        case .reversed: return Array((0..<rank).reversed())
        }
    }
}

/// One HDF5 dataset path mapped by the generic transformers rules (before CvT validation).
public struct TFMappedName: Sendable, Equatable {
    /// The PyTorch-style key, e.g. `cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight`.
    public let key: String
    /// How the TF array's axes map onto the PyTorch tensor's.
    public let layout: TFLayout

    /// Creates a mapping of a dataset to PyTorch key `key` with axis layout `layout`.
    public init(key: String, layout: TFLayout) {
        self.key = key
        self.layout = layout
    }
}

/// transformers' TF→PyTorch weight-name conversion (`convert_tf_weight_name_to_pt_weight_name` in
/// `modeling_tf_pytorch_utils.py`) and the ranks CvT's keys must have.
public enum TFNameMapping {
    /// transformers' `convert_tf_weight_name_to_pt_weight_name` (plus the BatchNorm statistics
    /// renames) for a Keras HDF5 dataset at `datasetPath` whose TF shape has rank `rank`.
    /// Returns nil for a dataset that is not inside a top-level layer group, or whose name is
    /// refused (transformers' ReDoS guard: more than 10 `___`, or longer than 2048 with `___`).
    public static func map(datasetPath: String, rank: Int) -> TFMappedName? {
        let parts = datasetPath.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        guard parts.count >= 2 else { return nil }
        return map(variableName: parts.dropFirst().joined(separator: "/"), rank: rank)
    }

    /// The same for a TF variable name such as `tf_cvt_model/cvt/encoder/stages.0/.../kernel:0`.
    public static func map(variableName: String, rank: Int) -> TFMappedName? {
        var name = variableName
        if name.hasSuffix(":0") { name.removeLast(2) }
        let tripleCount = name.components(separatedBy: "___").count - 1
        if (name.count > 2048 && tripleCount > 0) || tripleCount > 10 { return nil }

        // '/$1___$2/' -> '/$2/' (Python re.sub, leftmost non-overlapping: a replaced level consumes
        // the slash after it, so the next level cannot match).
        var levels = name.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        if levels.count >= 3 {
            var i = 1
            while i <= levels.count - 2 {
                if let range = levels[i].range(of: "___", options: .backwards) {
                    levels[i] = String(levels[i][range.upperBound...])
                    i += 2
                } else {
                    i += 1
                }
            }
        }
        name = levels.joined(separator: "/")
        name = name.replacingOccurrences(of: "_._", with: "/")
        while name.contains("//") { name = name.replacingOccurrences(of: "//", with: "/") }

        var comps = name.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        if comps.count > 1 { comps.removeFirst() }
        guard let leaf = comps.last, !comps.joined().isEmpty else { return nil }

        let layout: TFLayout
        if leaf == "kernel" && rank == 4 {
            layout = .conv2D
        } else if leaf == "kernel" && rank == 3 {
            layout = .conv1D
        } else if ["kernel", "pointwise_kernel", "depthwise_kernel"].contains(leaf)
            || comps.contains("emb_projs") || comps.contains("out_projs") {
            layout = .reversed
        } else {
            layout = .identity
        }

        switch leaf {
        case "kernel", "embeddings", "gamma": comps[comps.count - 1] = "weight"
        case "beta": comps[comps.count - 1] = "bias"
        case "pointwise_kernel": comps[comps.count - 1] = "pointwise.weight"
        case "depthwise_kernel": comps[comps.count - 1] = "depthwise.weight"
        case "moving_mean": comps[comps.count - 1] = "running_mean"
        case "moving_variance": comps[comps.count - 1] = "running_var"
        default: break
        }
        return TFMappedName(key: comps.joined(separator: "."), layout: layout)
    }

    /// The rank a CvT state-dict key must have in PyTorch, or nil if `key` is not a key of
    /// `CvtForImageClassification` (`cvt.`-prefixed encoder keys, `layernorm.*`, `classifier.*`).
    /// `num_batches_tracked` is not included: Keras BatchNormalization has no such variable.
    public static func cvtRank(of key: String) -> Int? {
        let c = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        func isIndex(_ s: String) -> Bool { !s.isEmpty && s.count <= 9 && s.allSatisfy { $0.isASCII && $0.isNumber } }
        func match(_ pattern: [String]) -> Bool {
            guard pattern.count == c.count else { return false }
            for (p, s) in zip(pattern, c) {
                if p == "#" { if !isIndex(s) { return false } } else if !p.split(separator: "|").contains(Substring(s)) { return false }
            }
            return true
        }
        let wb = "weight|bias"
        if match(["layernorm", wb]) || match(["classifier", "bias"]) { return 1 }
        if match(["classifier", "weight"]) { return 2 }
        if match(["cvt", "encoder", "stages", "#", "cls_token"]) { return 3 }
        let emb = ["cvt", "encoder", "stages", "#", "embedding", "convolution_embeddings"]
        if match(emb + ["projection", "weight"]) { return 4 }
        if match(emb + ["projection", "bias"]) || match(emb + ["normalization", wb]) { return 1 }
        let layer = ["cvt", "encoder", "stages", "#", "layers", "#"]
        let proj = layer + ["attention", "attention", "convolution_projection_query|convolution_projection_key|convolution_projection_value", "convolution_projection"]
        if match(proj + ["convolution", "weight"]) { return 4 }
        if match(proj + ["normalization", "weight|bias|running_mean|running_var"]) { return 1 }
        let linear = [layer + ["attention", "attention", "projection_query|projection_key|projection_value"],
                      layer + ["attention", "output", "dense"], layer + ["intermediate", "dense"], layer + ["output", "dense"]]
        for l in linear {
            if match(l + ["weight"]) { return 2 }
            if match(l + ["bias"]) { return 1 }
        }
        if match(layer + ["layernorm_before|layernorm_after", wb]) { return 1 }
        return nil
    }
}
