import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// renameat2(2) (Linux 3.15+, glibc 2.28+); declared here because Glibc's module map exposes it
/// only with _GNU_SOURCE.
@_silgen_name("renameat2")
private func c_renameat2(_ olddirfd: Int32, _ oldpath: UnsafePointer<CChar>, _ newdirfd: Int32,
                         _ newpath: UnsafePointer<CChar>, _ flags: UInt32) -> Int32

/// A folder written as one unit: files go into a hidden staging folder next to the destination,
/// which then takes the destination's place in one rename (an exchange when the destination
/// exists), so the destination is at every moment either entirely old or entirely new, never a
/// mix, and a failure (disk full, a bad checkpoint) leaves it untouched.
struct StagedFolder {
    let destination: URL
    let staging: URL
    let replaces: Bool

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// The files this command writes; other entries of an existing destination are kept (hard
    /// links into the staging folder).
    init(destination: URL, overwrite: Bool, writes: Set<String>) throws {
        self.destination = destination.standardizedFileURL
        let path = self.destination.path
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFDIR else {
                throw Failure(description: "\(path) exists and is not a folder; refusing to replace it")
            }
            guard overwrite else {
                throw Failure(description: "\(path) already exists; pass --overwrite to replace its model files (other files in it are kept)")
            }
            replaces = true
        } else {
            replaces = false
        }
        let parent = self.destination.deletingLastPathComponent()
        staging = parent.appendingPathComponent(".\(self.destination.lastPathComponent).staging-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: parent, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: false)
        if replaces {
            do {
                for name in try FileManager.default.contentsOfDirectory(atPath: path) where !writes.contains(name) {
                    let from = self.destination.appendingPathComponent(name).path
                    var e = stat()
                    guard lstat(from, &e) == 0, (e.st_mode & S_IFMT) != S_IFDIR else {
                        throw Failure(description: "\(path) holds a folder \(name); convert into a new folder instead")
                    }
                    guard link(from, staging.appendingPathComponent(name).path) == 0 else {
                        throw Failure(description: "cannot keep \(from) in the new folder: \(String(cString: strerror(errno)))")
                    }
                }
            } catch {
                discard()
                throw error
            }
        }
    }

    /// Puts the staging folder in the destination's place.
    func commit() throws {
        let from = staging.path, to = destination.path
        if !replaces {
            guard rename(from, to) == 0 else { throw failure("cannot move the new folder into place at \(to)") }
            return
        }
        if c_renameat2(AT_FDCWD, from, AT_FDCWD, to, 1 << 1 /* RENAME_EXCHANGE */) == 0 {
            try? FileManager.default.removeItem(atPath: from)  // now the old folder
            return
        }
        // Without RENAME_EXCHANGE (another OS or filesystem): move the old folder aside, then the
        // new one in. Between the two renames the destination is absent, never mixed.
        let aside = from + "-old"
        guard rename(to, aside) == 0 else { throw failure("cannot move the old folder \(to) aside") }
        guard rename(from, to) == 0 else {
            let e = failure("cannot move the new folder into place at \(to)")
            _ = rename(aside, to)
            throw e
        }
        try? FileManager.default.removeItem(atPath: aside)
    }

    func discard() {
        try? FileManager.default.removeItem(at: staging)
    }

    private func failure(_ what: String) -> Failure {
        Failure(description: "\(what): \(String(cString: strerror(errno)))")
    }
}
