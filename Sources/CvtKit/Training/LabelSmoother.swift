import Foundation

/// transformers' `LabelSmoother` (trainer_pt_utils.py): cross-entropy against labels smoothed by
/// `epsilon`, averaged over the labelled items. The Trainer uses it instead of the model's loss when
/// `label_smoothing_factor` is not 0 (and the problem is not multi-label), passing
/// `num_items_in_batch`: the labelled items of the whole accumulated optimizer step.
///
/// Per labelled row: `(1 − ε)·(−log p_y) + (ε / L)·Σ_c (−log p_c)`; the loss is the sum over rows
/// divided by the denominator (`numItemsInBatch`, else this batch's labelled rows). Rows labelled
/// `ignoreIndex` add nothing and get a zero gradient.
public struct LabelSmoother: Sendable, Equatable {
    /// ε: the share of the target spread evenly over all labels (`label_smoothing_factor`).
    public var epsilon: Double
    /// The label value of rows that add nothing to the loss (PyTorch's -100).
    public var ignoreIndex: Int

    /// A smoother with `epsilon` (default 0.1, transformers' `LabelSmoother` default) and `ignoreIndex`.
    public init(epsilon: Double = 0.1, ignoreIndex: Int = -100) {
        self.epsilon = epsilon; self.ignoreIndex = ignoreIndex
    }

    /// The loss for `logits` (row-major `[labels.count, numLabels]`) and, when `gradient` is given
    /// (same size), dLoss/dlogits written into it:
    /// `(p_j − (1 − ε)·[j = y] − ε / L) / denominator` for labelled rows, 0 for ignored ones.
    /// Sums run in double; a denominator of 0 (every label ignored) gives NaN, as torch's 0/0.
    public func callAsFunction(logits: UnsafeBufferPointer<Float>, numLabels: Int, labels: [Int],
                               numItemsInBatch: Int? = nil, gradient: UnsafeMutableBufferPointer<Float>? = nil) throws -> Float {
        let l = numLabels, b = labels.count
        guard l > 0, logits.count == b * l else {
            throw CvtInputError("label smoothing: \(logits.count) logits do not fit \(b) labels × \(l) classes")
        }
        if let gradient, gradient.count != logits.count {
            throw CvtInputError("label smoothing: gradient buffer holds \(gradient.count) values for \(logits.count) logits")
        }
        for (i, y) in labels.enumerated() where y != ignoreIndex && !(y >= 0 && y < l) {
            // quirk: transformers clamps a negative label other than ignore_index to class 0; such a
            // label is a data error, so it is reported instead.
            throw CvtInputError("label smoothing: label \(y) of item \(i) is outside 0..<\(l)")
        }
        let counted = labels.reduce(0) { $0 + ($1 == ignoreIndex ? 0 : 1) }
        if let n = numItemsInBatch, n < 0 { throw CvtInputError("label smoothing: num_items_in_batch must not be negative, got \(n)") }
        let denominator = Double(numItemsInBatch ?? counted)
        let eps = epsilon
        var nll = 0.0, smoothed = 0.0
        var probabilities = [Double](repeating: 0, count: l)
        for (r, y) in labels.enumerated() {
            let row = logits.baseAddress! + r * l
            if y == ignoreIndex {
                if let gradient { for j in 0..<l { gradient[r * l + j] = 0 } }
                continue
            }
            var m = -Double.infinity
            for j in 0..<l { m = max(m, Double(row[j])) }
            var sum = 0.0
            for j in 0..<l { let e = exp(Double(row[j]) - m); probabilities[j] = e; sum += e }
            let logSum = m + log(sum)
            // −log p_j = logSum − z_j
            nll += logSum - Double(row[y])
            var rowSmoothed = 0.0
            for j in 0..<l { rowSmoothed += logSum - Double(row[j]) }
            smoothed += rowSmoothed
            if let gradient {
                for j in 0..<l {
                    let p = probabilities[j] / sum
                    let target = (j == y ? 1 - eps : 0) + eps / Double(l)
                    gradient[r * l + j] = Float((p - target) / denominator)
                }
            }
        }
        return Float((1 - eps) * (nll / denominator) + eps * (smoothed / (denominator * Double(l))))
    }

    /// The same on a `[B, L]` tensor, returning the loss and the `[B, L]` gradient.
    public func callAsFunction(logits: Tensor, labels: [Int], numItemsInBatch: Int? = nil) throws -> (loss: Float, gradient: Tensor) {
        guard logits.rank == 2 else { throw CvtInputError("label smoothing: logits must be [batch, labels], got \(logits.shape)") }
        var gradient = Tensor(zeros: logits.shape)
        let loss = try gradient.withUnsafeMutableBufferPointer { g in
            try logits.withUnsafeBufferPointer { x in
                try self(logits: x, numLabels: logits.shape[1], labels: labels, numItemsInBatch: numItemsInBatch, gradient: g)
            }
        }
        return (loss, gradient)
    }
}
