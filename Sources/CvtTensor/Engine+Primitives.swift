import CDNNL
import CKernels
import Foundation

// oneDNN plumbing: memory descriptors, primitive creation and execution with the engine's scratch
// memory, reorders and element-type conversions.
extension Engine {
    func md(_ dims: [Int], strides: [Int], type: dnnl_data_type_t = dnnl_f32) throws -> dnnl_memory_desc_t {
        var d = dnnl_memory_desc_t()
        let dd = dims.map(Int64.init), ss = strides.map(Int64.init)
        try check(dnnl_memory_desc_init_by_strides(&d, Int32(dims.count), dd, type, ss), "memory desc \(dims)")
        return d
    }


    /// Converts a strided view to a dense buffer of `type`, taken from the buffer pool (the caller
    /// gives it back, or keeps it for constant weights).
    func convert(_ v: StridedView, to type: ElementType) throws -> (UnsafeMutableRawPointer, dnnl_memory_desc_t, Int) {
        let dense = StridedView.denseStrides(v.dims)
        let dstMD = try md(v.dims, strides: dense, type: type.dnnl)
        let count = max(1, v.dims.reduce(1, *))
        let bytes = count * type.byteCount
        let buffer = BufferPool.shared.take(bytes: bytes)
        if v.type == .float16, type == .float32, v.strides == dense {
            // oneDNN 2.6 has only a scalar reference f16 reorder; F16C converts 8 values per instruction.
            Kernels.fromFloat16(v.raw, buffer.assumingMemoryBound(to: Float.self), count: v.dims.reduce(1, *))
            return (buffer, dstMD, bytes)
        }
        do {
            try copy(v, into: StridedView(raw: buffer, type: type, dims: v.dims, strides: dense))
        } catch { BufferPool.shared.give(buffer, bytes: bytes); throw error }
        return (buffer, dstMD, bytes)
    }

    /// `copy` for `[rows, cols]` views of one element type whose rows are contiguous: a memcpy per
    /// row (a few rows of the padded small-M matmuls), where a reorder primitive costs a call each.
    func copyRows(_ src: StridedView, into dst: StridedView) throws {
        guard src.type == dst.type, src.dims == dst.dims, src.dims.count == 2,
              src.strides[1] == 1 || src.dims[1] <= 1, dst.strides[1] == 1 || dst.dims[1] <= 1 else {
            return try copy(src, into: dst)
        }
        let rowBytes = src.dims[1] * src.type.byteCount
        for r in 0..<src.dims[0] {
            (dst.raw + r * dst.strides[0] * dst.type.byteCount).copyMemory(from: src.raw + r * src.strides[0] * src.type.byteCount, byteCount: rowBytes)
        }
    }

    /// Copies `src` into `dst` (same dims, any strides), converting the element type (to bfloat16:
    /// rounded to nearest even). Reorder primitives are cached per shape.
    func copy(_ src: StridedView, into dst: StridedView) throws {
        let srcMD = try md(src.dims, strides: src.strides, type: src.type.dnnl)
        let dstMD = try md(dst.dims, strides: dst.strides, type: dst.type.dnnl)
        let key = ReorderKey(dims: src.dims, strides: src.strides, from: src.type, to: dst.type, dstStrides: dst.strides)
        let p: Primitive
        if let cached = reorders[key] { p = cached } else {
            p = try makePrimitive({ pd in
                var a = srcMD, b = dstMD
                let attr = try makeAttr([])
                defer { dnnl_primitive_attr_destroy(attr) }
                try check(dnnl_reorder_primitive_desc_create(&pd, &a, engine, &b, engine, attr), "reorder \(src.type) to \(dst.type)")
            }, "reorder")
            reorders[key] = p
        }
        try run(p, [(DNNL_ARG_FROM, srcMD, src.raw), (DNNL_ARG_TO, dstMD, dst.raw)], "reorder")
    }

    func md(_ dims: [Int], tag: dnnl_format_tag_t) throws -> dnnl_memory_desc_t {
        var d = dnnl_memory_desc_t()
        try check(dnnl_memory_desc_init_by_tag(&d, Int32(dims.count), dims.map(Int64.init), dnnl_f32, tag), "memory desc \(dims)")
        return d
    }

    func memory(_ desc: dnnl_memory_desc_t, _ ptr: UnsafeMutableRawPointer?) throws -> dnnl_memory_t {
        var d = desc
        var m: dnnl_memory_t?
        try check(dnnl_memory_create(&m, &d, engine, ptr), "memory create")
        guard let m else { throw EngineError(operation: "memory create", status: "null memory") }
        return m
    }

    func run(_ p: Primitive, _ arguments: [(Int32, dnnl_memory_desc_t, UnsafeMutableRawPointer?)], _ name: @autoclosure () -> String) throws {
        var args = arguments
        if let sp = p.scratchpad { args.append((DNNL_ARG_SCRATCHPAD, sp.md, scratchpad(sp.bytes))) }
        if p.memories.count == args.count, zip(p.execArgs, args).allSatisfy({ $0.arg == $1.0 }) {
            for (m, a) in zip(p.memories, args) { try check(dnnl_memory_set_data_handle(m, a.2), "memory set data (\(name()))") }
        } else {
            for m in p.memories { dnnl_memory_destroy(m) }
            p.memories = []; p.execArgs = []
            for (arg, desc, ptr) in args {
                let m = try memory(desc, ptr)
                p.memories.append(m)
                p.execArgs.append(dnnl_exec_arg_t(arg: arg, memory: m))
            }
        }
        let t0 = profile ? DispatchTime.now().uptimeNanoseconds : 0
        try check(dnnl_primitive_execute(p.primitive, stream, Int32(p.execArgs.count), p.execArgs), name())
        try check(dnnl_stream_wait(stream), name())
        if profile {
            let n = name()
            record(n.split(separator: " ").first.map(String.init) ?? n, n, since: t0)
        }
    }

    func makePrimitive(_ create: (inout dnnl_primitive_desc_t?) throws -> Void, _ name: String) throws -> Primitive {
        var pd: dnnl_primitive_desc_t?
        try create(&pd)
        guard let pd else { throw EngineError(operation: name, status: "no primitive descriptor") }
        var prim: dnnl_primitive_t?
        let st = dnnl_primitive_create(&prim, pd)
        guard st == dnnl_success, let prim else {
            dnnl_primitive_desc_destroy(pd)
            throw EngineError(operation: name, status: String(cString: dnnl_status2str(st)))
        }
        let p = Primitive(pd: pd, primitive: prim)
        var info: UnsafePointer<CChar>?
        if dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &info) == dnnl_success, let info {
            noteImplementation(name, String(cString: info))
        }
        if let q = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0) {
            var m = q.pointee
            let bytes = dnnl_memory_desc_get_size(&m)
            if bytes > 0 { p.scratchpad = (m, bytes) }
        }
        return p
    }


    func scratchpad(_ bytes: Int) -> UnsafeMutableRawPointer {
        if let s = scratch, s.bytes >= bytes { return s.pointer }
        if let s = scratch { RawMemory.free(s.pointer, bytes: s.bytes) }
        let (ptr, _) = RawMemory.allocate(bytes: bytes)
        scratch = (ptr, bytes)
        return ptr
    }
}
