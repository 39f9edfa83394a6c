#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Downloads one blob into `blobs/{etag}` safely: bytes go to `blobs/{etag}.incomplete` (resumed
/// with `Range` when the server answers 206, restarted when it answers 200), the result is checked
/// against the expected size and, for LFS files whose etag is a SHA-256, against that hash, and
/// only then renamed into place. An exclusive lock keeps two processes off the same blob.
struct Downloader {
    let client: HubClient
    let repo: String
    let filename: String
    let revision: String
    let progress: DownloadProgress?

    func fetchBlob(_ meta: FileMetadata) throws {
        let cache = client.cache
        let blob = cache.blobURL(repo: repo, etag: meta.etag)
        if isComplete(blob, meta) { return }
        try HubCache.createDirectory(blob.deletingLastPathComponent())
        let lock = try FileLock(cache.lockURL(repo: repo, etag: meta.etag))
        defer { withExtendedLifetime(lock) {} }
        if isComplete(blob, meta) { return }  // another process finished it meanwhile
        if HubCache.fileSize(blob.path) != nil { unlink(blob.path) }  // wrong size: not ours to trust
        let incomplete = blob.path + ".incomplete"
        var attempt = 0
        while true {
            attempt += 1
            do {
                var expected = meta.size
                var streamed: SHA256? = nil
                var onDisk = HubCache.fileSize(incomplete) ?? 0
                if let size = meta.size, onDisk > size {
                    unlink(incomplete)
                    onDisk = 0
                }
                if let size = meta.size, onDisk == size, size > 0 {
                    // Fully downloaded by an earlier run that stopped before verifying.
                } else if meta.size == 0 {
                    try BlobWriter(path: incomplete, hashing: false).open(truncate: true)
                } else {
                    (expected, streamed) = try get(meta, incomplete: incomplete, offset: onDisk)
                }
                try finish(meta, incomplete: incomplete, blob: blob, expected: expected, streamedHash: streamed)
                return
            } catch let error as HubError where error.isRetryable && attempt < max(1, client.downloadAttempts) {
                continue
            }
        }
    }

    private func isComplete(_ blob: URL, _ meta: FileMetadata) -> Bool {
        guard let size = HubCache.fileSize(blob.path) else { return false }
        return meta.size == nil || meta.size == size
    }

    private func fail(_ kind: HubError.Kind, _ message: String, url: URL? = nil, status: Int? = nil) -> HubError {
        HubError(kind, message, repo: repo, file: filename, revision: revision, url: url?.absoluteString, status: status)
    }

    /// GETs the bytes from `offset` on into `incomplete`; returns the total size when known and,
    /// for LFS files, the SHA-256 of the whole file computed while writing it.
    private func get(_ meta: FileMetadata, incomplete: String, offset: Int64) throws -> (Int64?, SHA256?) {
        let verify = RepoID.isSHA256(meta.etag)
        let hubHost = URL(string: client.endpoint).map(netloc) ?? ""
        var url = meta.location
        for _ in 0..<10 {
            var request = URLRequest(url: url, cachePolicy: .reloadIgnoringLocalCacheData, timeoutInterval: client.downloadTimeout)
            // Drop the token when the file lives on another host (the CDN's URL is signed).
            client.addHeaders(&request, authorized: netloc(url) == hubHost)
            if offset > 0 { request.setValue("bytes=\(offset)-", forHTTPHeaderField: "Range") }
            let writer = BlobWriter(path: incomplete, hashing: verify)
            var total = meta.size
            let file = filename
            let progress = self.progress
            let outcome = HTTPExchange.send(request, configuration: client.configuration, onResponse: { r in
                switch r.statusCode {
                case 200:
                    try writer.open(truncate: true)  // server ignored Range (or none sent): start over
                    if total == nil, let n = r.header("Content-Length").flatMap({ Int64($0) }) { total = n }
                    return true
                case 206:
                    guard let (start, length) = Self.contentRange(r.header("Content-Range")), start == offset else {
                        unlink(incomplete)
                        throw fail(.network, "The server resumed at an unexpected offset (Content-Range: \(r.header("Content-Range") ?? "none"), asked for \(offset)); restarting",
                                   url: url, status: 206)
                    }
                    if total == nil { total = length }
                    try writer.open(truncate: false)
                    writer.base = offset
                    if verify {
                        do {
                            writer.hasher = try SHA256.hashFile(at: incomplete, limit: offset)
                        } catch {
                            throw fail(.fileSystem, "Cannot read \(incomplete): \(error.localizedDescription)")
                        }
                    }
                    return true
                default:
                    return false
                }
            }, onData: { data in
                try writer.write(data)
                progress?(file, writer.base + writer.written, total)
            })
            writer.close()
            if let error = outcome.sinkError { throw error }
            guard let response = outcome.response else {
                throw client.networkError(outcome.transportError ?? URLError(.badServerResponse), url: url, repo: repo, file: filename, revision: revision)
            }
            let status = response.statusCode
            if status == 200 || status == 206 {
                if let error = outcome.transportError {
                    let got = writer.base + writer.written
                    throw fail(.network, "Download interrupted after \(got) of \(total.map(String.init) ?? "?") bytes (\(error.localizedDescription)); the partial file is kept and the next attempt resumes it",
                               url: url, status: status)
                }
                return (total, writer.hasher)
            }
            if let error = outcome.transportError {
                throw client.networkError(error, url: url, repo: repo, file: filename, revision: revision)
            }
            if (300..<400).contains(status), let location = response.header("Location"),
               let target = URL(string: location, relativeTo: url)?.absoluteURL {
                url = target
                continue
            }
            if status == 416 {
                unlink(incomplete)
                throw fail(.network, "The server refused to resume (HTTP 416); restarting the download", url: url, status: status)
            }
            throw client.httpError(response, body: outcome.body, url: url, repo: repo, file: filename, revision: revision)
        }
        throw fail(.invalidResponse, "Too many redirects", url: meta.location)
    }

    /// Checks size and SHA-256, then renames `incomplete` to the blob.
    private func finish(_ meta: FileMetadata, incomplete: String, blob: URL, expected: Int64?, streamedHash: SHA256?) throws {
        let size = HubCache.fileSize(incomplete) ?? 0
        if let expected {
            if size < expected {
                throw fail(.network, "Download ended after \(size) of \(expected) bytes; the partial file is kept and the next attempt resumes it",
                           url: meta.location)
            }
            if size > expected {
                unlink(incomplete)
                throw fail(.integrity, "Downloaded \(size) bytes but expected \(expected); the download was discarded", url: meta.location)
            }
        }
        if RepoID.isSHA256(meta.etag) {
            var hasher: SHA256
            if let streamedHash {
                hasher = streamedHash
            } else {
                do {
                    hasher = try SHA256.hashFile(at: incomplete)
                } catch {
                    throw fail(.fileSystem, "Cannot read \(incomplete): \(error.localizedDescription)")
                }
            }
            let digest = hasher.finalizeHex()
            if digest != meta.etag.lowercased() {
                unlink(incomplete)
                throw fail(.integrity, "SHA-256 mismatch: expected \(meta.etag.lowercased()), got \(digest); the download was discarded",
                           url: meta.location)
            }
        }
        guard rename(incomplete, blob.path) == 0 else {
            throw fail(.fileSystem, "Cannot move \(incomplete) to \(blob.path): \(String(cString: strerror(errno)))")
        }
        progress?(filename, size, size)
    }

    /// `bytes START-END/TOTAL` → (START, TOTAL when given).
    static func contentRange(_ header: String?) -> (Int64, Int64?)? {
        guard let h = header?.trimmingCharacters(in: .whitespaces), h.lowercased().hasPrefix("bytes ") else { return nil }
        let spec = h.dropFirst(6)
        let parts = spec.split(separator: "/", maxSplits: 1)
        guard let range = parts.first, let dash = range.firstIndex(of: "-"), let start = Int64(range[..<dash]) else { return nil }
        let total = parts.count == 2 ? Int64(parts[1]) : nil
        return (start, total)
    }
}

/// Appends downloaded chunks to the `.incomplete` file.
private final class BlobWriter {
    let path: String
    private var fd: Int32 = -1
    private let hashing: Bool
    var base: Int64 = 0
    var written: Int64 = 0
    /// SHA-256 of everything in the file so far (when hashing).
    var hasher: SHA256?

    init(path: String, hashing: Bool) {
        self.path = path
        self.hashing = hashing
    }

    func open(truncate: Bool) throws {
        close()
        fd = posixOpen(path, O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : O_APPEND), 0o644)
        guard fd >= 0 else { throw HubError(.fileSystem, "Cannot open \(path): \(String(cString: strerror(errno)))") }
        base = 0
        written = 0
        hasher = hashing ? SHA256() : nil
    }

    func write(_ data: Data) throws {
        guard fd >= 0 else { return }
        try data.withUnsafeBytes { (buf: UnsafeRawBufferPointer) in
            var done = 0
            while done < buf.count {
                let n = posixWrite(fd, buf.baseAddress! + done, buf.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw HubError(.fileSystem, "Cannot write \(path): \(String(cString: strerror(errno)))")
                }
                done += n
            }
        }
        written += Int64(data.count)
        hasher?.update(data)
    }

    func close() {
        if fd >= 0 { posixClose(fd) }
        fd = -1
    }

    deinit { close() }
}

// Free-function spellings, since BlobWriter's own open/write/close shadow the C ones.
private func posixOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }
private func posixWrite(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buf, count) }
private func posixClose(_ fd: Int32) { _ = close(fd) }
