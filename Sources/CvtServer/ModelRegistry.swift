import CvtKit
import Foundation
import Synchronization

/// A model to serve: its name and how to load it (on the model thread, after the server listens,
/// so that `/health` answers while a large model loads and `/ready` says when it has).
public struct ModelSource: Sendable {
    public var name: String
    public var load: @Sendable () throws -> ImageClassificationPipeline

    public init(name: String, load: @escaping @Sendable () throws -> ImageClassificationPipeline) {
        self.name = name
        self.load = load
    }

    /// Letters, digits, `.`, `_` and `-`: one URL path segment with no escaping.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x2D
        } && name != "." && name != ".."
    }

    /// The name a model reference is served under: a folder's or Hub id's last component (a
    /// revision suffix `@rev` dropped), with characters outside `[A-Za-z0-9._-]` replaced by `-`.
    public static func defaultName(for reference: String) -> String {
        var last = reference.split(separator: "/").last.map(String.init) ?? reference
        if let at = last.firstIndex(of: "@") { last = String(last[..<at]) }
        let cleaned = String(last.map { c in
            c.isASCII && (c.isLetter || c.isNumber || c == "." || c == "_" || c == "-") ? c : "-"
        })
        return isValidName(cleaned) ? cleaned : "model"
    }
}

/// The served models by name, as they finish loading. `POST /` serves the first one given.
public final class ModelRegistry: Sendable {
    public let names: [String]
    private let loaded = Mutex<[String: ServedModel]>([:])

    init(names: [String]) { self.names = names }

    public var defaultName: String? { names.first }

    public func model(named name: String) -> ServedModel? { loaded.withLock { $0[name] } }

    func add(_ model: ServedModel) { loaded.withLock { $0[model.name] = model } }

    /// Every model has loaded.
    public var isReady: Bool { loaded.withLock { $0.count == names.count } }
}
