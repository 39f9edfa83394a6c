#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CheckpointSupport
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Progress of one file: name, bytes on disk so far, total when known. Called on a background
/// thread while `snapshot` blocks.
public typealias DownloadProgress = @Sendable (_ file: String, _ done: Int64, _ total: Int64?) -> Void

/// Resolves Hub model repositories to local snapshot folders the way huggingface_hub does: the
/// cache first (no network at all when every file is there), then downloads of the missing files
/// into the same cache layout, so the Python library and this one share a cache.
/// `configuration` is a class, handed to each URLSession made (which copies it); a client may be
/// shared between tasks as long as that object is not changed meanwhile.
public struct HubClient: @unchecked Sendable {
    /// The cache root (`HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`).
    public var cacheDirectory: URL
    /// `HF_HUB_OFFLINE`: never touch the network.
    public var offline: Bool
    /// `HF_ENDPOINT`, default https://huggingface.co, no trailing slash.
    public var endpoint: String
    /// `HF_TOKEN` (or the token file); sent as `Authorization: Bearer` to the endpoint's host only.
    public var token: String?
    /// Seconds for the metadata request (`HF_HUB_ETAG_TIMEOUT`) and for a download to stall (`HF_HUB_DOWNLOAD_TIMEOUT`).
    public var etagTimeout: TimeInterval
    /// `HF_HUB_DOWNLOAD_TIMEOUT`: seconds a download may stall before it counts as failed (default 10).
    public var downloadTimeout: TimeInterval
    /// Tries per file within one call when a download is cut; each try resumes the partial file.
    public var downloadAttempts = 3
    /// The `User-Agent` header sent with every request.
    public var userAgent = "swift-cvt-hubclient/1.0"
    /// Base URLSession configuration (a private session is made per request so redirects and the
    /// body stream are under this client's control).
    public var configuration: URLSessionConfiguration

    /// The cache at `cacheDirectory`.
    public var cache: HubCache { HubCache(root: cacheDirectory) }

    /// A client configured from `environment` (the `HF_*` variables, as huggingface_hub reads them; see
    /// `HubEnvironment`), making requests with a copy of `configuration` that has URL caching and
    /// cookies turned off.
    public init(environment: [String: String] = ProcessInfo.processInfo.environment,
                configuration: URLSessionConfiguration = .ephemeral) {
        let env = HubEnvironment(environment)
        cacheDirectory = URL(fileURLWithPath: env.hubCache, isDirectory: true)
        offline = env.offline
        endpoint = env.endpoint
        token = env.token
        etagTimeout = env.etagTimeout
        downloadTimeout = env.downloadTimeout
        let config = (configuration.copy() as? URLSessionConfiguration) ?? .ephemeral
        config.urlCache = nil
        config.requestCachePolicy = .reloadIgnoringLocalCacheData
        config.httpShouldSetCookies = false
        config.httpCookieAcceptPolicy = .never
        self.configuration = config
    }

    // MARK: public API

    /// A local folder holding `files`, `optionalFiles` that exist, and for each group in
    /// `alternatives` the first file that exists (e.g. `["model.safetensors", "pytorch_model.bin"]`).
    ///
    /// When the cached snapshot of `revision` already has them, no request is made. Otherwise
    /// (unless offline) the missing files are downloaded, all from one commit: the one `revision`
    /// points to on the Hub now. A 404 for an optional file is recorded in `.no_exist` like
    /// huggingface_hub does, so the next call needs no request either. Offline, optional files
    /// that are not cached are skipped.
    public func snapshot(repo: String, revision: String = "main", files: [String], optionalFiles: [String] = [],
                         alternatives: [[String]] = [], progress: DownloadProgress? = nil) throws -> URL {
        try RepoID.validate(repo)
        try RepoID.validateRevision(revision)
        for f in files + optionalFiles + alternatives.flatMap({ $0 }) { try RepoID.validateFilename(f) }
        var wants = files.map(Want.required) + alternatives.filter { !$0.isEmpty }.map(Want.oneOf)
        wants += optionalFiles.map(Want.optional)
        let cache = self.cache
        let localCommit = cache.commit(repo: repo, revision: revision)

        if let c = localCommit, wants.allSatisfy({ isSatisfied($0, repo: repo, commit: c) }) {
            return try existingFolder(cache.snapshotFolder(repo: repo, commit: c))
        }
        if offline {
            return try offlineSnapshot(repo: repo, revision: revision, wants: wants, localCommit: localCommit)
        }

        var run = Resolution(client: self, repo: repo, revision: revision, progress: progress)
        run.commit = RepoID.isCommitHash(revision) ? revision : nil
        let missing = localCommit.map { c in wants.filter { !isSatisfied($0, repo: repo, commit: c) } } ?? wants
        let present = localCommit.map { c in wants.filter { isSatisfied($0, repo: repo, commit: c) } } ?? []
        for want in missing { try run.ensure(want) }
        if run.commit == nil { run.commit = localCommit }
        for want in present { try run.ensure(want) }
        guard let commit = run.commit else {
            throw HubError(.invalidResponse, "Could not determine which commit '\(revision)' points to (the server sent no X-Repo-Commit header); check HF_ENDPOINT (\(endpoint))",
                           repo: repo, revision: revision)
        }
        let folder = cache.snapshotFolder(repo: repo, commit: commit)
        try HubCache.createDirectory(folder)
        return folder
    }

    /// `snapshot` for a parsed reference; a local folder is checked for `files` and `alternatives`.
    public func snapshot(_ reference: ModelReference, files: [String], optionalFiles: [String] = [],
                         alternatives: [[String]] = [], progress: DownloadProgress? = nil) throws -> URL {
        switch reference {
        case .hub(let repo, let revision):
            return try snapshot(repo: repo, revision: revision, files: files, optionalFiles: optionalFiles,
                                alternatives: alternatives, progress: progress)
        case .local(let folder):
            let fm = FileManager.default
            for f in files where !fm.fileExists(atPath: folder.appendingPathComponent(f).path) {
                throw HubError(.localPathNotFound, "Model folder \(folder.path) has no \(f)", file: f)
            }
            for group in alternatives where !group.isEmpty && !group.contains(where: { fm.fileExists(atPath: folder.appendingPathComponent($0).path) }) {
                throw HubError(.localPathNotFound, "Model folder \(folder.path) has none of \(group.joined(separator: ", "))")
            }
            return folder
        }
    }

    /// One file (like `hf_hub_download`): its path inside the snapshot folder.
    public func file(repo: String, revision: String = "main", filename: String, progress: DownloadProgress? = nil) throws -> URL {
        try snapshot(repo: repo, revision: revision, files: [filename], progress: progress).appendingPathComponent(filename)
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{filename}`, revision fully and filename path-encoded.
    /// An endpoint that does not form a URL (`HF_ENDPOINT` with a space, say) is an error naming it.
    public func resolveURL(repo: String, revision: String, filename: String) throws -> URL {
        let s = "\(endpoint)/\(repo)/resolve/\(percentEncode(revision, safe: ""))/\(percentEncode(filename, safe: "/"))"
        guard let url = URL(string: s), let scheme = url.scheme?.lowercased(), ["http", "https"].contains(scheme), url.host != nil else {
            throw HubError(.invalidReference, "HF_ENDPOINT \(quoted(endpoint)) is not an http(s) URL (it must look like https://huggingface.co)",
                           repo: repo, file: filename, revision: revision)
        }
        return url
    }

    // MARK: cache-only paths

    enum Want {
        case required(String)
        case optional(String)
        case oneOf([String])
    }

    private func isSatisfied(_ want: Want, repo: String, commit: String) -> Bool {
        let cache = self.cache
        switch want {
        case .required(let f):
            return cache.fileIfPresent(repo: repo, commit: commit, filename: f) != nil
        case .optional(let f):
            return cache.fileIfPresent(repo: repo, commit: commit, filename: f) != nil
                || offline || cache.isKnownMissing(repo: repo, commit: commit, filename: f)
        case .oneOf(let fs):
            return fs.contains { cache.fileIfPresent(repo: repo, commit: commit, filename: $0) != nil }
        }
    }

    private func offlineSnapshot(repo: String, revision: String, wants: [Want], localCommit: String?) throws -> URL {
        let hint = "offline mode is on (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE to download it"
        guard let commit = localCommit else {
            let firstFile: String? = wants.lazy.compactMap { w -> String? in
                switch w {
                case .required(let f): return f
                case .oneOf(let fs): return fs.first
                case .optional: return nil
                }
            }.first
            throw HubError(.offlineNotCached,
                           "\(repo) at revision '\(revision)' is not in the cache (\(cache.repoFolder(repo: repo).path) has no refs/\(revision)), and \(hint)",
                           repo: repo, file: firstFile, revision: revision)
        }
        for want in wants where !isSatisfied(want, repo: repo, commit: commit) {
            switch want {
            case .required(let f):
                throw HubError(.offlineNotCached, "'\(f)' is not in the cache (\(cache.snapshotFolder(repo: repo, commit: commit).path)), and \(hint)",
                               repo: repo, file: f, revision: revision)
            case .oneOf(let fs):
                throw HubError(.offlineNotCached, "None of \(fs.joined(separator: ", ")) is in the cache (\(cache.snapshotFolder(repo: repo, commit: commit).path)), and \(hint)",
                               repo: repo, file: fs.first, revision: revision)
            case .optional:
                break
            }
        }
        return try existingFolder(cache.snapshotFolder(repo: repo, commit: commit))
    }

    private func existingFolder(_ url: URL) throws -> URL {
        try HubCache.createDirectory(url)
        return url
    }
}

// MARK: - online resolution

/// What a metadata request found out about one file.
struct FileMetadata {
    var commit: String
    var etag: String
    var size: Int64?
    /// Where to GET the bytes (the CDN for LFS files).
    var location: URL
}

/// State of one online `snapshot` call: the commit all files are pinned to once known.
struct Resolution {
    let client: HubClient
    let repo: String
    let revision: String
    let progress: DownloadProgress?
    var commit: String?

    init(client: HubClient, repo: String, revision: String, progress: DownloadProgress?) {
        self.client = client
        self.repo = repo
        self.revision = revision
        self.progress = progress
    }

    mutating func ensure(_ want: HubClient.Want) throws {
        switch want {
        case .required(let f):
            _ = try ensureFile(f, required: true)
        case .optional(let f):
            do {
                _ = try ensureFile(f, required: false)
            } catch let error as HubError where error.kind == .network {
                // Like transformers' optional files: unreachable Hub → treated as absent (not recorded).
            }
        case .oneOf(let fs):
            if let c = commit, fs.contains(where: { client.cache.fileIfPresent(repo: repo, commit: c, filename: $0) != nil }) { return }
            for f in fs {
                if try ensureFile(f, required: false) { return }
            }
            throw HubError(.notFound, "Repository or file not found: none of \(fs.joined(separator: ", ")) exists in \(repo) at revision '\(revision)'",
                           repo: repo, file: fs.joined(separator: " | "), revision: revision, status: 404)
        }
    }

    /// Makes sure `filename` is in the snapshot of `commit`; false when it does not exist (404).
    private mutating func ensureFile(_ filename: String, required: Bool) throws -> Bool {
        let cache = client.cache
        if let c = commit {
            if cache.fileIfPresent(repo: repo, commit: c, filename: filename) != nil { return true }
            if !required && cache.isKnownMissing(repo: repo, commit: c, filename: filename) { return false }
        }
        let askedRevision = commit ?? revision
        switch try metadata(filename: filename, revision: askedRevision) {
        case .missing(let missingCommit):
            if commit == nil, let mc = missingCommit {
                commit = mc
                try cache.writeRef(repo: repo, revision: revision, commit: mc)
            }
            if let c = commit { cache.markMissing(repo: repo, commit: c, filename: filename) }
            if required {
                throw HubError(.notFound, "Repository or file not found: \(filename) does not exist in \(repo) at revision '\(revision)'",
                               repo: repo, file: filename, revision: revision, url: (try? client.resolveURL(repo: repo, revision: askedRevision, filename: filename))?.absoluteString,
                               status: 404)
            }
            return false
        case .found(let meta):
            if let c = commit, c != meta.commit {
                throw HubError(.invalidResponse, "Asked for commit \(c) but the server answered for commit \(meta.commit)",
                               repo: repo, file: filename, revision: revision, url: meta.location.absoluteString)
            }
            if commit == nil {
                commit = meta.commit
                try cache.writeRef(repo: repo, revision: revision, commit: meta.commit)
            }
            try Downloader(client: client, repo: repo, filename: filename, revision: revision, progress: progress).fetchBlob(meta)
            try cache.link(repo: repo, commit: meta.commit, filename: filename, etag: meta.etag)
            return true
        }
    }

    enum Lookup {
        case found(FileMetadata)
        case missing(commit: String?)
    }

    /// HEAD `{endpoint}/{repo}/resolve/{revision}/{filename}`, following relative redirects (a
    /// renamed repo) but stopping at a redirect to another host (the LFS CDN), whose hub headers
    /// carry the metadata, like huggingface_hub's `get_hf_file_metadata`.
    private func metadata(filename: String, revision askedRevision: String) throws -> Lookup {
        let start = try client.resolveURL(repo: repo, revision: askedRevision, filename: filename)
        var url = start
        var commitSeen: String?
        for _ in 0..<10 {
            var request = URLRequest(url: url, cachePolicy: .reloadIgnoringLocalCacheData, timeoutInterval: client.etagTimeout)
            request.httpMethod = "HEAD"
            client.addHeaders(&request, authorized: netloc(url) == netloc(start))
            let outcome = HTTPExchange.send(request, configuration: client.configuration)
            if let error = outcome.sinkError { throw error }
            if let error = outcome.transportError { throw client.networkError(error, url: url, repo: repo, file: filename, revision: revision) }
            guard let response = outcome.response else {
                throw HubError(.invalidResponse, "No response", repo: repo, file: filename, revision: revision, url: url.absoluteString)
            }
            if let c = response.header("X-Repo-Commit") { commitSeen = c }
            let status = response.statusCode
            if (300..<400).contains(status), let location = response.header("Location"),
               let target = URL(string: location, relativeTo: url)?.absoluteURL {
                let isRelative = URL(string: location)?.host == nil
                if isRelative || Self.linkedEtag(response) == nil || commitSeen == nil {
                    url = target
                    continue
                }
                return .found(try parse(response, commit: commitSeen, location: target, filename: filename))
            }
            if (200..<300).contains(status) {
                return .found(try parse(response, commit: commitSeen, location: url, filename: filename))
            }
            if status == 404, !["RepoNotFound", "RevisionNotFound"].contains(response.header("X-Error-Code") ?? "") {
                return .missing(commit: commitSeen.flatMap { RepoID.isCommitHash($0) ? $0 : nil })
            }
            throw client.httpError(response, body: outcome.body, url: url, repo: repo, file: filename, revision: revision)
        }
        throw HubError(.invalidResponse, "Too many redirects", repo: repo, file: filename, revision: revision, url: start.absoluteString)
    }

    private static func linkedEtag(_ r: HTTPURLResponse) -> String? {
        (r.header("X-Linked-Etag") ?? r.header("ETag")).map(normalizeEtag)
    }

    /// huggingface_hub's `_normalize_etag`: drop a weak `W/` prefix and the quotes.
    static func normalizeEtag(_ etag: String) -> String {
        var e = Substring(etag.trimmingCharacters(in: .whitespaces))
        if e.hasPrefix("W/") { e = e.dropFirst(2) }
        return String(e).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
    }

    private func parse(_ r: HTTPURLResponse, commit: String?, location: URL, filename: String) throws -> FileMetadata {
        func bad(_ what: String) -> HubError {
            HubError(.invalidResponse, "The server's answer has \(what); \(client.endpoint) does not look like a Hugging Face Hub (check HF_ENDPOINT and any proxy)",
                     repo: repo, file: filename, revision: revision, url: r.url?.absoluteString, status: r.statusCode)
        }
        guard let commit, RepoID.isCommitHash(commit) else { throw bad("no valid X-Repo-Commit header") }
        guard let etag = Self.linkedEtag(r), !etag.isEmpty, etag.utf8.count <= 200, etag != ".", etag != "..",
              !etag.contains("/"), !etag.contains("\0") else { throw bad("no usable X-Linked-Etag or ETag header") }
        let sizeText = r.header("X-Linked-Size") ?? r.header("Content-Length")
        var size: Int64? = nil
        if let s = sizeText {
            guard let n = Int64(s), n >= 0 else { throw bad("an invalid size '\(s)'") }
            size = n
        }
        return FileMetadata(commit: commit, etag: etag, size: size, location: location)
    }
}

extension HubClient {
    func addHeaders(_ request: inout URLRequest, authorized: Bool) {
        request.setValue(userAgent, forHTTPHeaderField: "User-Agent")
        request.setValue("identity", forHTTPHeaderField: "Accept-Encoding")
        if authorized, let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
    }

    func networkError(_ error: Error, url: URL, repo: String, file: String, revision: String) -> HubError {
        let reason = (error as? URLError).map { "\($0.localizedDescription) (URLError \($0.code.rawValue))" } ?? "\(error)"
        return HubError(.network, "Cannot reach \(endpoint): \(reason). Check the network, proxy or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use cached files only",
                        repo: repo, file: file, revision: revision, url: url.absoluteString)
    }

    func httpError(_ r: HTTPURLResponse, body: Data, url: URL, repo: String, file: String, revision: String) -> HubError {
        let code = r.header("X-Error-Code") ?? ""
        var serverMessage = r.header("X-Error-Message") ?? ""
        if serverMessage.isEmpty, let json = try? JSONSerialization.jsonObject(with: body) as? [String: Any], let e = json["error"] as? String {
            serverMessage = e
        }
        let suffix = serverMessage.isEmpty ? "" : " Server says: \(serverMessage)"
        let status = r.statusCode
        let tokenHint = token == nil
            ? "If the repo is private or gated, set HF_TOKEN to an access token (https://huggingface.co/settings/tokens)."
            : "The token in HF_TOKEN was sent; check that it is valid and has access to this repo."
        func make(_ kind: HubError.Kind, _ message: String) -> HubError {
            HubError(kind, message + suffix, repo: repo, file: file, revision: revision, url: url.absoluteString, status: status)
        }
        switch (status, code) {
        case (_, "RepoNotFound"):
            // The Hub answers 401 (not 404) for a repo that does not exist or that the token cannot see.
            return make(.notFound, "Repository not found: \(repo). Check the repo id. \(tokenHint)")
        case (_, "RevisionNotFound"):
            return make(.notFound, "Revision not found: '\(revision)' in \(repo).")
        case (_, "GatedRepo"):
            return make(.unauthorized, "\(repo) is a gated repo: request access on its Hub page and set HF_TOKEN to a token of an account that has it.")
        case (404, _):
            return make(.notFound, "Repository or file not found: \(file) in \(repo) at revision '\(revision)'. \(tokenHint)")
        case (401, _):
            return make(.unauthorized, "Authentication required for \(repo) (HTTP 401). \(tokenHint)")
        case (403, _):
            return make(.unauthorized, "Access to \(repo) denied (HTTP 403). \(tokenHint)")
        default:
            return make(.httpStatus, "Unexpected HTTP \(status) for \(file) of \(repo).")
        }
    }
}

