import CheckpointSupport
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
    /// Forwards to `visit(_:_:kind:)`, ignoring the gradient.
    public func visit(_ key: String, _ tensor: inout Tensor, gradient: inout Tensor, kind: ParameterKind) throws {
        try visit(key, &tensor, kind: kind)
    }
    /// False: a visitor may modify the tensors unless it says otherwise.
    public var readsOnly: Bool { false }
    /// True: a visitor reads the values unless it says otherwise.
    public var readsValues: Bool { true }
}

/// Counts parameter elements.
public final class ParameterCounter: ParameterVisitor {
    /// Total number of parameter elements visited so far (buffers such as running statistics included).
    public private(set) var count = 0
    /// A counter at zero.
    public init() {}
    /// True: counting never modifies a tensor.
    public var readsOnly: Bool { true }
    /// False: counting needs only shapes.
    public var readsValues: Bool { false }
    /// Adds `tensor.count` to `count`.
    public func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws { count += tensor.count }
}

/// A node of the model tree (a layer or a block) whose parameters are named as in PyTorch's
/// `state_dict` (e.g. `cvt.encoder.stages.0.layers.1.attention.attention.projection_query.linear.weight`).
public protocol Module: AnyObject {
    /// Calls `visitor` for each parameter, keys prefixed by `prefix` (PyTorch's dotted names).
    func visitParameters(_ visitor: ParameterVisitor, prefix: String) throws
    /// Rebuilds derived state (folded or packed weights) after parameters were replaced.
    func parametersDidChange()
}

/// `prefix.name`, or `name` when `prefix` is empty: the dotted key of a child, as PyTorch forms it.
@inline(__always)
public func joinKey(_ prefix: String, _ name: String) -> String { prefix.isEmpty ? name : prefix + "." + name }

// MARK: - visitors

/// Collects every parameter into a dictionary (a state dict).
public final class StateDictCollector: ParameterVisitor {
    /// The collected tensors by checkpoint key.
    public private(set) var tensors: [String: Tensor] = [:]
    /// The keys in visiting order (the model's `state_dict` order).
    public private(set) var order: [String] = []
    /// An empty collector.
    public init() {}
    /// True: collecting never modifies a tensor.
    public var readsOnly: Bool { true }
    /// Records `tensor` under `key`.
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
    /// The dictionary's keys, in no particular order.
    public var tensorNames: [String] { Array(keys) }
    /// The shape of the tensor named `name`, or nil when absent.
    public func shape(of name: String) -> [Int]? { self[name]?.shape }
    /// The elements of the tensor named `name` in row-major order.
    /// - Throws: `TensorError` when there is no such tensor.
    public func floats(_ name: String) throws -> [Float] {
        guard let t = self[name] else { throw TensorError("no tensor named \(name)") }
        return t.scalars
    }
}

/// Why a checkpoint does not fit a model: every missing, unexpected and mis-shaped key at once.
public struct WeightLoadingError: Error, CustomStringConvertible, Equatable {
    /// The checkpoint's name or path, as given to the loader.
    public var source: String
    /// Keys the model has and the checkpoint lacks.
    public var missing: [String] = []
    /// Keys the checkpoint has and the model lacks (sorted; `num_batches_tracked` ignored).
    public var unexpected: [String] = []
    /// Keys present in both with different shapes: the model's shape, then the checkpoint's.
    public var mismatched: [(key: String, expected: [Int], found: [Int])] = []

    /// Equal when the source and all three key lists (with their shapes) are equal.
    public static func == (a: Self, b: Self) -> Bool {
        a.source == b.source && a.missing == b.missing && a.unexpected == b.unexpected
            && a.mismatched.map { "\($0.key)\($0.expected)\($0.found)" } == b.mismatched.map { "\($0.key)\($0.expected)\($0.found)" }
    }

    /// Keys named per kind in `description`; the rest are counted. Keys come from the file, so
    /// each is shortened and its control characters escaped.
    public static let keysShown = 20

    /// `"<source>: weights do not match the model: missing keys: …; unexpected keys: …; mis-shaped keys: …"`,
    /// at most `keysShown` keys per kind.
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
func printableKey(_ key: String) -> String { escapedForMessage(key, limit: 120, quoting: false) }

/// Strict loading: walks the model, takes each key from the source, and at `finish()` reports
/// every problem. `num_batches_tracked` buffers are ignored (unused at inference).
public final class StrictLoader: ParameterVisitor {
    let source: TensorSource
    let sourceName: String
    var seen: Set<String> = []
    var error: WeightLoadingError

    /// A loader taking tensors from `source`; `sourceName` names it in errors.
    public init(source: TensorSource, sourceName: String) {
        self.source = source; self.sourceName = sourceName
        error = WeightLoadingError(source: sourceName)
    }

    /// Replaces `tensor` with the source's tensor `key`, or records the key as missing or mis-shaped.
    public func visit(_ key: String, _ tensor: inout Tensor, kind: ParameterKind) throws {
        seen.insert(key)
        guard let shape = source.shape(of: key) else { error.missing.append(key); return }
        // A scalar-vs-[1] or squeezed mismatch is still a mismatch: shapes must agree exactly.
        guard shape == tensor.shape else { error.mismatched.append((key, tensor.shape, shape)); return }
        tensor = try Tensor(shape: shape, scalars: source.floats(key))
    }

    /// Checks that every key was found with the right shape and that the source has no other keys.
    /// - Throws: `WeightLoadingError` listing every missing, unexpected and mis-shaped key.
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

    /// An initialiser drawing from `SplitMix64(seed:)`, with truncated-normal std `initializerRange` (config.json's `initializer_range`, default 0.02).
    public init(seed: UInt64, initializerRange: Float = 0.02) {
        rng = SplitMix64(seed: seed); std = initializerRange
    }

    /// Replaces `tensor` with its initial value for `kind`.
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
    /// A generator started from `seed`; equal seeds give equal sequences on every platform.
    public init(seed: UInt64) { state = seed }
    /// The next 64 random bits (SplitMix64).
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
