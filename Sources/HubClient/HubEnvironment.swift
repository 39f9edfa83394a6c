#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// The settings huggingface_hub reads from the environment (see `huggingface_hub/constants.py`),
/// computed from an explicit environment dictionary so that tests need not touch the process's.
///
/// One deliberate difference: a variable set to the empty string counts as unset (Python's
/// `os.getenv` would use "" and resolve the cache relative to the working directory).
public struct HubEnvironment: Sendable {
    /// The environment the settings are read from (variable name to value).
    public var variables: [String: String]

    /// Settings read from `variables` (the process's environment by default).
    public init(_ variables: [String: String] = ProcessInfo.processInfo.environment) {
        self.variables = variables
    }

    func value(_ name: String) -> String? {
        guard let v = variables[name], !v.isEmpty else { return nil }
        return v
    }

    /// `HF_HOME`, default `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
    public var hfHome: String {
        let defaultHome = (homeDirectory as NSString).appendingPathComponent(".cache")
        let raw = value("HF_HOME") ?? ((value("XDG_CACHE_HOME") ?? defaultHome) as NSString).appendingPathComponent("huggingface")
        return expand(raw)
    }

    /// `HF_HUB_CACHE`, else the legacy `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`.
    public var hubCache: String {
        let legacy = value("HUGGINGFACE_HUB_CACHE") ?? (hfHome as NSString).appendingPathComponent("hub")
        return expand(value("HF_HUB_CACHE") ?? legacy)
    }

    /// `HF_HUB_OFFLINE` (or the older `TRANSFORMERS_OFFLINE`) is one of 1/ON/YES/TRUE, any case.
    public var offline: Bool {
        Self.isTrue(value("HF_HUB_OFFLINE") ?? value("TRANSFORMERS_OFFLINE"))
    }

    /// `HF_ENDPOINT` without trailing slashes, default https://huggingface.co.
    public var endpoint: String {
        var e = value("HF_ENDPOINT") ?? "https://huggingface.co"
        while e.hasSuffix("/") { e.removeLast() }
        return e
    }

    /// `HF_TOKEN`, else the legacy `HUGGING_FACE_HUB_TOKEN`, else the token file (`HF_TOKEN_PATH`,
    /// default `$HF_HOME/token`) written by `huggingface-cli login`; none when
    /// `HF_HUB_DISABLE_IMPLICIT_TOKEN` is true. Whitespace trimmed; empty means none.
    public var token: String? {
        if Self.isTrue(value("HF_HUB_DISABLE_IMPLICIT_TOKEN")) { return nil }
        if let t = clean(value("HF_TOKEN") ?? value("HUGGING_FACE_HUB_TOKEN")) { return t }
        let path = expand(value("HF_TOKEN_PATH") ?? (hfHome as NSString).appendingPathComponent("token"))
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return clean(String(decoding: data, as: UTF8.self))
    }

    /// `HF_HUB_ETAG_TIMEOUT`: seconds to wait for the metadata (HEAD) request, default 10.
    public var etagTimeout: TimeInterval { seconds("HF_HUB_ETAG_TIMEOUT") ?? 10 }

    /// `HF_HUB_DOWNLOAD_TIMEOUT`: seconds a download may stall, default 10.
    public var downloadTimeout: TimeInterval { seconds("HF_HUB_DOWNLOAD_TIMEOUT") ?? 10 }

    /// True for huggingface_hub's true values: `1`, `ON`, `YES`, `TRUE` (any case, surrounding spaces ignored); false for nil.
    public static func isTrue(_ value: String?) -> Bool {
        guard let v = value?.trimmingCharacters(in: .whitespaces).uppercased() else { return false }
        return ["1", "ON", "YES", "TRUE"].contains(v)
    }

    private func seconds(_ name: String) -> TimeInterval? {
        guard let v = value(name), let s = Double(v.trimmingCharacters(in: .whitespaces)), s > 0 else { return nil }
        return s
    }

    private func clean(_ token: String?) -> String? {
        guard let t = token?.trimmingCharacters(in: .whitespacesAndNewlines), !t.isEmpty else { return nil }
        return t
    }

    /// `$HOME`, else the password database.
    var homeDirectory: String {
        if let h = value("HOME") { return h }
        if let pw = getpwuid(getuid()), let dir = pw.pointee.pw_dir { return String(cString: dir) }
        return NSHomeDirectory()
    }

    /// Python's `os.path.expandvars(os.path.expanduser(path))`.
    public func expand(_ path: String) -> String { expandVariables(expandUser(path)) }

    /// `~` and `~/...` become `$HOME/...`; `~user/...` that user's home. Anything else is unchanged.
    public func expandUser(_ path: String) -> String {
        guard path.hasPrefix("~") else { return path }
        let afterTilde = path.dropFirst()
        let slash = afterTilde.firstIndex(of: "/") ?? afterTilde.endIndex
        let user = String(afterTilde[afterTilde.startIndex..<slash])
        var home: String
        if user.isEmpty {
            home = homeDirectory
        } else {
            guard let pw = getpwnam(user), let dir = pw.pointee.pw_dir else { return path }
            home = String(cString: dir)
        }
        while home.count > 1 && home.hasSuffix("/") { home.removeLast() }
        let rest = String(afterTilde[slash...])
        if home == "/" && rest.hasPrefix("/") { return rest }
        return home + rest
    }

    /// `$NAME` and `${NAME}` replaced by the variable's value; unknown variables are left as written.
    public func expandVariables(_ path: String) -> String {
        guard path.contains("$") else { return path }
        let chars = Array(path)
        var out = ""
        var i = 0
        func isNameChar(_ c: Character) -> Bool { c.isASCII && (c.isLetter || c.isNumber || c == "_") }
        while i < chars.count {
            guard chars[i] == "$", i + 1 < chars.count else { out.append(chars[i]); i += 1; continue }
            if chars[i + 1] == "{" {
                if let close = chars[(i + 2)...].firstIndex(of: "}") {
                    let name = String(chars[(i + 2)..<close])
                    if let v = variables[name] { out += v } else { out += String(chars[i...close]) }
                    i = close + 1
                    continue
                }
                out.append(chars[i]); i += 1
                continue
            }
            var j = i + 1
            while j < chars.count, isNameChar(chars[j]) { j += 1 }
            if j == i + 1 { out.append(chars[i]); i += 1; continue }
            let name = String(chars[(i + 1)..<j])
            if let v = variables[name] { out += v } else { out += String(chars[i..<j]) }
            i = j
        }
        return out
    }
}
