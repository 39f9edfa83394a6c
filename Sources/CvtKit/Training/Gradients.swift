import Foundation

/// Collects every trainable parameter's gradient under its `named_parameters()` name, in the
/// model's order (a parameter without a gradient yet is reported as zeros).
public final class GradientCollector: ParameterVisitor {
    /// Each trainable parameter's name and gradient (its shape), in visiting order.
    public private(set) var gradients: [(name: String, gradient: Tensor)] = []
    /// An empty collector.
    public init() {}
    /// Ignores buffers (running statistics): they have no gradient.
    public func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {}
    /// Records `gradient` under `key`, or zeros of `tensor`'s shape when no backward pass has reached it.
    public func visit(_ key: String, _ tensor: inout Tensor, gradient: inout Tensor, kind: ParameterKind) throws {
        gradients.append((key, gradient.shape == tensor.shape ? gradient : Tensor(zeros: tensor.shape)))
    }
}

/// A batch of training data from a safetensors file: preprocessed `pixel_values` `[N, C, H, W]`
/// (used as they are) and `labels` (int64 `[N]` class indices, or float32 `[N]` / `[N, L]` targets).
public struct TrainingTensors: Sendable {
    /// `pixel_values` `[N, C, H, W]`, used as they are.
    public var pixelValues: Tensor
    /// `labels`: class indices `[N]`, or float targets `[N]` / `[N, L]`.
    public var labels: Labels
    /// Number of items (`pixelValues.shape[0]`).
    public var count: Int { pixelValues.shape[0] }

    /// A batch of `pixelValues` with `labels` (one per item; not checked until `validate`).
    public init(pixelValues: Tensor, labels: Labels) {
        self.pixelValues = pixelValues; self.labels = labels
    }

    /// Reads and checks `url` (names the file and tensor in every error).
    public init(url: URL) throws {
        let path = url.path
        let file = try SafetensorsFile(url: url)
        guard let info = file.info("pixel_values") else { throw CheckpointError(path: path, "has no tensor named `pixel_values`") }
        guard info.dtype.isFloatingPoint else { throw CheckpointError(path: path, "`pixel_values` is \(info.dtype.rawValue); expected a float tensor") }
        guard info.shape.count == 4, info.shape[0] > 0 else {
            throw CheckpointError(path: path, "`pixel_values` has shape \(info.shape); expected [N, channels, height, width] with N > 0")
        }
        pixelValues = try file.tensor("pixel_values")
        if let bad = pixelValues.withUnsafeBufferPointer({ b in b.firstIndex { !$0.isFinite } }) {
            throw CheckpointError(path: path, "`pixel_values` holds \(pixelValues[flat: bad]) at flat index \(bad) (image \(bad / (pixelValues.count / info.shape[0]))); inputs must be finite")
        }
        guard let l = file.info("labels") else { throw CheckpointError(path: path, "has no tensor named `labels`") }
        switch l.dtype {
        case .i64, .i32, .i16, .i8, .u8:
            guard l.shape == [info.shape[0]] else {
                throw CheckpointError(path: path, "integer `labels` have shape \(l.shape); expected [\(info.shape[0])], one class index per image")
            }
            labels = .classIndices(try file.int64s("labels").map { Int($0) })
        case .f32, .f16, .bf16, .f64:
            guard l.shape.first == info.shape[0], l.shape.count <= 2 else {
                throw CheckpointError(path: path, "float `labels` have shape \(l.shape); expected [\(info.shape[0])] or [\(info.shape[0]), num_labels]")
            }
            let t = try file.tensor("labels")
            if let bad = t.withUnsafeBufferPointer({ b in b.firstIndex { !$0.isFinite } }) {
                throw CheckpointError(path: path, "`labels` holds \(t[flat: bad]) at flat index \(bad); targets must be finite")
            }
            labels = .values(t)
        case .bool:
            throw CheckpointError(path: path, "`labels` is BOOL; expected int64 class indices or float32 targets")
        }
    }

    /// Checks that the labels fit `config`'s head as transformers would use them (before any step).
    public func validate(for config: CvtConfig, source: String) throws {
        let n = config.numLabels
        guard n > 0 else { throw CheckpointError(path: source, "the model has no classification head (num_labels 0): nothing to train against") }
        guard pixelValues.shape[1] == config.numChannels else {
            throw CheckpointError(path: source, "`pixel_values` has \(pixelValues.shape[1]) channels; the model expects num_channels = \(config.numChannels)")
        }
        switch labels {
        case .classIndices(let idx):
            if config.problemType == "multi_label_classification" {
                throw CheckpointError(path: source, "integer `labels` do not fit problem_type multi_label_classification (expected float [N, \(n)] targets)")
            }
            if n > 1, config.problemType != "regression", let (i, y) = idx.enumerated().first(where: { $0.element != -100 && ($0.element < 0 || $0.element >= n) }) {
                throw CheckpointError(path: source, "label \(y) of image \(i) is outside 0..<\(n) (num_labels \(n))")
            }
        case .values(let t):
            if config.problemType == "single_label_classification" {
                throw CheckpointError(path: source, "float `labels` do not fit problem_type single_label_classification (expected int64 class indices)")
            }
            let regression = config.problemType == "regression" || (config.problemType == nil && n == 1)
            if !regression, t.shape != [count, n] {
                throw CheckpointError(path: source, "multi-label `labels` have shape \(t.shape); expected [\(count), \(n)] (one 0/1 target per label)")
            }
            if regression, n == 1, t.count != count {
                throw CheckpointError(path: source, "regression `labels` have shape \(t.shape); expected [\(count)] or [\(count), 1]")
            }
            if regression, n > 1, t.shape != [count, n] {
                throw CheckpointError(path: source, "regression `labels` have shape \(t.shape); expected [\(count), \(n)]")
            }
        }
    }

    /// The items at `indices`, in that order, as a data set of their own.
    public func subset(_ indices: [Int]) throws -> TrainingTensors {
        let (x, y) = try batch(indices)
        return TrainingTensors(pixelValues: x, labels: y)
    }

    /// The images at `indices` (in that order) and their labels, as one batch.
    public func batch(_ indices: [Int]) throws -> (Tensor, Labels) {
        let per = pixelValues.count / count
        let x = Tensor(uninitialized: [indices.count] + pixelValues.shape.dropFirst())
        for (j, i) in indices.enumerated() { (x.unsafePointer + j * per).update(from: pixelValues.unsafePointer + i * per, count: per) }
        switch labels {
        case .classIndices(let v): return (x, .classIndices(indices.map { v[$0] }))
        case .values(let t):
            let w = t.count / count
            let y = Tensor(uninitialized: [indices.count] + t.shape.dropFirst())
            for (j, i) in indices.enumerated() { (y.unsafePointer + j * w).update(from: t.unsafePointer + i * w, count: w) }
            return (x, .values(y))
        }
    }
}

extension CvtForImageClassification {
    /// The loss and every parameter's gradient for one batch, deterministically: BatchNorm in
    /// training mode (batch statistics; running statistics updated), dropout and drop path off.
    /// Gradients are zeroed first; names are transformers' `named_parameters()` names.
    public func gradients(pixelValues: Tensor, labels: Labels) throws -> (loss: Float, gradients: [(name: String, gradient: Tensor)]) {
        try zeroGradients(self)
        let out = try forwardBackward(pixelValues, labels: labels, context: TrainingContext(engine: engine, stochastic: false))
        let collector = GradientCollector()
        try visitParameters(collector, prefix: "")
        return (out.loss, collector.gradients)
    }
}
