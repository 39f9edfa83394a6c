#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// The huggingface_hub cache layout (models only):
///
///     <root>/models--{org}--{name}/
///         refs/{revision}                    text file holding a commit hash
///         snapshots/{commit}/{filename}      relative symlink to ../../blobs/{etag}
///         blobs/{etag}                       file contents (etag = sha256 for LFS files)
///         blobs/{etag}.incomplete            a download in progress (never complete-looking)
///         .no_exist/{commit}/{filename}      empty marker: the file does not exist at that commit
///     <root>/.locks/models--{org}--{name}/{etag}.lock
public struct HubCache: Sendable {
    /// The cache root, the folder holding the `models--…` folders (e.g. `~/.cache/huggingface/hub`).
    public let root: URL

    /// A cache rooted at `root`.
    public init(root: URL) { self.root = root }

    /// The root huggingface_hub would use for this environment (see `HubEnvironment.hubCache`).
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        root = URL(fileURLWithPath: HubEnvironment(environment).hubCache, isDirectory: true)
    }

    /// `models--org--name`.
    public static func folderName(repo: String) -> String {
        "models--" + repo.replacingOccurrences(of: "/", with: "--")
    }

    /// `<root>/models--{org}--{name}/`, the folder of repository `repo` (`org/name`).
    public func repoFolder(repo: String) -> URL {
        root.appendingPathComponent(Self.folderName(repo: repo), isDirectory: true)
    }

    /// `<root>/models--{org}--{name}/snapshots/{commit}/`, the files of `repo` at commit `commit` (a 40-hex hash).
    public func snapshotFolder(repo: String, commit: String) -> URL {
        repoFolder(repo: repo).appendingPathComponent("snapshots", isDirectory: true).appendingPathComponent(commit, isDirectory: true)
    }

    func blobURL(repo: String, etag: String) -> URL {
        repoFolder(repo: repo).appendingPathComponent("blobs", isDirectory: true).appendingPathComponent(etag)
    }

    func refURL(repo: String, revision: String) -> URL {
        repoFolder(repo: repo).appendingPathComponent("refs", isDirectory: true).appendingPathComponent(revision)
    }

    func noExistURL(repo: String, commit: String, filename: String) -> URL {
        repoFolder(repo: repo).appendingPathComponent(".no_exist", isDirectory: true)
            .appendingPathComponent(commit, isDirectory: true).appendingPathComponent(filename)
    }

    func lockURL(repo: String, etag: String) -> URL {
        root.appendingPathComponent(".locks", isDirectory: true).appendingPathComponent(Self.folderName(repo: repo), isDirectory: true)
            .appendingPathComponent(etag + ".lock")
    }

    /// The commit a revision points to locally: a 40-hex revision is its own commit; otherwise the
    /// content of `refs/{revision}`, if that file exists and holds a commit hash.
    public func commit(repo: String, revision: String) -> String? {
        if RepoID.isCommitHash(revision) { return revision }
        guard let data = FileManager.default.contents(atPath: refURL(repo: repo, revision: revision).path) else { return nil }
        let hash = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return RepoID.isCommitHash(hash) ? hash : nil
    }

    /// The cached file (following its symlink) for the revision, like huggingface_hub's
    /// `try_to_load_from_cache`; nil when not cached.
    public func cachedFile(repo: String, revision: String = "main", filename: String) -> URL? {
        guard let commit = commit(repo: repo, revision: revision) else { return nil }
        return fileIfPresent(repo: repo, commit: commit, filename: filename)
    }

    func fileIfPresent(repo: String, commit: String, filename: String) -> URL? {
        let url = snapshotFolder(repo: repo, commit: commit).appendingPathComponent(filename)
        var isDir: ObjCBool = false
        // fileExists follows symlinks: a dangling pointer does not count.
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), !isDir.boolValue else { return nil }
        return url
    }

    /// Whether a previous online lookup recorded that `filename` does not exist at `commit`.
    public func isKnownMissing(repo: String, commit: String, filename: String) -> Bool {
        FileManager.default.fileExists(atPath: noExistURL(repo: repo, commit: commit, filename: filename).path)
    }

    // MARK: writing

    func writeRef(repo: String, revision: String, commit: String) throws {
        guard revision != commit else { return }
        let url = refURL(repo: repo, revision: revision)
        if self.commit(repo: repo, revision: revision) == commit { return }
        try Self.createDirectory(url.deletingLastPathComponent())
        try Self.atomicWrite(Data(commit.utf8), to: url)
    }

    func markMissing(repo: String, commit: String, filename: String) {
        let url = noExistURL(repo: repo, commit: commit, filename: filename)
        try? Self.createDirectory(url.deletingLastPathComponent())
        if !FileManager.default.fileExists(atPath: url.path) {
            _ = FileManager.default.createFile(atPath: url.path, contents: Data())
        }
    }

    /// Points `snapshots/{commit}/{filename}` at `blobs/{etag}` with a relative symlink (as
    /// huggingface_hub's `_create_symlink` does), replacing any previous pointer atomically.
    func link(repo: String, commit: String, filename: String, etag: String) throws {
        let pointer = snapshotFolder(repo: repo, commit: commit).appendingPathComponent(filename)
        let depth = 2 + filename.split(separator: "/").count - 1  // snapshots/{commit}/[dirs/]
        let target = String(repeating: "../", count: depth) + "blobs/" + etag
        try Self.createDirectory(pointer.deletingLastPathComponent())
        if let existing = try? FileManager.default.destinationOfSymbolicLink(atPath: pointer.path), existing == target { return }
        let temp = pointer.deletingLastPathComponent().appendingPathComponent(".\(pointer.lastPathComponent).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp")
        guard symlink(target, temp.path) == 0 else {
            throw HubError(.fileSystem, "Cannot create symlink \(temp.path): \(String(cString: strerror(errno)))", file: filename)
        }
        guard rename(temp.path, pointer.path) == 0 else {
            let err = String(cString: strerror(errno))
            unlink(temp.path)
            throw HubError(.fileSystem, "Cannot create \(pointer.path): \(err)", file: filename)
        }
    }

    static func createDirectory(_ url: URL) throws {
        do {
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        } catch {
            throw HubError(.fileSystem, "Cannot create directory \(url.path): \(error.localizedDescription)")
        }
    }

    static func atomicWrite(_ data: Data, to url: URL) throws {
        let temp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp")
        do {
            try data.write(to: temp)
        } catch {
            throw HubError(.fileSystem, "Cannot write \(temp.path): \(error.localizedDescription)")
        }
        guard rename(temp.path, url.path) == 0 else {
            let err = String(cString: strerror(errno))
            unlink(temp.path)
            throw HubError(.fileSystem, "Cannot write \(url.path): \(err)")
        }
    }

    static func fileSize(_ path: String) -> Int64? {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        return Int64(st.st_size)
    }
}

/// An exclusive `flock` on a lock file, so that two processes never write the same blob.
final class FileLock {
    private let fd: Int32

    init(_ url: URL) throws {
        try HubCache.createDirectory(url.deletingLastPathComponent())
        fd = open(url.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw HubError(.fileSystem, "Cannot open lock file \(url.path): \(String(cString: strerror(errno)))") }
        var rc: Int32
        repeat { rc = flock(fd, LOCK_EX) } while rc != 0 && errno == EINTR
        guard rc == 0 else {
            let err = String(cString: strerror(errno))
            close(fd)
            throw HubError(.fileSystem, "Cannot lock \(url.path): \(err)")
        }
    }

    deinit {
        _ = flock(fd, LOCK_UN)
        close(fd)
    }
}
