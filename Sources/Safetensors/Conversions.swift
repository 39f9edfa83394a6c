import Foundation

/// Element conversions between little-endian byte buffers and Swift numbers. The callers
/// guarantee `bytes.count == count * dtype.byteSize`; loads are unaligned-safe.
enum Conversions {
    /// Float -> bfloat16 bits, round to nearest, ties to even; NaN stays a (quiet) NaN.
    @inline(__always)
    static func bf16Bits(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let rounding: UInt32 = 0x7FFF &+ ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
    }

    @inline(__always)
    static func float(bf16Bits b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

    static func floats(from bytes: UnsafeRawBufferPointer, dtype: SafetensorsDType, count n: Int) -> [Float] {
        guard n > 0, let src = bytes.baseAddress, bytes.count == n &* dtype.byteSize else { return [] }
        return [Float](unsafeUninitializedCapacity: n) { buf, initialized in
            guard let dst = buf.baseAddress else { initialized = 0; return }
            switch dtype {
            case .f32:
                UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: n &* 4)
            case .f16:
                for i in 0..<n {
                    let b = src.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self)
                    (dst + i).initialize(to: Float(Float16(bitPattern: UInt16(littleEndian: b))))
                }
            case .bf16:
                for i in 0..<n {
                    let b = src.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self)
                    (dst + i).initialize(to: float(bf16Bits: UInt16(littleEndian: b)))
                }
            case .f64:
                for i in 0..<n {
                    let b = src.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self)
                    (dst + i).initialize(to: Float(Double(bitPattern: UInt64(littleEndian: b))))
                }
            case .i64, .i32, .i16, .i8, .u8, .bool:
                initialized = 0
                return
            }
            initialized = n
        }
    }

    static func int64s(from bytes: UnsafeRawBufferPointer, dtype: SafetensorsDType, count n: Int) -> [Int64] {
        guard n > 0, let src = bytes.baseAddress, bytes.count == n &* dtype.byteSize else { return [] }
        return [Int64](unsafeUninitializedCapacity: n) { buf, initialized in
            guard let dst = buf.baseAddress else { initialized = 0; return }
            switch dtype {
            case .i64:
                UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: n &* 8)
            case .i32:
                for i in 0..<n {
                    let v = src.loadUnaligned(fromByteOffset: i &* 4, as: Int32.self)
                    (dst + i).initialize(to: Int64(Int32(littleEndian: v)))
                }
            case .i16:
                for i in 0..<n {
                    let v = src.loadUnaligned(fromByteOffset: i &* 2, as: Int16.self)
                    (dst + i).initialize(to: Int64(Int16(littleEndian: v)))
                }
            case .i8:
                for i in 0..<n { (dst + i).initialize(to: Int64(src.load(fromByteOffset: i, as: Int8.self))) }
            case .u8:
                for i in 0..<n { (dst + i).initialize(to: Int64(src.load(fromByteOffset: i, as: UInt8.self))) }
            case .bool:
                for i in 0..<n { (dst + i).initialize(to: src.load(fromByteOffset: i, as: UInt8.self) != 0 ? 1 : 0) }
            case .f64, .f32, .f16, .bf16:
                initialized = 0
                return
            }
            initialized = n
        }
    }
}
