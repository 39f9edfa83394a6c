import CheckpointSupport

/// Element types of torch storages, named as `torch.<Name>Storage` in the pickle.
enum TorchDType: String, CaseIterable {
    case float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8, bool

    var itemSize: Int {
        switch self {
        case .float64, .int64: return 8
        case .float32, .int32: return 4
        case .float16, .bfloat16, .int16: return 2
        case .int8, .uint8, .bool: return 1
        }
    }

    var isFloatingPoint: Bool {
        switch self {
        case .float32, .float16, .bfloat16, .float64: return true
        default: return false
        }
    }

    init?(storageClass name: String) {
        switch name {
        case "FloatStorage": self = .float32
        case "HalfStorage": self = .float16
        case "BFloat16Storage": self = .bfloat16
        case "DoubleStorage": self = .float64
        case "LongStorage": self = .int64
        case "IntStorage": self = .int32
        case "ShortStorage": self = .int16
        case "CharStorage": self = .int8
        case "ByteStorage": self = .uint8
        case "BoolStorage": self = .bool
        default: return nil
        }
    }
}

/// The only globals a state dict may reference (the `torch.load(weights_only=True)` subset that
/// plain state dicts use). Everything else is refused when the GLOBAL/STACK_GLOBAL is read.
enum AllowedGlobal: Equatable {
    case orderedDict
    case rebuildTensorV2
    case rebuildParameter
    case rebuildParameterWithState
    case device
    case codecsEncode
    case torchSize
    case storageType(TorchDType)

    init?(module: String, name: String) {
        switch (module, name) {
        case ("collections", "OrderedDict"): self = .orderedDict
        case ("torch._utils", "_rebuild_tensor_v2"): self = .rebuildTensorV2
        case ("torch._utils", "_rebuild_parameter"): self = .rebuildParameter
        case ("torch._utils", "_rebuild_parameter_with_state"): self = .rebuildParameterWithState
        case ("torch", "device"): self = .device
        case ("_codecs", "encode"): self = .codecsEncode
        case ("torch", "Size"): self = .torchSize
        case ("torch", _):
            guard let dtype = TorchDType(storageClass: name) else { return nil }
            self = .storageType(dtype)
        default: return nil
        }
    }

    static let summary = "collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, "
        + "torch._utils._rebuild_parameter_with_state, torch.device, torch.Size, _codecs.encode and the storage types "
        + "torch.{Float,Half,BFloat16,Double,Long,Int,Short,Char,Byte,Bool}Storage"
}

/// A storage referenced by a persistent id ('storage', torch.XStorage, key, location, numel).
struct StorageRecord {
    let key: String
    let dtype: TorchDType
    let numel: Int
    let location: String
}

/// The arguments of torch._utils._rebuild_tensor_v2.
struct TensorRecord {
    let storage: Int
    let offset: Int
    let shape: [Int]
    let strides: [Int]
    var requiresGrad: Bool
}

/// A pickle value. Containers live in the unpickler's arenas and are referred to by index, so
/// values never nest (no recursion when they are compared, copied or freed, whatever the file).
enum PickleValue {
    case none
    case bool(Bool)
    case int(Int64)
    /// A LONG1/LONG4 integer that does not fit in Int64 (little-endian two's complement).
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple(Int)
    case list(Int)
    case dict(Int)
    case global(AllowedGlobal)
    case storage(Int)
    case tensor(Int)

    var typeName: String {
        switch self {
        case .none: return "None"
        case .bool: return "bool"
        case .int, .bigInt: return "int"
        case .float: return "float"
        case .string: return "str"
        case .bytes: return "bytes"
        case .tuple: return "tuple"
        case .list: return "list"
        case .dict: return "dict"
        case .global: return "global"
        case .storage: return "storage"
        case .tensor: return "tensor"
        }
    }
}

/// Hashable form of a dictionary key (Python semantics for the cases a state dict can contain).
indirect enum PickleKey: Hashable {
    case none
    case int(Int64)
    case bigInt([UInt8])
    case float(UInt64)
    case string(String)
    case bytes([UInt8])
    case tuple([PickleKey])
}

struct PickleDict {
    var keys: [PickleValue] = []
    var values: [PickleValue] = []
    var index: [PickleKey: Int] = [:]
}

/// A pickle virtual machine that only builds data: strings, numbers, tuples, lists, dicts,
/// OrderedDicts, storages (persistent ids) and tensors (`_rebuild_tensor_v2`). It never imports
/// or calls anything; globals outside `AllowedGlobal` and opcodes outside the state-dict subset
/// are errors that name them and their offset.
struct RestrictedUnpickler {
    private let data: ByteRange
    private var pos = 0
    private var stack: [PickleValue] = []
    private var metastack: [[PickleValue]] = []
    private var memo: [Int: PickleValue] = [:]

    private(set) var tuples: [[PickleValue]] = []
    private(set) var lists: [[PickleValue]] = []
    private(set) var dicts: [PickleDict] = []
    private(set) var storages: [StorageRecord] = []
    private(set) var tensors: [TensorRecord] = []
    private var storageByKey: [String: Int] = [:]
    private var opcodeOffset = 0
    /// Work done beyond reading the bytes (elements copied, key elements hashed, arguments
    /// converted), bounded by `workLimit`: memo references let a few bytes stand for a large
    /// object, and copying or hashing it over and over would take time quadratic, or with nested
    /// tuples exponential, in the file size.
    private var work = 0
    private let workLimit: Int
    /// Elements a dictionary key may expand to (a tuple of tuples counted as a tree): state dict
    /// keys are strings, and `t = (t, t)` repeated 24 times would expand to 16 million.
    static let maxKeyElements = 4096

    init(_ data: ByteRange) {
        self.data = data
        workLimit = 4 * data.count + (1 << 20)
    }

    /// Adds `n` units of work; refuses the pickle once the total exceeds `workLimit`.
    private mutating func charge(_ n: Int) throws {
        work += n
        guard work <= workLimit else {
            throw fail("the pickle does more work than its \(data.count) bytes justify (over \(workLimit) elements copied or hashed: repeated copies of a large object or a deeply shared structure); refused")
        }
    }

    // MARK: Reading

    private func fail(_ message: String) -> FormatError {
        FormatError("data.pkl at byte \(opcodeOffset): \(message)")
    }

    private mutating func read(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, n <= data.count - pos else {
            throw fail("pickle is truncated: \(n) bytes wanted, \(data.count - pos) left")
        }
        defer { pos += n }
        return UnsafeRawBufferPointer(start: data.base + pos, count: n)
    }

    private mutating func readU8() throws -> UInt8 { try read(1)[0] }

    private mutating func readUInt<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let raw = try read(MemoryLayout<T>.size)
        return T(littleEndian: raw.loadUnaligned(as: T.self))
    }

    private mutating func readLength<T: FixedWidthInteger>(_: T.Type) throws -> Int {
        let n = try readUInt(T.self)
        guard let length = Int(exactly: n), length <= data.count - pos else {
            throw fail("pickle is truncated or corrupt: a length of \(n) bytes runs past its end")
        }
        return length
    }

    private mutating func readLine() throws -> String {
        var end = pos
        while end < data.count, data.base.load(fromByteOffset: end, as: UInt8.self) != 0x0A { end += 1 }
        guard end < data.count else { throw fail("pickle is truncated: unterminated text argument") }
        let text = String(decoding: UnsafeRawBufferPointer(start: data.base + pos, count: end - pos), as: UTF8.self)
        pos = end + 1
        return text
    }

    // MARK: Stack

    private mutating func push(_ v: PickleValue) { stack.append(v) }

    private mutating func pop() throws -> PickleValue {
        guard let v = stack.popLast() else { throw fail("pickle stack underflow") }
        return v
    }

    private func top() throws -> PickleValue {
        guard let v = stack.last else { throw fail("pickle stack underflow") }
        return v
    }

    private mutating func popMark() throws -> [PickleValue] {
        guard let previous = metastack.popLast() else { throw fail("pickle has no MARK to pop to") }
        try charge(stack.count)
        let items = stack
        stack = previous
        return items
    }

    private mutating func newTuple(_ items: [PickleValue]) -> PickleValue {
        tuples.append(items)
        return .tuple(tuples.count - 1)
    }

    private mutating func newDict() -> PickleValue {
        dicts.append(PickleDict())
        return .dict(dicts.count - 1)
    }

    // MARK: Keys and dicts

    func key(_ v: PickleValue) throws -> PickleKey {
        var budget = Self.maxKeyElements
        return try key(v, depth: 0, budget: &budget)
    }

    private func key(_ v: PickleValue, depth: Int, budget: inout Int) throws -> PickleKey {
        guard depth < 32 else { throw fail("dictionary key nested too deeply") }
        budget -= 1
        guard budget >= 0 else { throw fail("dictionary key has more than \(Self.maxKeyElements) elements (a tuple shared within itself); refused") }
        switch v {
        case .none: return .none
        case .bool(let b): return .int(b ? 1 : 0)
        case .int(let i): return .int(i)
        case .bigInt(let b): return .bigInt(b)
        case .float(let d):
            if d == d.rounded(), let i = Int64(exactly: d) { return .int(i) }
            return .float(d == 0 ? 0 : d.bitPattern)
        case .string(let s): return .string(s)
        case .bytes(let b): return .bytes(b)
        case .tuple(let t):
            var items: [PickleKey] = []
            for item in tuples[t] { items.append(try key(item, depth: depth + 1, budget: &budget)) }
            return .tuple(items)
        default: throw fail("unhashable dictionary key of type \(v.typeName)")
        }
    }

    private mutating func setItem(_ d: Int, _ k: PickleValue, _ v: PickleValue) throws {
        let hk = try key(k)
        try charge(1 + Self.size(of: hk))
        if let i = dicts[d].index[hk] {
            dicts[d].values[i] = v
        } else {
            dicts[d].index[hk] = dicts[d].keys.count
            dicts[d].keys.append(k)
            dicts[d].values.append(v)
        }
    }

    /// What hashing a key costs: its elements and the bytes of its strings.
    static func size(of k: PickleKey) -> Int {
        switch k {
        case .string(let s): return s.utf8.count / 16
        case .bytes(let b), .bigInt(let b): return b.count / 16
        case .tuple(let items): return items.reduce(items.count) { $0 + size(of: $1) }
        default: return 0
        }
    }

    func lookup(_ d: Int, _ name: String) -> PickleValue? {
        dicts[d].index[.string(name)].map { dicts[d].values[$0] }
    }

    // MARK: Globals

    private func resolveGlobal(module: String, name: String, opcode: String) throws -> PickleValue {
        guard let g = AllowedGlobal(module: module, name: name) else {
            throw fail("refusing pickle global \(quoted(module + "." + name)) (\(opcode)): a state dict may only reference "
                + AllowedGlobal.summary + "; this file is not a plain state dict and may be malicious")
        }
        return .global(g)
    }

    // MARK: Helpers for argument checking

    private func int(_ v: PickleValue, _ what: String) throws -> Int {
        guard case .int(let i) = v, let n = Int(exactly: i) else {
            throw fail("\(what) must be an int, got \(v.typeName)")
        }
        return n
    }

    private mutating func intTuple(_ v: PickleValue, _ what: String) throws -> [Int] {
        let items: [PickleValue]
        switch v {
        case .tuple(let t): items = tuples[t]
        case .list(let l): items = lists[l]
        default: throw fail("\(what) must be a tuple of ints, got \(v.typeName)")
        }
        try charge(items.count)
        return try items.map { try int($0, what) }
    }

    private func string(_ v: PickleValue, _ what: String) throws -> String {
        guard case .string(let s) = v else { throw fail("\(what) must be a str, got \(v.typeName)") }
        return s
    }

    private func tensorIndex(_ v: PickleValue, _ what: String) throws -> Int {
        guard case .tensor(let t) = v else { throw fail("\(what) must be a tensor, got \(v.typeName)") }
        return t
    }

    // MARK: Calls (REDUCE / NEWOBJ) of allowed globals

    private mutating func call(_ g: AllowedGlobal, _ args: [PickleValue]) throws -> PickleValue {
        switch g {
        case .orderedDict:
            let d = newDict()
            guard case .dict(let di) = d else { return d }
            if args.isEmpty { return d }
            guard args.count == 1 else { throw fail("OrderedDict() takes at most 1 argument, got \(args.count)") }
            switch args[0] {
            case .dict(let src):
                for (k, v) in zip(dicts[src].keys, dicts[src].values) { try setItem(di, k, v) }
            case .list(let l):
                try charge(lists[l].count)
                for item in lists[l] {
                    guard case .tuple(let t) = item, tuples[t].count == 2 else {
                        throw fail("OrderedDict(list) needs (key, value) pairs")
                    }
                    try setItem(di, tuples[t][0], tuples[t][1])
                }
            default:
                throw fail("OrderedDict() argument must be a dict or a list of pairs, got \(args[0].typeName)")
            }
            return d

        case .rebuildTensorV2:
            guard args.count == 6 || args.count == 7 else {
                throw fail("_rebuild_tensor_v2 takes 6 or 7 arguments (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]), got \(args.count)")
            }
            guard case .storage(let s) = args[0] else {
                throw fail("_rebuild_tensor_v2: storage must be a persistent-id storage, got \(args[0].typeName)")
            }
            let offset = try int(args[1], "_rebuild_tensor_v2 storage_offset")
            let shape = try intTuple(args[2], "_rebuild_tensor_v2 size")
            let strides = try intTuple(args[3], "_rebuild_tensor_v2 stride")
            guard case .bool(let requiresGrad) = args[4] else {
                throw fail("_rebuild_tensor_v2 requires_grad must be a bool, got \(args[4].typeName)")
            }
            guard shape.count == strides.count else {
                throw fail("_rebuild_tensor_v2: size has \(shape.count) dimensions but stride has \(strides.count)")
            }
            guard offset >= 0, shape.allSatisfy({ $0 >= 0 }), strides.allSatisfy({ $0 >= 0 }) else {
                throw fail("_rebuild_tensor_v2: negative storage offset, size or stride (offset \(offset), size \(shape), stride \(strides))")
            }
            tensors.append(TensorRecord(storage: s, offset: offset, shape: shape, strides: strides, requiresGrad: requiresGrad))
            return .tensor(tensors.count - 1)

        case .rebuildParameter, .rebuildParameterWithState:
            let expected = g == .rebuildParameter ? 3 : 4
            guard args.count == expected else {
                throw fail("\(g == .rebuildParameter ? "_rebuild_parameter" : "_rebuild_parameter_with_state") takes \(expected) arguments, got \(args.count)")
            }
            let t = try tensorIndex(args[0], "parameter data")
            if case .bool(let rg) = args[1] { tensors[t].requiresGrad = rg }
            return .tensor(t)

        case .device:
            guard (1...2).contains(args.count) else { throw fail("torch.device takes 1 or 2 arguments, got \(args.count)") }
            var name = try string(args[0], "torch.device type")
            if args.count == 2, case .int(let i) = args[1] { name += ":\(i)" }
            return .string(name)

        case .codecsEncode:
            guard (1...2).contains(args.count) else { throw fail("_codecs.encode takes 1 or 2 arguments, got \(args.count)") }
            let text = try string(args[0], "_codecs.encode argument")
            let encoding = args.count == 2 ? try string(args[1], "_codecs.encode encoding").lowercased() : "utf-8"
            switch encoding {
            case "latin1", "latin-1", "iso-8859-1", "iso8859-1":
                var out: [UInt8] = []
                for scalar in text.unicodeScalars {
                    guard scalar.value < 256 else { throw fail("_codecs.encode: character not in latin-1") }
                    out.append(UInt8(scalar.value))
                }
                return .bytes(out)
            case "utf-8", "utf8":
                return .bytes(Array(text.utf8))
            default:
                throw fail("_codecs.encode: unsupported encoding \(quoted(encoding))")
            }

        case .torchSize:
            guard args.count <= 1 else { throw fail("torch.Size takes at most 1 argument, got \(args.count)") }
            return newTuple(try args.isEmpty ? [] : intTuple(args[0], "torch.Size argument").map { .int(Int64($0)) })

        case .storageType(let dtype):
            throw fail("storage type torch.\(Self.storageClassName(dtype)) cannot be called; it may only appear in a persistent id")
        }
    }

    static func storageClassName(_ dtype: TorchDType) -> String {
        switch dtype {
        case .float32: return "FloatStorage"
        case .float16: return "HalfStorage"
        case .bfloat16: return "BFloat16Storage"
        case .float64: return "DoubleStorage"
        case .int64: return "LongStorage"
        case .int32: return "IntStorage"
        case .int16: return "ShortStorage"
        case .int8: return "CharStorage"
        case .uint8: return "ByteStorage"
        case .bool: return "BoolStorage"
        }
    }

    private mutating func persistentLoad(_ pid: PickleValue) throws -> PickleValue {
        guard case .tuple(let t) = pid else {
            throw fail("persistent id must be a tuple ('storage', type, key, location, numel), got \(pid.typeName)")
        }
        let items = tuples[t]
        guard items.count == 5, case .string("storage") = items[0] else {
            throw fail("unsupported persistent id: only ('storage', storage_type, key, location, numel) is understood")
        }
        guard case .global(.storageType(let dtype)) = items[1] else {
            throw fail("persistent id storage type must be one of torch.{Float,Half,BFloat16,Double,Long,Int,Short,Char,Byte,Bool}Storage, got \(items[1].typeName)")
        }
        let key: String
        switch items[2] {
        case .string(let s): key = s
        case .int(let i): key = String(i)
        default: throw fail("persistent id storage key must be a str, got \(items[2].typeName)")
        }
        let location = (try? string(items[3], "location")) ?? "?"
        let numel = try int(items[4], "persistent id numel")
        guard numel >= 0 else { throw fail("storage \(quoted(key)) has a negative element count \(numel)") }
        if let existing = storageByKey[key] {
            let s = storages[existing]
            guard s.dtype == dtype else {
                throw fail("storage \(quoted(key)) is referenced as both \(s.dtype.rawValue) and \(dtype.rawValue)")
            }
            guard s.numel == numel else {
                throw fail("storage \(quoted(key)) is referenced with \(s.numel) and with \(numel) elements")
            }
            return .storage(existing)
        }
        storages.append(StorageRecord(key: key, dtype: dtype, numel: numel, location: location))
        storageByKey[key] = storages.count - 1
        return .storage(storages.count - 1)
    }

    // MARK: The machine

    private static let opcodeNames: [UInt8: String] = [
        0x28: "MARK", 0x2E: "STOP", 0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP", 0x46: "FLOAT", 0x49: "INT",
        0x4A: "BININT", 0x4B: "BININT1", 0x4C: "LONG", 0x4D: "BININT2", 0x4E: "NONE", 0x50: "PERSID",
        0x51: "BINPERSID", 0x52: "REDUCE", 0x53: "STRING", 0x54: "BINSTRING", 0x55: "SHORT_BINSTRING",
        0x56: "UNICODE", 0x58: "BINUNICODE", 0x61: "APPEND", 0x62: "BUILD", 0x63: "GLOBAL", 0x64: "DICT",
        0x7D: "EMPTY_DICT", 0x65: "APPENDS", 0x67: "GET", 0x68: "BINGET", 0x69: "INST", 0x6A: "LONG_BINGET",
        0x6C: "LIST", 0x5D: "EMPTY_LIST", 0x6F: "OBJ", 0x70: "PUT", 0x71: "BINPUT", 0x72: "LONG_BINPUT",
        0x73: "SETITEM", 0x74: "TUPLE", 0x29: "EMPTY_TUPLE", 0x75: "SETITEMS", 0x47: "BINFLOAT",
        0x80: "PROTO", 0x81: "NEWOBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x85: "TUPLE1", 0x86: "TUPLE2",
        0x87: "TUPLE3", 0x88: "NEWTRUE", 0x89: "NEWFALSE", 0x8A: "LONG1", 0x8B: "LONG4",
        0x42: "BINBYTES", 0x43: "SHORT_BINBYTES", 0x8C: "SHORT_BINUNICODE", 0x8D: "BINUNICODE8",
        0x8E: "BINBYTES8", 0x8F: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x92: "NEWOBJ_EX",
        0x93: "STACK_GLOBAL", 0x94: "MEMOIZE", 0x95: "FRAME", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER",
        0x98: "READONLY_BUFFER",
    ]

    static func describe(_ opcode: UInt8) -> String {
        let printable = (0x21...0x7E).contains(opcode) ? " '\(Character(Unicode.Scalar(opcode)))'" : ""
        let hex = String(opcode, radix: 16, uppercase: true)
        let code = "0x" + (hex.count < 2 ? "0" : "") + hex + printable
        if let name = opcodeNames[opcode] { return "\(name) (\(code))" }
        return "unknown opcode \(code)"
    }

    /// Runs the pickle to its STOP and returns the unpickled value.
    mutating func load() throws -> PickleValue {
        while true {
            opcodeOffset = pos
            guard pos < data.count else { throw fail("pickle is truncated: no STOP opcode") }
            let op = try readU8()
            switch op {
            case 0x80: // PROTO
                let version = try readU8()
                guard (2...5).contains(version) else { throw fail("unsupported pickle protocol \(version)") }
            case 0x95: // FRAME (a length hint; the data follows inline)
                _ = try readLength(UInt64.self)
            case 0x2E: // STOP
                return try pop()

            case 0x7D: push(newDict())                        // EMPTY_DICT
            case 0x5D: lists.append([]); push(.list(lists.count - 1)) // EMPTY_LIST
            case 0x29: push(newTuple([]))                     // EMPTY_TUPLE
            case 0x85: let a = try pop(); push(newTuple([a])) // TUPLE1
            case 0x86: // TUPLE2
                let b = try pop(), a = try pop()
                push(newTuple([a, b]))
            case 0x87: // TUPLE3
                let c = try pop(), b = try pop(), a = try pop()
                push(newTuple([a, b, c]))
            case 0x74: push(newTuple(try popMark()))          // TUPLE
            case 0x28: metastack.append(stack); stack = []    // MARK
            case 0x30: _ = try pop()                          // POP
            case 0x31: _ = try popMark()                      // POP_MARK
            case 0x32: push(try top())                        // DUP

            case 0x58: push(.string(try readString(readLength(UInt32.self))))  // BINUNICODE
            case 0x8C: push(.string(try readString(Int(readU8()))))            // SHORT_BINUNICODE
            case 0x8D: push(.string(try readString(readLength(UInt64.self))))  // BINUNICODE8
            case 0x42: push(.bytes(Array(try read(readLength(UInt32.self)))))  // BINBYTES
            case 0x43: push(.bytes(Array(try read(Int(readU8())))))            // SHORT_BINBYTES
            case 0x8E: push(.bytes(Array(try read(readLength(UInt64.self)))))  // BINBYTES8

            case 0x4A: push(.int(Int64(Int32(bitPattern: try readUInt(UInt32.self)))))  // BININT
            case 0x4B: push(.int(Int64(try readU8())))                                  // BININT1
            case 0x4D: push(.int(Int64(try readUInt(UInt16.self))))                     // BININT2
            case 0x8A: push(try readLong(Int(readU8())))                                // LONG1
            case 0x8B: // LONG4
                let n = Int32(bitPattern: try readUInt(UInt32.self))
                guard n >= 0 else { throw fail("LONG4 with a negative length") }
                push(try readLong(Int(n)))
            case 0x47: // BINFLOAT (big-endian IEEE 754 double)
                let raw = try read(8)
                push(.float(Double(bitPattern: UInt64(bigEndian: raw.loadUnaligned(as: UInt64.self)))))
            case 0x88: push(.bool(true))   // NEWTRUE
            case 0x89: push(.bool(false))  // NEWFALSE
            case 0x4E: push(.none)         // NONE

            case 0x71: memo[Int(try readU8())] = try top()                   // BINPUT
            case 0x72: memo[Int(try readUInt(UInt32.self))] = try top()      // LONG_BINPUT
            case 0x94: memo[memo.count] = try top()                          // MEMOIZE
            case 0x68: try pushMemo(Int(readU8()))                           // BINGET
            case 0x6A: try pushMemo(Int(readUInt(UInt32.self)))              // LONG_BINGET

            case 0x73: // SETITEM
                let v = try pop(), k = try pop()
                let d = try dictTarget("SETITEM")
                try setItem(d, k, v)
            case 0x75: // SETITEMS
                let items = try popMark()
                guard items.count % 2 == 0 else { throw fail("SETITEMS with an odd number of items") }
                let d = try dictTarget("SETITEMS")
                for i in stride(from: 0, to: items.count, by: 2) { try setItem(d, items[i], items[i + 1]) }
            case 0x61: // APPEND
                let v = try pop()
                let l = try listTarget("APPEND")
                lists[l].append(v)
            case 0x65: // APPENDS
                let items = try popMark()
                let l = try listTarget("APPENDS")
                lists[l].append(contentsOf: items)

            case 0x63: // GLOBAL
                let module = try readLine()
                let name = try readLine()
                push(try resolveGlobal(module: module, name: name, opcode: "GLOBAL"))
            case 0x93: // STACK_GLOBAL
                let nameValue = try pop(), moduleValue = try pop()
                guard case .string(let name) = nameValue, case .string(let module) = moduleValue else {
                    throw fail("STACK_GLOBAL needs two strings, got \(moduleValue.typeName) and \(nameValue.typeName)")
                }
                push(try resolveGlobal(module: module, name: name, opcode: "STACK_GLOBAL"))
            case 0x52: // REDUCE
                let args = try pop(), callable = try pop()
                guard case .global(let g) = callable else {
                    throw fail("REDUCE of a \(callable.typeName), which is not an allowed callable")
                }
                guard case .tuple(let t) = args else { throw fail("REDUCE arguments must be a tuple, got \(args.typeName)") }
                push(try call(g, tuples[t]))
            case 0x81: // NEWOBJ
                let args = try pop(), cls = try pop()
                guard case .global(.orderedDict) = cls else {
                    throw fail("NEWOBJ is only allowed for collections.OrderedDict, got \(cls.typeName)")
                }
                guard case .tuple(let t) = args else { throw fail("NEWOBJ arguments must be a tuple, got \(args.typeName)") }
                push(try call(.orderedDict, tuples[t]))
            case 0x62: // BUILD: state of an OrderedDict (e.g. `_metadata`) or of a tensor is ignored.
                let state = try pop()
                let target = try top()
                switch target {
                case .dict, .tensor: _ = state
                default: throw fail("BUILD on a \(target.typeName) is not allowed")
                }
            case 0x51: // BINPERSID
                push(try persistentLoad(pop()))

            case 0x69: // INST: name the class it would import, then refuse.
                let module = (try? readLine()) ?? "?"
                let name = (try? readLine()) ?? "?"
                throw fail("refusing pickle opcode INST (0x69 'i') creating \(quoted(module + "." + name)): instance creation is not allowed in a state dict; this file may be malicious")
            default:
                throw fail("pickle opcode \(Self.describe(op)) is not allowed in a state dict")
            }
        }
    }

    private mutating func readString(_ n: Int) throws -> String {
        String(decoding: try read(n), as: UTF8.self)
    }

    private mutating func readLong(_ n: Int) throws -> PickleValue {
        let raw = try read(n)
        if n == 0 { return .int(0) }
        let negative = raw[n - 1] & 0x80 != 0
        // Drop redundant sign-extension bytes, then fit into Int64 if possible.
        var significant = n
        while significant > 1, raw[significant - 1] == (negative ? 0xFF : 0x00),
              (raw[significant - 2] & 0x80 != 0) == negative { significant -= 1 }
        guard significant <= 8 else { return .bigInt(Array(raw)) }
        var value: UInt64 = negative ? ~0 : 0
        for i in 0..<significant {
            value &= ~(UInt64(0xFF) << (8 * i))
            value |= UInt64(raw[i]) << (8 * i)
        }
        return .int(Int64(bitPattern: value))
    }

    private mutating func pushMemo(_ index: Int) throws {
        guard let v = memo[index] else { throw fail("memo key \(index) is not defined") }
        push(v)
    }

    private func dictTarget(_ op: String) throws -> Int {
        guard case .dict(let d) = try top() else { throw fail("\(op) on a \(try top().typeName), not a dict") }
        return d
    }

    private func listTarget(_ op: String) throws -> Int {
        guard case .list(let l) = try top() else { throw fail("\(op) on a \(try top().typeName), not a list") }
        return l
    }
}
