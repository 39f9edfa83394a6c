import CheckpointSupport
import CHDF5
import Foundation

/// Thin, checked access to the HDF5 C library (Debian's libhdf5, read-only use).
///
/// All calls go through `HDF5.locked`, which holds one process-wide lock (the library may be
/// built without thread safety) and turns off HDF5's automatic error printing for the calling
/// thread (in a thread-safe build that setting is per thread). Every call's error return is
/// checked; a failure becomes a `FormatError` carrying HDF5's own error-stack descriptions.
enum HDF5 {
    private static let lock = NSRecursiveLock()  // File.deinit may run inside `locked`

    static func locked<T>(_ body: () throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        guard cvt_h5_silence_errors() >= 0 else {
            throw FormatError("HDF5: H5Eset_auto2 failed (cannot turn off HDF5's error printing)")
        }
        return try body()
    }

    /// HDF5's current error stack, innermost (most specific) entry first, as "function: description".
    static func errorStack() -> [String] {
        final class Box { var entries: [String] = [] }
        let box = Box()
        let status = cvt_h5_walk_errors({ function, description, context in
            guard let context else { return }
            let box = Unmanaged<Box>.fromOpaque(context).takeUnretainedValue()
            let f = function.map { String(cString: $0) } ?? "?"
            let d = description.map { String(cString: $0) } ?? ""
            box.entries.append(d.isEmpty ? f : "\(f): \(d)")
        }, Unmanaged.passUnretained(box).toOpaque())
        return status < 0 ? [] : box.entries
    }

    /// A `FormatError` for a failed call: what was attempted plus HDF5's innermost messages.
    static func failure(_ what: String) -> FormatError {
        let stack = errorStack()
        guard !stack.isEmpty else { return FormatError("\(what) (HDF5 reported no details)") }
        return FormatError("\(what): " + stack.prefix(3).joined(separator: " ← "))
    }

    /// Checks an identifier just returned by an HDF5 open/get call (negative = failure), runs `body`
    /// with it, then closes it. If `body` succeeded, a failed close is an error; if `body` threw,
    /// that error wins and the close result is only best effort.
    static func with<T>(_ id: hid_t, close: (hid_t) -> herr_t, what: String, _ body: (hid_t) throws -> T) throws -> T {
        guard id >= 0 else { throw failure("HDF5: cannot get \(what)") }
        let result: T
        do {
            result = try body(id)
        } catch {
            _ = close(id)
            throw error
        }
        guard close(id) >= 0 else { throw failure("HDF5: closing \(what) failed") }
        return result
    }

    /// A file opened read-only. Closed in `deinit` (a failure there cannot be reported).
    final class File {
        let id: hid_t

        init(path: String) throws {
            let id = H5Fopen(path, cvt_h5f_acc_rdonly(), cvt_h5p_default())
            guard id >= 0 else {
                let stack = HDF5.errorStack()
                var message = "HDF5 could not open the file"
                if stack.contains(where: { $0.localizedCaseInsensitiveContains("truncated") }) {
                    message += " (it is truncated: shorter than the end address its superblock records)"
                }
                if !stack.isEmpty { message += ": " + stack.prefix(3).joined(separator: " ← ") }
                throw FormatError(message)
            }
            self.id = id
        }

        deinit {
            _ = try? HDF5.locked { H5Fclose(id) }
        }
    }

    enum LinkKind { case hard, soft, external, other }

    /// The links of a group, in name order.
    static func links(of group: hid_t) throws -> [(name: String, kind: LinkKind)] {
        final class Box { var links: [(name: String, kind: LinkKind)] = [] }
        let box = Box()
        let status = cvt_h5_iterate_links(group, { _, name, kind, context in
            guard let context, let name else { return -1 }
            let box = Unmanaged<Box>.fromOpaque(context).takeUnretainedValue()
            let k: LinkKind
            switch kind {
            case Int32(CVT_H5_LINK_HARD): k = .hard
            case Int32(CVT_H5_LINK_SOFT): k = .soft
            case Int32(CVT_H5_LINK_EXTERNAL): k = .external
            default: k = .other
            }
            box.links.append((String(cString: name), k))
            return 0
        }, Unmanaged.passUnretained(box).toOpaque())
        guard status >= 0 else { throw failure("HDF5: listing the links of a group failed") }
        return box.links
    }

    enum ObjectKind { case group, dataset, other }

    static func objectKind(_ id: hid_t) throws -> ObjectKind {
        let type = H5Iget_type(id)
        guard type != H5I_BADID else { throw failure("HDF5: H5Iget_type failed") }
        switch type {
        case H5I_GROUP: return .group
        case H5I_DATASET: return .dataset
        default: return .other
        }
    }

    /// A dataset's element type and shape.
    struct DatasetInfo {
        enum Element: Equatable {
            case float(bits: Int, bigEndian: Bool)
            case other(String)
        }
        let element: Element
        /// nil for an HDF5 null dataspace (no data at all).
        let shape: [Int]?
    }

    static func datasetInfo(_ dataset: hid_t) throws -> DatasetInfo {
        let element: DatasetInfo.Element = try with(H5Dget_type(dataset), close: H5Tclose, what: "the datatype of a dataset") { type in
            let cls = H5Tget_class(type)
            guard cls != H5T_NO_CLASS else { throw failure("HDF5: H5Tget_class failed") }
            let size = H5Tget_size(type)
            guard size > 0 else { throw failure("HDF5: H5Tget_size failed") }
            guard cls == H5T_FLOAT else { return .other("\(className(cls)), \(size) byte\(size == 1 ? "" : "s")") }
            let order = H5Tget_order(type)
            guard order != H5T_ORDER_ERROR else { throw failure("HDF5: H5Tget_order failed") }
            return .float(bits: size * 8, bigEndian: order == H5T_ORDER_BE)
        }
        let shape: [Int]? = try with(H5Dget_space(dataset), close: H5Sclose, what: "the dataspace of a dataset") { space in
            let cls = H5Sget_simple_extent_type(space)
            switch cls {
            case H5S_NULL: return nil
            case H5S_SCALAR: return []
            case H5S_SIMPLE:
                let rank = H5Sget_simple_extent_ndims(space)
                guard rank >= 0 else { throw failure("HDF5: H5Sget_simple_extent_ndims failed") }
                guard rank <= 32 else { throw FormatError("dataspace of rank \(rank)") }
                var dims = [hsize_t](repeating: 0, count: Int(rank))
                if rank > 0 {
                    guard H5Sget_simple_extent_dims(space, &dims, nil) >= 0 else {
                        throw failure("HDF5: H5Sget_simple_extent_dims failed")
                    }
                }
                var out: [Int] = []
                for d in dims {
                    guard d <= hsize_t(Int.max) else { throw FormatError("dimension \(d) is too large") }
                    out.append(Int(d))
                }
                return out
            default:
                throw failure("HDF5: H5Sget_simple_extent_type failed")
            }
        }
        return DatasetInfo(element: element, shape: shape)
    }

    private static func className(_ cls: H5T_class_t) -> String {
        switch cls {
        case H5T_INTEGER: return "integer"
        case H5T_STRING: return "string"
        case H5T_COMPOUND: return "compound"
        case H5T_ENUM: return "enum"
        case H5T_ARRAY: return "array"
        case H5T_VLEN: return "vlen"
        case H5T_OPAQUE: return "opaque"
        case H5T_REFERENCE: return "reference"
        case H5T_BITFIELD: return "bitfield"
        case H5T_TIME: return "time"
        default: return "HDF5 class \(cls.rawValue)"
        }
    }

    /// Reads a whole floating-point dataset as native float32 (HDF5 converts float16, float64 and
    /// big-endian data). `count` is the element count already computed from the shape.
    static func readFloats(file: hid_t, path: String, count: Int) throws -> [Float] {
        try with(H5Dopen2(file, path, cvt_h5p_default()), close: H5Dclose, what: "dataset \(quoted(path))") { dataset in
            guard count > 0 else { return [] }
            var out = [Float](repeating: 0, count: count)
            let status = out.withUnsafeMutableBytes { buffer in
                H5Dread(dataset, cvt_h5t_native_float(), cvt_h5s_all(), cvt_h5s_all(), cvt_h5p_default(), buffer.baseAddress)
            }
            guard status >= 0 else { throw failure("HDF5: reading dataset \(quoted(path)) failed") }
            return out
        }
    }
}
