import Foundation

/// Where a model comes from: a folder on disk, or a Hub repository at a revision.
public enum ModelReference: Equatable, CustomStringConvertible, Sendable {
    case local(URL)
    case hub(repo: String, revision: String)

    /// `s` is, in this order:
    /// - an existing folder (relative, absolute or `~`-prefixed) → `.local`;
    /// - a path-looking string (`/`, `./`, `../`, `~`) → an error naming it (missing, or not a folder);
    /// - `org/name`, `name` or either with `@revision` → `.hub`, the id validated as huggingface_hub's
    ///   `validate_repo_id` does; revision defaults to "main".
    public static func parse(_ s: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ModelReference {
        let trimmed = s.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty else { throw HubError(.invalidReference, "Empty model reference: give a local folder or a Hub id like org/name") }
        let expanded = HubEnvironment(environment).expandUser(trimmed)
        var isDir: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: expanded, isDirectory: &isDir)
        if exists && isDir.boolValue {
            return .local(URL(fileURLWithPath: expanded, isDirectory: true).standardizedFileURL)
        }
        let looksLikePath = trimmed.hasPrefix("/") || trimmed.hasPrefix("./") || trimmed.hasPrefix("../")
            || trimmed.hasPrefix("~") || trimmed == "." || trimmed == ".."
        if exists {
            throw HubError(.localPathNotFound, "'\(trimmed)' is a file, not a model folder (expected a folder with config.json, or a Hub id like org/name)")
        }
        if looksLikePath {
            let absolute = URL(fileURLWithPath: expanded).standardizedFileURL.path
            throw HubError(.localPathNotFound, "Model folder '\(trimmed)' does not exist (looked for \(absolute))")
        }
        var repo = trimmed
        var revision = "main"
        if let at = trimmed.firstIndex(of: "@") {
            repo = String(trimmed[..<at])
            revision = String(trimmed[trimmed.index(after: at)...])
            try RepoID.validateRevision(revision)
        }
        do {
            try RepoID.validate(repo)
        } catch let e as HubError {
            throw HubError(.invalidReference, "'\(trimmed)' is neither an existing folder nor a valid Hub model id: \(e.message)")
        }
        return .hub(repo: repo, revision: revision)
    }

    /// The folder's path, or `org/name` (`org/name@revision` when the revision is not `main`).
    public var description: String {
        switch self {
        case .local(let url): return url.path
        case .hub(let repo, let revision): return revision == "main" ? repo : "\(repo)@\(revision)"
        }
    }
}

/// Validation of the names that end up in URLs and cache paths.
public enum RepoID {
    /// huggingface_hub's `validate_repo_id`: `name` or `namespace/name`; each part made of
    /// `[A-Za-z0-9._-]`, starting and ending with a letter, digit or `_`; the name at most 96
    /// characters; no `--` or `..` anywhere; not ending in `.git`.
    public static func validate(_ repo: String) throws {
        func fail(_ why: String) -> HubError { HubError(.invalidReference, "Invalid repo id '\(repo)': \(why)") }
        let parts = repo.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { throw fail("use 'name' or 'namespace/name' (at most one '/')") }
        for (i, part) in parts.enumerated() {
            let isName = i == parts.count - 1
            guard !part.isEmpty else { throw fail("empty \(isName ? "name" : "namespace")") }
            guard part.utf8.allSatisfy({ isWordByte($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }) else {
                throw fail("only letters, digits, '-', '_' and '.' are allowed")
            }
            guard let first = part.utf8.first, let last = part.utf8.last, isWordByte(first), isWordByte(last) else {
                throw fail("'-' and '.' cannot start or end a name")
            }
            if isName && part.count > 96 { throw fail("the name is longer than 96 characters") }
        }
        if repo.contains("--") || repo.contains("..") { throw fail("'--' and '..' are forbidden") }
        if repo.hasSuffix(".git") { throw fail("cannot end with '.git'") }
    }

    /// A branch, tag, commit or `refs/pr/N`: non-empty, no whitespace/control characters or
    /// backslashes, and no empty, `.` or `..` path segment (it names a file under `refs/`).
    public static func validateRevision(_ revision: String) throws {
        let bad = revision.isEmpty || revision.unicodeScalars.contains { $0.properties.isWhitespace || $0.value < 0x20 || $0 == "\\" }
            || revision.split(separator: "/", omittingEmptySubsequences: false).contains { $0.isEmpty || $0 == "." || $0 == ".." }
        if bad { throw HubError(.invalidReference, "Invalid revision '\(revision)'", revision: revision) }
    }

    /// A file path inside a repo: relative, `/`-separated, no empty, `.` or `..` segments.
    public static func validateFilename(_ filename: String) throws {
        let bad = filename.isEmpty || filename.hasPrefix("/") || filename.unicodeScalars.contains { $0.value < 0x20 || $0 == "\\" }
            || filename.split(separator: "/", omittingEmptySubsequences: false).contains { $0.isEmpty || $0 == "." || $0 == ".." }
        if bad { throw HubError(.invalidReference, "Invalid file name '\(filename)' (must be a relative path inside the repo)", file: filename) }
    }

    /// 40 lowercase hex digits: a full commit hash, used as-is without reading `refs/`.
    public static func isCommitHash(_ s: String) -> Bool {
        s.utf8.count == 40 && s.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    /// 64 hex digits: an LFS etag, which is the file's SHA-256.
    static func isSHA256(_ s: String) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) || ($0 >= 65 && $0 <= 70) }
    }

    private static func isWordByte(_ b: UInt8) -> Bool {
        (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 95
    }
}
