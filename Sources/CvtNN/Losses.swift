import CvtTensor
import Foundation

/// The three losses of `CvtForImageClassification`, as PyTorch defines them (mean reduction).
/// Accumulated in double so the float32 result is within rounding of PyTorch's.
public enum Losses {
    /// `CrossEntropyLoss(ignore_index: -100)` on logits `[B, L]` and class indices `[B]`.
    public static func crossEntropy(logits: Tensor, labels: [Int]) throws -> Float {
        guard logits.rank == 2, logits.shape[0] == labels.count else {
            throw TensorError("cross-entropy: logits \(logits.shape) do not fit \(labels.count) labels")
        }
        let l = logits.shape[1]
        var total = 0.0, counted = 0
        try logits.withUnsafeBufferPointer { p in
            for (b, y) in labels.enumerated() {
                if y == -100 { continue }
                guard y >= 0 && y < l else { throw TensorError("cross-entropy: label \(y) of item \(b) is outside 0..<\(l)") }
                let row = p[(b * l)..<(b * l + l)]
                let m = Double(row.max() ?? 0)
                let lse = m + log(row.reduce(0.0) { $0 + exp(Double($1) - m) })
                total += lse - Double(row[row.startIndex + y])
                counted += 1
            }
        }
        // PyTorch returns NaN (0/0) when every label is ignored.
        return Float(total / Double(counted))
    }

    /// `MSELoss` between same-sized inputs.
    public static func mse(_ a: [Float], _ b: [Float]) throws -> Float {
        guard a.count == b.count else { throw TensorError("mse: \(a.count) predictions vs \(b.count) targets") }
        var s = 0.0
        for i in 0..<a.count { let d = Double(a[i]) - Double(b[i]); s += d * d }
        return Float(s / Double(a.count))
    }

    /// `BCEWithLogitsLoss` (mean over all elements), in the numerically stable form PyTorch uses.
    public static func bceWithLogits(_ x: [Float], _ y: [Float]) throws -> Float {
        guard x.count == y.count else { throw TensorError("bce: \(x.count) logits vs \(y.count) targets") }
        var s = 0.0
        for i in 0..<x.count {
            let xi = Double(x[i]), yi = Double(y[i])
            s += (1 - yi) * xi + log1p(exp(-abs(xi))) + max(-xi, 0)
        }
        return Float(s / Double(x.count))
    }

    // Gradients with respect to the logits, for the same mean reductions (computed in double).

    /// d`crossEntropy`/dlogits: `(softmax − onehot) / counted` on rows whose label is not −100.
    public static func crossEntropyGradient(logits: Tensor, labels: [Int], into g: UnsafeMutablePointer<Float>) throws {
        guard logits.rank == 2, logits.shape[0] == labels.count else {
            throw TensorError("cross-entropy: logits \(logits.shape) do not fit \(labels.count) labels")
        }
        let l = logits.shape[1]
        let counted = labels.filter { $0 != -100 }.count
        logits.withUnsafeBufferPointer { p in
            for (b, y) in labels.enumerated() {
                let row = p.baseAddress! + b * l
                if y == -100 || counted == 0 { for j in 0..<l { g[b * l + j] = 0 }; continue }
                var m = -Double.infinity
                for j in 0..<l { m = max(m, Double(row[j])) }
                var sum = 0.0
                for j in 0..<l { sum += exp(Double(row[j]) - m) }
                for j in 0..<l {
                    let pj = exp(Double(row[j]) - m) / sum
                    g[b * l + j] = Float((pj - (j == y ? 1 : 0)) / Double(counted))
                }
            }
        }
    }

    /// d`mse`/da: `2·(a − b) / n`.
    public static func mseGradient(_ a: [Float], _ b: [Float], into g: UnsafeMutablePointer<Float>) throws {
        guard a.count == b.count else { throw TensorError("mse: \(a.count) predictions vs \(b.count) targets") }
        for i in 0..<a.count { g[i] = Float(2 * (Double(a[i]) - Double(b[i])) / Double(a.count)) }
    }

    /// d`bceWithLogits`/dx: `(sigmoid(x) − y) / n`.
    public static func bceWithLogitsGradient(_ x: [Float], _ y: [Float], into g: UnsafeMutablePointer<Float>) throws {
        guard x.count == y.count else { throw TensorError("bce: \(x.count) logits vs \(y.count) targets") }
        for i in 0..<x.count {
            let xi = Double(x[i])
            let s = xi >= 0 ? 1 / (1 + exp(-xi)) : exp(xi) / (1 + exp(xi))
            g[i] = Float((s - Double(y[i])) / Double(x.count))
        }
    }
}
