import CheckpointSupport
import CZlib

/// A read-only byte range with bounds-checked little-endian reads. It does not own its memory.
struct ByteRange {
    let base: UnsafeRawPointer
    let count: Int

    @inline(__always)
    func check(_ offset: Int, _ length: Int, _ what: @autoclosure () -> String) throws {
        guard offset >= 0, length >= 0, offset <= count, length <= count - offset else {
            throw FormatError("\(what()) (bytes \(offset)..<\(offset &+ length)) lies outside the \(count)-byte file")
        }
    }

    func u8(_ offset: Int, _ what: @autoclosure () -> String) throws -> UInt8 {
        try check(offset, 1, what())
        return base.load(fromByteOffset: offset, as: UInt8.self)
    }

    func u16(_ offset: Int, _ what: @autoclosure () -> String) throws -> UInt16 {
        try check(offset, 2, what())
        return UInt16(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    func u32(_ offset: Int, _ what: @autoclosure () -> String) throws -> UInt32 {
        try check(offset, 4, what())
        return UInt32(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    func u64(_ offset: Int, _ what: @autoclosure () -> String) throws -> UInt64 {
        try check(offset, 8, what())
        return UInt64(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    func bytes(_ offset: Int, _ length: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        try check(offset, length, what())
        return UnsafeRawBufferPointer(start: base + offset, count: length)
    }
}

/// One file in the zip, as described by its central-directory record, with its data located
/// through its local header (all offsets validated against the file size).
struct ZipEntry {
    let name: String
    let flags: UInt16
    let method: UInt16
    let crc32: UInt32
    let compressedSize: Int
    let uncompressedSize: Int
    let localHeaderOffset: Int
    let dataOffset: Int
}

/// The central directory of a zip archive held in memory (normally an mmap of the file).
///
/// Supports the plain and the ZIP64 end-of-central-directory records, ZIP64 extended-information
/// extra fields, entries STORED (method 0) or DEFLATEd (method 8), and data descriptors (sizes
/// and CRC are always taken from the central directory). Not supported: encryption,
/// multi-volume archives, other compression methods, data prepended before the first entry.
struct ZipArchive {
    static let eocdSignature: UInt32 = 0x0605_4B50
    static let zip64LocatorSignature: UInt32 = 0x0706_4B50
    static let zip64EOCDSignature: UInt32 = 0x0606_4B50
    static let centralSignature: UInt32 = 0x0201_4B50
    static let localSignature: UInt32 = 0x0403_4B50

    let bytes: ByteRange
    let entries: [ZipEntry]
    let index: [String: Int]

    init(_ bytes: ByteRange) throws {
        self.bytes = bytes
        let size = bytes.count
        guard size >= 22 else {
            throw FormatError("zip archive is truncated or corrupt: \(size) bytes is too short for an end-of-central-directory record")
        }

        // End of central directory: 22 bytes + a comment of up to 65535 bytes at the very end.
        var eocd: Int?
        var fallback: Int?
        var pos = size - 22
        let lowest = max(0, size - 22 - 0xFFFF)
        while pos >= lowest {
            if bytes.base.loadUnaligned(fromByteOffset: pos, as: UInt32.self) == Self.eocdSignature.littleEndian {
                let commentLength = Int(try bytes.u16(pos + 20, "EOCD comment length"))
                if pos + 22 + commentLength == size { eocd = pos; break }
                if fallback == nil { fallback = pos }
            }
            pos -= 1
        }
        guard let eocdPos = eocd ?? fallback else {
            throw FormatError("zip archive is truncated or corrupt: no end-of-central-directory record found")
        }

        var disk = UInt64(try bytes.u16(eocdPos + 4, "EOCD"))
        var cdDisk = UInt64(try bytes.u16(eocdPos + 6, "EOCD"))
        var entryCount = UInt64(try bytes.u16(eocdPos + 10, "EOCD"))
        var cdSize = UInt64(try bytes.u32(eocdPos + 12, "EOCD"))
        var cdOffset = UInt64(try bytes.u32(eocdPos + 16, "EOCD"))
        var cdLimit = eocdPos

        // ZIP64: a locator right before the EOCD points at the ZIP64 EOCD record.
        if eocdPos >= 20, try bytes.u32(eocdPos - 20, "ZIP64 locator") == Self.zip64LocatorSignature {
            let locator = eocdPos - 20
            let recordOffset = try Self.int(try bytes.u64(locator + 8, "ZIP64 locator"), "ZIP64 EOCD offset")
            guard recordOffset <= locator - 56,
                  try bytes.u32(recordOffset, "ZIP64 end-of-central-directory record") == Self.zip64EOCDSignature else {
                throw FormatError("zip archive is corrupt: the ZIP64 locator points at offset \(recordOffset), where there is no ZIP64 end-of-central-directory record")
            }
            disk = UInt64(try bytes.u32(recordOffset + 16, "ZIP64 EOCD"))
            cdDisk = UInt64(try bytes.u32(recordOffset + 20, "ZIP64 EOCD"))
            entryCount = try bytes.u64(recordOffset + 32, "ZIP64 EOCD")
            cdSize = try bytes.u64(recordOffset + 40, "ZIP64 EOCD")
            cdOffset = try bytes.u64(recordOffset + 48, "ZIP64 EOCD")
            cdLimit = recordOffset
        } else if entryCount == 0xFFFF || cdSize == 0xFFFF_FFFF || cdOffset == 0xFFFF_FFFF {
            throw FormatError("zip archive is corrupt: the end-of-central-directory record defers to ZIP64 but there is no ZIP64 locator")
        }
        guard disk == 0, cdDisk == 0 else {
            throw FormatError("multi-volume (split) zip archives are not supported")
        }
        let cdStart = try Self.int(cdOffset, "central directory offset")
        let cdLength = try Self.int(cdSize, "central directory size")
        guard cdStart <= cdLimit, cdLength <= cdLimit - cdStart else {
            throw FormatError("zip archive is truncated or corrupt: the central directory (offset \(cdOffset), \(cdSize) bytes) does not fit before its end record at \(cdLimit)")
        }
        guard entryCount <= UInt64(cdLength / 46) else {
            throw FormatError("zip archive is corrupt: \(entryCount) entries cannot fit in a \(cdLength)-byte central directory")
        }

        let cdEnd = cdStart + cdLength
        var entries: [ZipEntry] = []
        entries.reserveCapacity(Int(entryCount))
        var index: [String: Int] = [:]
        var p = cdStart
        for n in 0..<Int(entryCount) {
            let what = "central directory record \(n)"
            guard p <= cdEnd - 46, try bytes.u32(p, what) == Self.centralSignature else {
                throw FormatError("zip archive is corrupt: \(what) at offset \(p) is missing or has a bad signature")
            }
            let flags = try bytes.u16(p + 8, what)
            let method = try bytes.u16(p + 10, what)
            let crc = try bytes.u32(p + 16, what)
            var compressed = UInt64(try bytes.u32(p + 20, what))
            var uncompressed = UInt64(try bytes.u32(p + 24, what))
            let nameLength = Int(try bytes.u16(p + 28, what))
            let extraLength = Int(try bytes.u16(p + 30, what))
            let commentLength = Int(try bytes.u16(p + 32, what))
            var diskStart = UInt64(try bytes.u16(p + 34, what))
            var localOffset = UInt64(try bytes.u32(p + 42, what))
            let recordLength = 46 + nameLength + extraLength + commentLength
            guard recordLength <= cdEnd - p else {
                throw FormatError("zip archive is corrupt: \(what) runs past the end of the central directory")
            }
            let nameBytes = try bytes.bytes(p + 46, nameLength, what)
            let name = String(decoding: nameBytes, as: UTF8.self)

            // ZIP64 extended information: only the fields whose 32/16-bit value is saturated.
            var q = p + 46 + nameLength
            let extraEnd = q + extraLength
            while q + 4 <= extraEnd {
                let id = try bytes.u16(q, what)
                let length = Int(try bytes.u16(q + 2, what))
                guard length <= extraEnd - q - 4 else {
                    throw FormatError("zip archive is corrupt: extra field of entry \(quoted(name)) runs past its record")
                }
                if id == 0x0001 {
                    var f = q + 4
                    let fieldEnd = f + length
                    func next(_ size: Int) throws -> UInt64 {
                        guard f + size <= fieldEnd else {
                            throw FormatError("zip archive is corrupt: ZIP64 extra field of entry \(quoted(name)) is too short")
                        }
                        defer { f += size }
                        return size == 8 ? try bytes.u64(f, what) : UInt64(try bytes.u32(f, what))
                    }
                    if uncompressed == 0xFFFF_FFFF { uncompressed = try next(8) }
                    if compressed == 0xFFFF_FFFF { compressed = try next(8) }
                    if localOffset == 0xFFFF_FFFF { localOffset = try next(8) }
                    if diskStart == 0xFFFF { diskStart = try next(4) }
                }
                q += 4 + length
            }
            guard diskStart == 0 else {
                throw FormatError("multi-volume (split) zip archives are not supported (entry \(quoted(name)))")
            }

            // Local header: its own name and extra field lengths decide where the data starts.
            let local = try Self.int(localOffset, "local header offset of \(quoted(name))")
            let localWhat = "local header of entry \(quoted(name))"
            guard local <= cdStart, try bytes.u32(local, localWhat) == Self.localSignature else {
                throw FormatError("zip archive is corrupt: no local header at offset \(localOffset) for entry \(quoted(name))")
            }
            let localNameLength = Int(try bytes.u16(local + 26, localWhat))
            let localExtraLength = Int(try bytes.u16(local + 28, localWhat))
            let localName = try bytes.bytes(local + 30, localNameLength, localWhat)
            guard localName.elementsEqual(nameBytes) else {
                throw FormatError("zip archive is corrupt: the local header at offset \(local) names \(quoted(String(decoding: localName, as: UTF8.self))), the central directory \(quoted(name))")
            }
            let dataOffset = local + 30 + localNameLength + localExtraLength
            let compressedSize = try Self.int(compressed, "compressed size of \(quoted(name))")
            let uncompressedSize = try Self.int(uncompressed, "size of \(quoted(name))")
            guard dataOffset <= cdStart, compressedSize <= cdStart - dataOffset else {
                throw FormatError("zip archive is truncated or corrupt: the data of entry \(quoted(name)) (\(compressedSize) bytes at offset \(dataOffset)) runs into the central directory or past the end of the file")
            }
            guard index[name] == nil else {
                throw FormatError("zip archive is corrupt: duplicate entry \(quoted(name))")
            }
            index[name] = entries.count
            entries.append(ZipEntry(name: name, flags: flags, method: method, crc32: crc,
                                    compressedSize: compressedSize, uncompressedSize: uncompressedSize,
                                    localHeaderOffset: local, dataOffset: dataOffset))
            p += recordLength
        }
        self.entries = entries
        self.index = index
    }

    private static func int(_ value: UInt64, _ what: @autoclosure () -> String) throws -> Int {
        guard let v = Int(exactly: value) else {
            throw FormatError("zip archive is corrupt: \(what()) \(value) is out of range")
        }
        return v
    }

    subscript(name: String) -> ZipEntry? { index[name].map { entries[$0] } }

    /// The raw bytes of a STORED entry, straight from the mapping, or nil for a compressed one.
    func storedBytes(_ entry: ZipEntry) throws -> UnsafeRawBufferPointer? {
        try checkReadable(entry)
        guard entry.method == 0 else { return nil }
        guard entry.compressedSize == entry.uncompressedSize else {
            throw FormatError("zip archive is corrupt: stored entry \(quoted(entry.name)) has compressed size \(entry.compressedSize) but size \(entry.uncompressedSize)")
        }
        return try bytes.bytes(entry.dataOffset, entry.compressedSize, "entry \(quoted(entry.name))")
    }

    func checkReadable(_ entry: ZipEntry) throws {
        if entry.flags & 1 != 0 {
            throw FormatError("zip entry \(quoted(entry.name)) is encrypted, which is not supported")
        }
        guard entry.method == 0 || entry.method == 8 else {
            throw FormatError("zip entry \(quoted(entry.name)) uses compression method \(entry.method); only STORED (0) and DEFLATE (8) are supported")
        }
    }

    /// Calls `body` with the entry's uncompressed bytes. STORED entries are read in place from the
    /// mapping (CRC-checked only when `verify` is true); DEFLATEd ones are inflated into a
    /// temporary buffer and always CRC-checked.
    func withBytes<R>(_ entry: ZipEntry, verify: Bool, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        if let stored = try storedBytes(entry) {
            if verify { try Self.verifyCRC(stored, entry) }
            return try body(stored)
        }
        let source = try bytes.bytes(entry.dataOffset, entry.compressedSize, "entry \(quoted(entry.name))")
        // DEFLATE cannot expand by more than about 1032:1; refuse to allocate for bogus sizes.
        let plausible = entry.compressedSize.multipliedReportingOverflow(by: 1032)
        guard !plausible.overflow, entry.uncompressedSize <= plausible.partialValue + 64 else {
            throw FormatError("zip archive is corrupt: entry \(quoted(entry.name)) claims \(entry.uncompressedSize) bytes from \(entry.compressedSize) compressed bytes")
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(entry.uncompressedSize, 1), alignment: 16)
        defer { buffer.deallocate() }
        let output = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<entry.uncompressedSize])
        try Self.inflateRaw(source, into: output, buffer.baseAddress!, name: entry.name)
        let result = UnsafeRawBufferPointer(output)
        try Self.verifyCRC(result, entry)
        return try body(result)
    }

    /// A DEFLATEd entry inflated into a buffer the caller owns (and deallocates), CRC-checked.
    func inflated(_ entry: ZipEntry) throws -> UnsafeMutableRawBufferPointer {
        try checkReadable(entry)
        let source = try bytes.bytes(entry.dataOffset, entry.compressedSize, "entry \(quoted(entry.name))")
        let plausible = entry.compressedSize.multipliedReportingOverflow(by: 1032)
        guard !plausible.overflow, entry.uncompressedSize <= plausible.partialValue + 64 else {
            throw FormatError("zip archive is corrupt: entry \(quoted(entry.name)) claims \(entry.uncompressedSize) bytes from \(entry.compressedSize) compressed bytes")
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(entry.uncompressedSize, 1), alignment: 16)
        do {
            let output = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<entry.uncompressedSize])
            try Self.inflateRaw(source, into: output, buffer.baseAddress!, name: entry.name)
            try Self.verifyCRC(UnsafeRawBufferPointer(output), entry)
        } catch {
            buffer.deallocate()
            throw error
        }
        return buffer
    }

    static func verifyCRC(_ data: UnsafeRawBufferPointer, _ entry: ZipEntry) throws {
        let actual = crc32Of(data)
        guard actual == entry.crc32 else {
            throw FormatError("CRC-32 mismatch in zip entry \(quoted(entry.name)): stored \(hex(entry.crc32)), computed \(hex(actual)); the file is corrupt")
        }
    }

    static func hex(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, 8 - s.count)) + s
    }

    static func crc32Of(_ data: UnsafeRawBufferPointer) -> UInt32 {
        var crc = CZlib.crc32(0, nil, 0)
        guard let base = data.baseAddress else { return UInt32(truncatingIfNeeded: crc) }
        var offset = 0
        while offset < data.count {
            let n = min(data.count - offset, 1 << 30)
            crc = CZlib.crc32(crc, base.advanced(by: offset).assumingMemoryBound(to: Bytef.self), uInt(n))
            offset += n
        }
        return UInt32(truncatingIfNeeded: crc)
    }

    /// Inflates a raw DEFLATE stream (no zlib/gzip header) that must fill `output` exactly.
    static func inflateRaw(_ source: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
                           _ nonNullOutput: UnsafeMutableRawPointer, name: String) throws {
        var stream = z_stream()
        let initResult = inflateInit2_(&stream, -MAX_WBITS, zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        guard initResult == Z_OK else {
            throw FormatError("cannot inflate zip entry \(quoted(name)): zlib inflateInit2 failed (\(initResult))")
        }
        defer { inflateEnd(&stream) }
        let inBase = source.baseAddress.map { UnsafeMutablePointer(mutating: $0.assumingMemoryBound(to: Bytef.self)) }
        let outBase = (output.baseAddress ?? nonNullOutput).assumingMemoryBound(to: Bytef.self)
        var inOffset = 0
        var outOffset = 0
        while true {
            let inChunk = min(source.count - inOffset, Int(UInt32.max))
            let outChunk = min(output.count - outOffset, Int(UInt32.max))
            stream.next_in = inChunk > 0 ? inBase! + inOffset : nil
            stream.avail_in = uInt(inChunk)
            stream.next_out = outBase + outOffset
            stream.avail_out = uInt(outChunk)
            let rc = inflate(&stream, Z_NO_FLUSH)
            inOffset += inChunk - Int(stream.avail_in)
            outOffset += outChunk - Int(stream.avail_out)
            switch rc {
            case Z_STREAM_END:
                guard outOffset == output.count else {
                    throw FormatError("zip entry \(quoted(name)) inflates to \(outOffset) bytes, but its size is recorded as \(output.count)")
                }
                return
            case Z_OK:
                continue
            case Z_BUF_ERROR:
                if outOffset == output.count {
                    throw FormatError("zip entry \(quoted(name)) inflates to more than its recorded size of \(output.count) bytes")
                }
                throw FormatError("zip entry \(quoted(name)) is truncated: its DEFLATE stream ends after \(inOffset) bytes without an end marker")
            default:
                let detail = stream.msg.map { String(cString: $0) } ?? "zlib error \(rc)"
                throw FormatError("zip entry \(quoted(name)) has corrupt DEFLATE data: \(detail)")
            }
        }
    }
}
