import CvtTensor
import Foundation

/// What a parameter is, so initialisers and converters can treat it by role rather than by name.
public enum ParameterKind: Sendable, Equatable {
    /// Conv or linear weight; `fanIn` = elements per output channel.
    case weight(fanIn: Int)
    case bias
    /// LayerNorm scale (γ).
    case normWeight
    /// LayerNorm shift (β).
    case normBias
    /// BatchNorm scale (γ). Kept apart from LayerNorm's: transformers' Trainer exempts LayerNorm
    /// modules from weight decay but not BatchNorm ones.
    case batchNormWeight
    /// BatchNorm shift (β).
    case batchNormBias
    case runningMean
    case runningVar
    case clsToken
}

/// Visits every parameter of a module tree by its full checkpoint key. Loading, saving and
/// initialisation are all visitors, so the tree's shape is written down exactly once.
public protocol ParameterVisitor: AnyObject {
    func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws
    /// A trainable parameter with its gradient (same shape; zero-sized until a backward pass
    /// accumulated into it). Optimizers and gradient collectors implement this; the default
    /// forwards to `visit(_:_:kind:)`. Buffers (running statistics) have no gradient and arrive
    /// through the plain `visit`.
    func visit(_ key: String, _ tensor: inout Tensor, gradient: inout Tensor, kind: ParameterKind) throws
    /// True for visitors that never modify the tensors (collectors, counters): layers may then hand
    /// them a float32 copy of a compactly stored weight instead of converting their storage back.
    var readsOnly: Bool { get }
    /// False for visitors that read only shapes (counters): layers may then hand them an
    /// uninitialised tensor of the parameter's shape instead of materialising a compact weight.
    var readsValues: Bool { get }
}

extension ParameterVisitor {
    public func visit(_ key: String, _ tensor: inout Tensor, gradient: inout Tensor, kind: ParameterKind) throws {
        try visit(key, &tensor, kind: kind)
    }
    public var readsOnly: Bool { false }
    public var readsValues: Bool { true }
}

/// Counts parameter elements.
public final class ParameterCounter: ParameterVisitor {
    public private(set) var count = 0
    public init() {}
    public var readsOnly: Bool { true }
    public var readsValues: Bool { false }
    public func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws { count += tensor.count }
}

public protocol Module: AnyObject {
    /// Calls `visitor` for each parameter, keys prefixed by `prefix` (PyTorch's dotted names).
    func visitParameters(_ visitor: ParameterVisitor, prefix: String) throws
    /// Rebuilds derived state (folded or packed weights) after parameters were replaced.
    func parametersDidChange()
}

@inline(__always)
public func joinKey(_ prefix: String, _ name: String) -> String { prefix.isEmpty ? name : prefix + "." + name }

// MARK: - visitors

/// Collects every parameter into a dictionary (a state dict).
public final class StateDictCollector: ParameterVisitor {
    public private(set) var tensors: [String: Tensor] = [:]
    public private(set) var order: [String] = []
    public init() {}
    public var readsOnly: Bool { true }
    public func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {
        tensors[key] = tensor
        order.append(key)
    }
}

/// A provider of named tensors (a checkpoint), read lazily so only expected keys are converted.
public protocol TensorSource {
    var tensorNames: [String] { get }
    func shape(of name: String) -> [Int]?
    func floats(_ name: String) throws -> [Float]
}

extension Dictionary: TensorSource where Key == String, Value == Tensor {
    public var tensorNames: [String] { Array(keys) }
    public func shape(of name: String) -> [Int]? { self[name]?.shape }
    public func floats(_ name: String) throws -> [Float] {
        guard let t = self[name] else { throw TensorError("no tensor named \(name)") }
        return t.scalars
    }
}

/// Why a checkpoint does not fit a model: every missing, unexpected and mis-shaped key at once.
public struct WeightLoadingError: Error, CustomStringConvertible, Equatable {
    public var source: String
    public var missing: [String] = []
    public var unexpected: [String] = []
    public var mismatched: [(key: String, expected: [Int], found: [Int])] = []

    public static func == (a: Self, b: Self) -> Bool {
        a.source == b.source && a.missing == b.missing && a.unexpected == b.unexpected
            && a.mismatched.map { "\($0.key)\($0.expected)\($0.found)" } == b.mismatched.map { "\($0.key)\($0.expected)\($0.found)" }
    }

    /// Keys named per kind in `description`; the rest are counted. Keys come from the file, so
    /// each is shortened and its control characters escaped.
    public static let keysShown = 20

    public var description: String {
        func list(_ items: [String]) -> String {
            let shown = items.prefix(Self.keysShown).joined(separator: ", ")
            return items.count > Self.keysShown ? shown + ", … (\(items.count - Self.keysShown) more)" : shown
        }
        var parts: [String] = []
        if !missing.isEmpty { parts.append("missing keys: " + list(missing.map(printableKey))) }
        if !unexpected.isEmpty { parts.append("unexpected keys: " + list(unexpected.map(printableKey))) }
        if !mismatched.isEmpty {
            parts.append("mis-shaped keys: " + list(mismatched.map { "\(printableKey($0.key)) (expected \($0.expected), found \($0.found))" }))
        }
        return "\(source): weights do not match the model: " + parts.joined(separator: "; ")
    }
}

/// A key from a file for a message: at most 120 characters, control characters escaped.
func printableKey(_ key: String) -> String {
    var out = ""
    for (i, u) in key.unicodeScalars.enumerated() {
        if i == 120 { out += "…"; break }
        if u.value < 0x20 || u.value == 0x7F || (0x80..<0xA0).contains(u.value) {
            out += "\\u{\(String(u.value, radix: 16))}"
        } else {
            out.unicodeScalars.append(u)
        }
    }
    return out
}

/// Strict loading: walks the model, takes each key from the source, and at `finish()` reports
/// every problem. `num_batches_tracked` buffers are ignored (unused at inference).
public final class StrictLoader: ParameterVisitor {
    let source: TensorSource
    let sourceName: String
    var seen: Set<String> = []
    var error: WeightLoadingError

    public init(source: TensorSource, sourceName: String) {
        self.source = source; self.sourceName = sourceName
        error = WeightLoadingError(source: sourceName)
    }

    public func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {
        seen.insert(key)
        guard let shape = source.shape(of: key) else { error.missing.append(key); return }
        // A scalar-vs-[1] or squeezed mismatch is still a mismatch: shapes must agree exactly.
        guard shape == tensor.shape else { error.mismatched.append((key, tensor.shape, shape)); return }
        tensor = try Tensor(shape: shape, scalars: source.floats(key))
    }

    public func finish() throws {
        error.unexpected = source.tensorNames.filter { !seen.contains($0) && !$0.hasSuffix("num_batches_tracked") }.sorted()
        if !error.missing.isEmpty || !error.unexpected.isEmpty || !error.mismatched.isEmpty { throw error }
    }
}

/// transformers' initialisation for training from scratch (`CvtPreTrainedModel._init_weights`, transformers' `modeling_cvt.py`): truncated normal
/// (std `initializerRange`, cut at ±2 absolute, as torch's `trunc_normal_` defaults) for conv,
/// linear and CLS weights; zero biases; norm scales 1; BatchNorm statistics 0 / 1.
public final class RandomInitializer: ParameterVisitor {
    var rng: SplitMix64
    let std: Float

    public init(seed: UInt64, initializerRange: Float = 0.02) {
        rng = SplitMix64(seed: seed); std = initializerRange
    }

    public func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {
        switch kind {
        case .weight, .clsToken:
            // A local generator: through `self` every draw paid an exclusivity check.
            var rng = self.rng
            let std = self.std
            tensor = Tensor(shape: tensor.shape) { _ in
                while true {
                    let v = rng.nextGaussian() * std
                    if abs(v) <= 2 { return v }
                }
            }
            self.rng = rng
        case .bias, .normBias, .batchNormBias, .runningMean: tensor = Tensor(zeros: tensor.shape)
        case .normWeight, .batchNormWeight, .runningVar: tensor = Tensor(zeros: tensor.shape, value: 1)
        }
    }
}

/// Small, seedable generator so initialisation is reproducible across platforms.
public struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    /// The second value of the last Box–Muller pair, not handed out yet.
    var spareGaussian: Float?
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Standard normal (Box–Muller; both values of a pair are used, in turn).
    public mutating func nextGaussian() -> Float {
        if let g = spareGaussian { spareGaussian = nil; return g }
        let u1 = max(Double(next() >> 11) / Double(1 << 53), 1e-300)
        let u2 = Double(next() >> 11) / Double(1 << 53)
        let r = (-2 * log(u1)).squareRoot(), a = 2 * Double.pi * u2
        spareGaussian = Float(r * sin(a))
        return Float(r * cos(a))
    }
}
