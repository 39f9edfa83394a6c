import Cvt
import CvtTensor

/// How a model runs, as the CLI's `--dtype` names it.
public enum InferenceDType: String, CaseIterable, Sendable {
    /// float32 weights and arithmetic: transformers' numbers (the parity reference).
    case float32
    /// bfloat16 matmuls (oneDNN's AMX / avx512_bf16 kernels, float32 accumulation) with the Linear
    /// weights kept only in bfloat16: faster, and half the weight memory. On a CPU without those
    /// kernels the same arithmetic is emulated in float32 kernels: the bf16 numbers, no speed-up
    /// (`Engine.emulatesBFloat16`).
    case bfloat16
    /// Linear weights stored as IEEE float16 (half the weight memory), widened to float32 per matmul:
    /// float32 arithmetic on float16-rounded weights (exact for checkpoints saved in float16).
    case float16

    /// What a user is told when bfloat16 runs emulated.
    public static let bfloat16EmulationNote = "this CPU has no bfloat16 matmul kernels (avx512_bf16 or AMX): bfloat16 runs emulated in float32 kernels, with bf16 numbers but no speed-up"

    /// The mode names, comma-separated (`float32, bfloat16, float16`), for help and error messages.
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// Element type of the Linear weights in this mode.
    public var weightStorage: ElementType {
        switch self {
        case .float32: return .float32
        case .bfloat16: return .bfloat16
        case .float16: return .float16
        }
    }

    /// The matmul precision of this mode.
    public var precision: ComputePrecision { self == .bfloat16 ? .bfloat16 : .float32 }

    /// Sets the model's precision and weight storage; other models, on the same engine or not,
    /// keep theirs. Throws, leaving the storage unchanged, when a weight does not fit float16.
    public func apply(to model: CvtForImageClassification) throws {
        try model.exclusively {
            model.precision = precision
            do { try model.storeWeights(as: weightStorage) } catch {
                model.precision = nil
                throw error
            }
        }
    }
}
