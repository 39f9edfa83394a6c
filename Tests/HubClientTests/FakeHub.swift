import Foundation
@testable import HubClient

/// Serves the Hub's URL layout from memory, with the headers huggingface.co sends:
/// - `/{repo}/resolve/{revision}/{file}`: regular files answer 200 with `ETag` (40 hex) and
///   `X-Repo-Commit`; LFS files answer 302 to `/cdn/{sha256}` (on `cdnHost`) with
///   `X-Linked-Etag` (the sha256), `X-Linked-Size` and `X-Repo-Commit`; unknown file → 404
///   `EntryNotFound`, unknown revision → 404 `RevisionNotFound`, unknown repo → 401 `RepoNotFound`.
/// - `/cdn/{sha256}`: the bytes, honouring `Range: bytes=N-` with 206 unless `honorRange` is off.
/// Knobs (set before a request): `privateRepos` need `Authorization: Bearer <token>`, `renamed`
/// answers a relative 307 to the new name, `cutNextCDNResponses` cuts that many CDN bodies after
/// `cutAfterBytes`, `etagOverride` lies about an LFS file's sha256.
final class FakeHub: @unchecked Sendable {
    struct Repo {
        var commit: String
        var files: [String: Data]
        var lfs: Set<String> = []
    }

    private let lock = NSLock()
    private var _repos: [String: Repo] = [:]
    var privateRepos: Set<String> = []
    var token = "hf_test_secret"
    var renamed: [String: String] = [:]
    var cdnHost = "127.0.0.1"
    var honorRange = true
    var cutNextCDNResponses = 0
    var cutAfterBytes = 0
    var etagOverride: [String: String] = [:]
    /// CDN bodies sent in pieces with pauses (a slow but live connection).
    var cdnPacing: (pieces: Int, pauseMs: Int)? = nil
    /// Answer Range requests with a 206 whose Content-Range starts here instead (a broken server).
    var wrongRangeStart: Int? = nil
    var port: UInt16 = 0

    private(set) var server: TestHTTPServer!

    init() throws {
        server = try TestHTTPServer { [unowned self] request in self.handle(request) }
        port = server.port
    }

    var endpoint: String { "http://127.0.0.1:\(port)" }

    func setRepo(_ id: String, _ repo: Repo) {
        lock.lock()
        _repos[id] = repo
        lock.unlock()
    }

    func repo(_ id: String) -> Repo? {
        lock.lock()
        defer { lock.unlock() }
        return _repos[id]
    }

    func stop() { server.stop() }

    var requests: [TestHTTPServer.Request] { server.requests }

    static func sha256(_ data: Data) -> String { SHA256.hexDigest(data) }

    private func handle(_ request: TestHTTPServer.Request) -> TestHTTPServer.Response {
        let path = request.path
        if path.hasPrefix("/cdn/") { return cdn(String(path.dropFirst(5)), request) }
        guard let r = path.range(of: "/resolve/") else { return .init(status: 404) }
        let repoID = String(path[path.index(after: path.startIndex)..<r.lowerBound])
        let rest = path[r.upperBound...].split(separator: "/", maxSplits: 1)
        guard rest.count == 2, let revision = rest[0].removingPercentEncoding, let file = rest[1].removingPercentEncoding else {
            return .init(status: 400)
        }
        if let newName = renamed[repoID] {
            return .init(status: 307, headers: [("Location", "/\(newName)/resolve/\(rest[0])/\(rest[1])")])
        }
        guard let repo = repo(repoID) else {
            return .init(status: 401, headers: [("X-Error-Code", "RepoNotFound"), ("X-Error-Message", "Repository not found")])
        }
        if privateRepos.contains(repoID) && request.header("Authorization") != "Bearer \(token)" {
            return .init(status: 401, headers: [("X-Error-Message", "Invalid credentials in Authorization header")])
        }
        guard revision == "main" || revision == repo.commit else {
            return .init(status: 404, headers: [("X-Error-Code", "RevisionNotFound")])
        }
        guard let data = repo.files[file] else {
            return .init(status: 404, headers: [("X-Error-Code", "EntryNotFound"), ("X-Repo-Commit", repo.commit)])
        }
        if repo.lfs.contains(file) {
            let sha = Self.sha256(data)
            let etag = etagOverride[file] ?? sha
            return .init(status: 302, headers: [
                ("Location", "http://\(cdnHost):\(port)/cdn/\(sha)"),
                ("X-Linked-Etag", "\"\(etag)\""), ("X-Linked-Size", "\(data.count)"),
                ("X-Repo-Commit", repo.commit), ("ETag", "W/\"0123456789abcdef0123456789abcdef01234567\""),
            ])
        }
        let gitLike = String(Self.sha256(Data("blob \(file) \(data.count)".utf8) + data).prefix(40))
        return .init(status: 200, headers: [("ETag", "\"\(gitLike)\""), ("X-Repo-Commit", repo.commit)], body: data)
    }

    private func cdn(_ sha: String, _ request: TestHTTPServer.Request) -> TestHTTPServer.Response {
        lock.lock()
        let blob = _repos.values.lazy.flatMap { r in r.lfs.compactMap { r.files[$0] } }.first { Self.sha256($0) == sha }
        var cut: Int? = nil
        if cutNextCDNResponses > 0, request.method == "GET" {
            cutNextCDNResponses -= 1
            cut = cutAfterBytes
        }
        lock.unlock()
        guard let data = blob else { return .init(status: 404) }
        if honorRange, let range = request.header("Range"), range.hasPrefix("bytes="), range.hasSuffix("-"),
           let start = Int(range.dropFirst(6).dropLast()) {
            guard start < data.count else {
                return .init(status: 416, headers: [("Content-Range", "bytes */\(data.count)")])
            }
            let from = wrongRangeStart ?? start
            return .init(status: 206, headers: [("Content-Range", "bytes \(from)-\(data.count - 1)/\(data.count)")],
                         body: data.subdata(in: from..<data.count), cutAfter: cut, paced: cdnPacing)
        }
        return .init(status: 200, body: data, cutAfter: cut, paced: cdnPacing)
    }
}
