import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// What the checkpoint readers (safetensors, PyTorch zip, TensorFlow h5) share: read-only file
// mapping, one error shape, and quoting of file-supplied text in messages.

/// A failure reading a checkpoint file: the file it concerns and what is wrong, in words that name
/// the offending entry, key, opcode or dataset.
public struct CheckpointFileError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The path of the file (or the name given to an in-memory reader).
    public let file: String
    /// What is wrong, naming the offending entry, key, opcode or dataset.
    public let message: String

    /// Creates an error for `file` (a path, or the name given to an in-memory reader) with `message`.
    public init(file: String, message: String) {
        self.file = file
        self.message = message
    }

    /// `"<file>: <message>"`.
    public var description: String { "\(file): \(message)" }
}

/// A failure without the file name; readers add it at their public boundary.
public struct FormatError: Error {
    /// What is wrong; the reader prefixes the file name when it rethrows as `CheckpointFileError`.
    public let message: String
    /// Creates an error with `message`.
    public init(_ message: String) { self.message = message }
}

/// A regular file mapped read-only (`mmap`, `PROT_READ`, `MAP_PRIVATE`), unmapped on deinit. As
/// with any mapping, truncating the file on disk while it is mapped makes later reads fault.
public final class MappedFile: @unchecked Sendable {
    /// Why a file could not be mapped.
    public enum Failure: Error {
        /// A system call failed: what was attempted, with `strerror` and errno.
        case system(String)
        case notARegularFile
        /// The file has no bytes (nothing to map).
        case empty
    }

    /// Start of the mapping (read-only; valid until this object is deinitialised).
    public let base: UnsafeMutableRawPointer
    /// Length of the file and of the mapping, in bytes (always > 0).
    public let size: Int
    /// The whole file as bytes; valid as long as this object is alive.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: size) }

    /// Opens and maps the regular file at `path`.
    /// - Throws: `Failure.system` when `open`, `fstat` or `mmap` fails, `.notARegularFile` for a
    ///   directory, device or pipe, `.empty` for a zero-length file.
    public init(path: String) throws(Failure) {
        func fail(_ what: String) -> Failure {
            let code = errno
            return .system("\(what): \(String(cString: strerror(code))) (errno \(code))")
        }
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; the file is
        // checked to be regular before anything is read.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw fail("cannot open file") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw fail("cannot stat file") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .notARegularFile }
        guard st.st_size > 0, let size = Int(exactly: st.st_size) else { throw .empty }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0),
              base != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw fail("mmap of \(size) bytes failed")
        }
        self.base = base
        self.size = size
    }

    deinit { munmap(base, size) }
}

/// Text from a file, a server or the environment, made safe for a message on a terminal: C0
/// control characters (but those in `keeping`), DEL and C1 controls escaped as `\u{…}`, at most
/// `limit` characters (then "…"). With `quoting`, in single quotes, `'` and `\` escaped too. The
/// one escaping routine of the package's messages: loaders, the Hub client and the CLI use it.
public func escapedForMessage(_ text: String, limit: Int = 200, quoting: Bool = true, keeping: Set<Unicode.Scalar> = []) -> String {
    var out = ""
    var count = 0
    for scalar in text.unicodeScalars {
        if count >= limit { out += "…"; break }
        switch scalar {
        case "'" where quoting: out += "\\'"
        case "\\" where quoting: out += "\\\\"
        case _ where keeping.contains(scalar): out.unicodeScalars.append(scalar)
        case _ where scalar.value < 0x20 || scalar.value == 0x7F || (0x80..<0xA0).contains(scalar.value):
            out += "\\u{\(String(scalar.value, radix: 16))}"
        default: out.unicodeScalars.append(scalar)
        }
        count += 1
    }
    return quoting ? "'" + out + "'" : out
}

/// Quotes text taken from a file for an error message: printable, at most `limit` characters.
public func quoted(_ text: String, limit: Int = 200) -> String {
    escapedForMessage(text, limit: limit)
}
