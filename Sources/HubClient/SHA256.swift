import CCrypto
import Foundation

/// SHA-256, incremental, computed by OpenSSL's libcrypto (`EVP_sha256`). Used to verify LFS blobs,
/// whose Hub etag is the file's SHA-256. A value type: a copy hashes on independently.
package struct SHA256: Sendable {
    /// The digest context; copied before a write when the value has been copied.
    private final class Context: @unchecked Sendable {
        let ctx: OpaquePointer
        init() {
            guard let c = EVP_MD_CTX_new() else { fatalError("SHA256: OpenSSL could not allocate a digest context") }
            ctx = c
            EVP_DigestInit_ex(ctx, EVP_sha256(), nil)
        }
        init(copying other: Context) {
            guard let c = EVP_MD_CTX_new() else { fatalError("SHA256: OpenSSL could not allocate a digest context") }
            ctx = c
            EVP_MD_CTX_copy_ex(ctx, other.ctx)
        }
        deinit { EVP_MD_CTX_free(ctx) }
    }
    private var context = Context()

    /// A hasher with nothing hashed yet.
    public init() {}

    private mutating func uniqueContext() -> OpaquePointer {
        if !isKnownUniquelyReferenced(&context) { context = Context(copying: context) }
        return context.ctx
    }

    /// Hashes the bytes of `data`.
    public mutating func update(_ data: Data) {
        data.withUnsafeBytes { update($0) }
    }

    /// Hashes `bytes`.
    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// Hashes the bytes of `buffer` (nothing when it is empty).
    public mutating func update(_ buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        EVP_DigestUpdate(uniqueContext(), base, buffer.count)
    }

    /// The 32-byte digest. The hasher should not be updated afterwards.
    public mutating func finalize() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(uniqueContext(), &out, &length)
        return Array(out.prefix(Int(length)))
    }

    /// Lowercase hex of the digest.
    public mutating func finalizeHex() -> String { Self.hex(finalize()) }

    /// The 32-byte SHA-256 digest of `data`.
    public static func hash(_ data: Data) -> [UInt8] {
        var h = SHA256()
        h.update(data)
        return h.finalize()
    }

    /// The SHA-256 digest of `data` as 64 lowercase hex digits.
    public static func hexDigest(_ data: Data) -> String { hex(hash(data)) }

    /// SHA-256 of a file's first `limit` bytes (all of it when nil), read in 1 MiB chunks.
    public static func hashFile(at path: String, limit: Int64? = nil) throws -> SHA256 {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: path])
        }
        defer { try? handle.close() }
        var hasher = SHA256()
        var remaining = limit ?? Int64.max
        while remaining > 0 {
            let chunk = try handle.read(upToCount: Int(min(remaining, 1 << 20))) ?? Data()
            if chunk.isEmpty { break }
            hasher.update(chunk)
            remaining -= Int64(chunk.count)
        }
        return hasher
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xf)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
