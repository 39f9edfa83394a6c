import Foundation

/// Calls `body` with every non-empty gradient of `model` (a zero-sized gradient means the
/// parameter has none yet, as `.grad is None` in PyTorch).
final class GradientVisitor: ParameterVisitor {
    let body: (String, inout Tensor) throws -> Void
    init(_ body: @escaping (String, inout Tensor) throws -> Void) { self.body = body }
    func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {}
    func visit(_ key: String, _ tensor: inout Tensor, gradient: inout Tensor, kind: ParameterKind) throws {
        if gradient.count > 0 { try body(key, &gradient) }
    }
}

/// `torch.nn.utils.clip_grad_norm_(model.parameters(), maxNorm)` as transformers' Trainer calls
/// it (through accelerate; torch/nn/utils/clip_grad.py): the total 2-norm over all gradients (the
/// norm of the per-tensor norms), then every gradient times `min(maxNorm / (total + 1e-6), 1)`,
/// also when that is 1. Returns the total norm before clipping, which the Trainer logs as
/// `grad_norm`. `maxNorm` infinity only measures (what the Trainer does when `max_grad_norm` is 0).
///
/// torch sums the squares in float32 (per tensor, then over the tensors' norms), so its total can
/// be an ulp off the one here, which sums every square in double and rounds once.
@discardableResult
public func clipGradNorm(_ model: Module, maxNorm: Double) throws -> Double {
    guard !maxNorm.isNaN, maxNorm >= 0 else { throw OptimizerError("clip_grad_norm: max_norm must not be negative or NaN, got \(maxNorm)") }
    var sumOfSquares = 0.0, any = false
    try model.visitParameters(GradientVisitor { _, g in
        any = true
        sumOfSquares += Kernels.sumOfSquares(g.unsafePointer, count: g.count)
    }, prefix: "")
    // No gradients: torch returns 0 and scales nothing.
    guard any else { return 0 }
    let total = Float(sumOfSquares.squareRoot())
    // `max_norm / (total_norm + 1e-6)` on a float32 tensor: Tensor.__rtruediv__ is
    // `reciprocal() * max_norm`; clamp keeps NaN.
    let coef = (1 / (total + Float(1e-6))) * Float(maxNorm)
    let clamped = coef > 1 ? Float(1) : coef
    try scaleGradients(model, by: clamped)
    return Double(total)
}

/// Sets every gradient to zero in place, keeping its allocation. (PyTorch's `zero_grad()` sets
/// them to None instead; for a model whose every parameter gets a gradient in each backward pass
/// the next step sees the same values.)
public func zeroGradients(_ model: Module) throws {
    try model.visitParameters(GradientVisitor { _, g in
        g.withUnsafeMutableBufferPointer { b in b.update(repeating: 0) }
    }, prefix: "")
}

/// Multiplies every gradient by `factor` in float32 (`torch._foreach_mul_`).
public func scaleGradients(_ model: Module, by factor: Float) throws {
    try model.visitParameters(GradientVisitor { _, g in
        g.makeUnique()
        Kernels.scale(g.unsafePointer, count: g.count, by: factor)
    }, prefix: "")
}
