import Foundation
import TorchCheckpoint
import XCTest

/// Checkpoints built byte by byte in the test: pickle opcodes, globals, layouts and zip structure.
final class CraftedCheckpointTests: XCTestCase {
    private let six: [Float] = [0, 1, 2, 3, 4, 5]

    private func load(_ pickle: [UInt8], storages: [(String, [UInt8])] = []) throws -> TorchCheckpoint {
        try TorchCheckpoint(data: makeCheckpoint(pickle: pickle, storages: storages), name: "crafted")
    }

    /// A plain {"w": float32 [2,3]} state dict, as torch writes it.
    private func simple() -> [UInt8] {
        PickleWriter.stateDict([("w", { $0.tensor(key: "0", numel: 6, shape: [2, 3], stride: [3, 1]) })])
    }

    func testCraftedStateDictLoads() throws {
        let ckpt = try load(simple(), storages: [("0", float32Bytes(six))])
        XCTAssertEqual(ckpt.tensorNames, ["w"])
        XCTAssertEqual(try ckpt.floats("w"), six)
    }

    func testStridedViewsOfOneStorage() throws {
        let pickle = PickleWriter.stateDict([
            ("t", { $0.tensor(key: "0", numel: 6, shape: [3, 2], stride: [1, 3]) }),           // transpose
            ("col", { $0.tensor(key: "0", numel: 6, offset: 1, shape: [2], stride: [3]) }),    // column 1
            ("bcast", { $0.tensor(key: "0", numel: 6, offset: 4, shape: [2, 3], stride: [0, 1]) }), // wait: 4+2 = 6 > 5
        ])
        assertThrows(["tensor 'bcast'", "element 6", "past the end of storage '0'", "6 float32"]) {
            try self.load(pickle, storages: [("0", float32Bytes(self.six))])
        }
        let ok = PickleWriter.stateDict([
            ("t", { $0.tensor(key: "0", numel: 6, shape: [3, 2], stride: [1, 3]) }),
            ("col", { $0.tensor(key: "0", numel: 6, offset: 1, shape: [2], stride: [3]) }),
            ("bcast", { $0.tensor(key: "0", numel: 6, offset: 3, shape: [2, 3], stride: [0, 1]) }),
            ("rank4", { $0.tensor(key: "0", numel: 6, offset: 0, shape: [1, 2, 1, 3], stride: [99, 3, 7, 1]) }),
            ("permuted3d", { $0.tensor(key: "0", numel: 6, shape: [3, 1, 2], stride: [1, 6, 3]) }),
            ("scalar", { $0.tensor(key: "0", numel: 6, offset: 5, shape: [], stride: []) }),
            ("empty", { $0.tensor(key: "0", numel: 6, offset: 6, shape: [4, 0], stride: [1, 1]) }),
        ])
        let ckpt = try load(ok, storages: [("0", float32Bytes(six))])
        XCTAssertEqual(try ckpt.floats("t"), [0, 3, 1, 4, 2, 5])
        XCTAssertEqual(try ckpt.floats("col"), [1, 4])
        XCTAssertEqual(try ckpt.floats("bcast"), [3, 4, 5, 3, 4, 5])
        XCTAssertEqual(try ckpt.floats("rank4"), six)
        XCTAssertEqual(try ckpt.floats("permuted3d"), [0, 3, 1, 4, 2, 5])
        XCTAssertEqual(try ckpt.floats("scalar"), [5])
        XCTAssertEqual(try ckpt.floats("empty"), [])
        XCTAssertEqual(ckpt.shape(of: "empty"), [4, 0])
    }

    func testIntegerViewsAndBigEndianStrides() throws {
        // int16 [2,3] storage viewed transposed; uint8 / int8 / bool with stride 2; all in both byte orders.
        let int16s: [Int16] = [-1, 2, -300, 400, 5, -32768]
        for order in ["little", "big"] {
            var i16: [UInt8] = []
            for v in int16s {
                let u = UInt16(bitPattern: v)
                i16 += order == "big" ? [UInt8(u >> 8), UInt8(u & 0xFF)] : [UInt8(u & 0xFF), UInt8(u >> 8)]
            }
            var f32: [UInt8] = []
            for v in six {
                let b = v.bitPattern
                let le = [UInt8(b & 0xFF), UInt8((b >> 8) & 0xFF), UInt8((b >> 16) & 0xFF), UInt8(b >> 24)]
                f32 += order == "big" ? le.reversed() : le
            }
            let bytes: [UInt8] = [0, 1, 255, 3, 128, 5]
            let pickle = PickleWriter.stateDict([
                ("i16t", { $0.tensor(storageClass: "ShortStorage", key: "s", numel: 6, shape: [3, 2], stride: [1, 3]) }),
                ("u8s", { $0.tensor(storageClass: "ByteStorage", key: "b", numel: 6, shape: [3], stride: [2]) }),
                ("i8s", { $0.tensor(storageClass: "CharStorage", key: "c", numel: 6, offset: 1, shape: [3], stride: [2]) }),
                ("bools", { $0.tensor(storageClass: "BoolStorage", key: "d", numel: 6, shape: [2, 2], stride: [3, 2]) }),
                ("f32t", { $0.tensor(key: "f", numel: 6, shape: [3, 2], stride: [1, 3]) }),
            ])
            let ckpt = try TorchCheckpoint(data: makeCheckpoint(pickle: pickle, storages: [
                ("s", i16), ("b", bytes), ("c", bytes), ("d", [1, 0, 0, 0, 2, 1]), ("f", f32),
            ], byteorder: order), name: order)
            XCTAssertEqual(ckpt.byteOrder, order)
            XCTAssertEqual(try ckpt.int64s("i16t"), [-1, 400, 2, 5, -300, -32768], order)
            XCTAssertEqual(try ckpt.int64s("u8s"), [0, 255, 128], order)
            XCTAssertEqual(try ckpt.int64s("i8s"), [1, 3, 5], order)
            XCTAssertEqual(try ckpt.int64s("bools"), [1, 0, 0, 1], order)
            XCTAssertEqual(try ckpt.floats("f32t"), [0, 3, 1, 4, 2, 5], order)
        }
        var bad = PickleWriter(); bad.emptyDict(); bad.stop()
        assertThrows(["unknown byte order 'middle'"]) {
            try TorchCheckpoint(data: makeCheckpoint(pickle: bad.bytes, byteorder: "middle"))
        }
    }

    func testStorageTooSmallForItsElementCount() {
        assertThrows(["tensor 'w'", "declares 6 float32 elements", "archive/data/0", "holds only 20 bytes"]) {
            try self.load(self.simple(), storages: [("0", float32Bytes([0, 1, 2, 3, 4]))])
        }
    }

    func testSameStorageKeyWithTwoDtypesIsRefused() {
        let pickle = PickleWriter.stateDict([
            ("a", { $0.tensor(key: "0", numel: 6, shape: [6], stride: [1]) }),
            ("b", { $0.tensor(storageClass: "IntStorage", key: "0", numel: 6, shape: [6], stride: [1]) }),
        ])
        assertThrows(["storage '0'", "float32", "int32"]) { try self.load(pickle, storages: [("0", float32Bytes(self.six))]) }
    }

    func testOverflowingShapeIsRefused() {
        let pickle = PickleWriter.stateDict([
            ("huge", { $0.tensor(key: "0", numel: 6, shape: [1 << 40, 1 << 40], stride: [1, 1]) }),
        ])
        assertThrows(["tensor 'huge'", "overflows"]) { try self.load(pickle, storages: [("0", float32Bytes(self.six))]) }
        let broadcast = PickleWriter.stateDict([
            ("bcast", { $0.tensor(key: "0", numel: 6, shape: [1 << 30, 1 << 10], stride: [0, 0]) }),
        ])
        assertThrows(["tensor 'bcast'", "implausibly large"]) { try self.load(broadcast, storages: [("0", float32Bytes(self.six))]) }
        let negative = PickleWriter.stateDict([
            ("neg", { $0.tensor(key: "0", numel: 6, shape: [2], stride: [-1]) }),
        ])
        assertThrows(["negative"]) { try self.load(negative, storages: [("0", float32Bytes(self.six))]) }
        let mismatch = PickleWriter.stateDict([
            ("m", { $0.tensor(key: "0", numel: 6, shape: [2, 3], stride: [1]) }),
        ])
        assertThrows(["2 dimensions", "stride has 1"]) { try self.load(mismatch, storages: [("0", float32Bytes(self.six))]) }
    }

    /// Opcodes beyond what torch.save emits, but within the allowed data-only set.
    func testProtocol4OpcodesAndWrapperAndMetadata() throws {
        var p = PickleWriter(protocol: 4)
        let frameAt = p.bytes.count
        p.op(0x95); p.bytes.le64(0)               // FRAME (length patched below)
        p.global("collections", "OrderedDict")
        p.op(0x29); p.op(0x81); p.op(0x94)        // EMPTY_TUPLE NEWOBJ MEMOIZE -> top-level OrderedDict (memo 0)
        p.shortString("epoch"); p.int(70000)      // BININT
        p.op(0x73)                                // SETITEM
        p.shortString("model"); p.op(0x7D); p.op(0x94) // {} memo 1
        p.mark()
        // key via BINUNICODE8
        p.op(0x8D); p.bytes.le64(6); p.raw(Array("weight".utf8))
        p.global("torch._utils", "_rebuild_tensor_v2"); p.op(0x94)  // memo 2
        p.mark()
        p.mark(); p.shortString("storage"); p.stackGlobal("torch", "LongStorage"); p.shortString("k"); p.shortString("cpu"); p.int(3); p.tuple()
        p.op(0x94)                                // memo 3: the persistent id tuple
        p.op(0x51)                                // BINPERSID
        p.long1(0)                                // LONG1 offset
        p.op(0x4D); p.bytes.le16(3); p.op(0x85)   // BININT2 3, TUPLE1 -> size (3,)
        p.op(0x4B); p.bytes.append(1); p.op(0x85) // stride (1,)
        p.op(0x88)                                // NEWTRUE requires_grad
        p.global("collections", "OrderedDict"); p.op(0x29); p.op(0x52)
        p.op(0x4E)                                // metadata None (7th argument)
        p.tuple(); p.op(0x52)                     // REDUCE -> tensor
        p.shortString("again")
        p.op(0x68); p.bytes.append(2)             // BINGET 2: _rebuild_tensor_v2
        p.mark()
        p.op(0x68); p.bytes.append(3); p.op(0x51) // same persistent id again -> shared storage
        p.int(1); p.intTuple([2]); p.intTuple([1]); p.op(0x89)
        p.op(0x7D); p.tuple(); p.op(0x52)
        p.shortString("param")
        p.global("torch._utils", "_rebuild_parameter")
        p.op(0x68); p.bytes.append(2)
        p.mark(); p.op(0x68); p.bytes.append(3); p.op(0x51); p.int(2); p.intTuple([1]); p.intTuple([1]); p.op(0x89)
        p.op(0x7D); p.tuple(); p.op(0x52)
        p.op(0x88); p.op(0x7D); p.op(0x87); p.op(0x52)   // (tensor, True, {}) TUPLE3 REDUCE
        p.shortString("notes"); p.op(0x5D); p.op(0x4E); p.op(0x61) // [None] APPEND
        p.mark(); p.op(0x47); p.raw([0x40, 0x09, 0x21, 0xFB, 0x54, 0x44, 0x2D, 0x18]); p.op(0x43); p.bytes.append(2); p.raw([1, 2]); p.op(0x65) // APPENDS(pi, b'\x01\x02')
        p.shortString("device"); p.global("torch", "device"); p.shortString("cpu"); p.op(0x85); p.op(0x52)
        p.shortString("blob"); p.global("_codecs", "encode"); p.shortString("\u{e9}t\u{e9}"); p.shortString("latin1"); p.op(0x86); p.op(0x52)
        p.shortString("size"); p.global("torch", "Size"); p.intTuple([2, 3]); p.op(0x85); p.op(0x52)
        p.shortString("flag"); p.op(0x89); p.op(0x32); p.op(0x30) // NEWFALSE DUP POP
        p.op(0x75)                                // SETITEMS into the inner dict
        p.op(0x73)                                // SETITEM "model" -> inner dict in the OrderedDict
        p.op(0x7D); p.shortString("_metadata"); p.op(0x7D); p.op(0x73); p.op(0x62) // BUILD with {"_metadata": {}}
        p.stop()
        let frameLength = UInt64(p.bytes.count - frameAt - 9)
        for i in 0..<8 { p.bytes[frameAt + 1 + i] = UInt8((frameLength >> (8 * UInt64(i))) & 0xFF) }

        let ckpt = try load(p.bytes, storages: [("k", int64Bytes([10, -20, 30]))])
        XCTAssertEqual(ckpt.tensorNames, ["weight", "again", "param"])
        XCTAssertEqual(try ckpt.int64s("weight"), [10, -20, 30])
        XCTAssertEqual(try ckpt.int64s("again"), [-20, 30])
        XCTAssertEqual(try ckpt.int64s("param"), [30])
        XCTAssertEqual(ckpt.dtype(of: "param"), "int64")
    }

    func testDuplicateKeysKeepFirstPositionAndLastValue() throws {
        let pickle = PickleWriter.stateDict([
            ("a", { $0.tensor(key: "0", numel: 6, shape: [1], stride: [1]) }),
            ("b", { $0.tensor(key: "0", numel: 6, offset: 1, shape: [1], stride: [1]) }),
            ("a", { $0.tensor(key: "0", numel: 6, offset: 2, shape: [1], stride: [1]) }),
        ])
        let ckpt = try load(pickle, storages: [("0", float32Bytes(six))])
        XCTAssertEqual(ckpt.tensorNames, ["a", "b"])
        XCTAssertEqual(try ckpt.floats("a"), [2])
    }

    func testTopLevelMustBeADictWithStringKeys() {
        var p = PickleWriter(); p.op(0x5D); p.stop()
        assertThrows(["holds a list, not a dict"]) { try self.load(p.bytes) }
        var q = PickleWriter(); q.emptyDict(); q.int(5)
        q.tensor(key: "0", numel: 6, shape: [6], stride: [1]); q.op(0x73); q.stop()
        assertThrows(["tensor under a int key"]) { try self.load(q.bytes, storages: [("0", float32Bytes(self.six))]) }
        var empty = PickleWriter(); empty.emptyDict(); empty.stop()
        XCTAssertEqual(try load(empty.bytes).tensorNames, [])
    }

    // MARK: The allow-list

    func testDisallowedGlobalsAreNamed() {
        let globals = [("os", "system"), ("posix", "system"), ("nt", "system"), ("builtins", "eval"), ("builtins", "exec"),
                       ("__builtin__", "getattr"), ("builtins", "getattr"), ("subprocess", "Popen"), ("subprocess", "check_output"),
                       ("torch", "load"), ("torch._utils", "_rebuild_device_tensor_from_numpy"), ("numpy.core.multiarray", "_reconstruct"),
                       ("torch", "ComplexFloatStorage"), ("collections", "defaultdict"), ("torch.nn.modules.linear", "Linear"),
                       ("__torch__.Model", "forward"), ("webbrowser", "open")]
        for (module, name) in globals {
            var viaGlobal = PickleWriter()
            viaGlobal.global(module, name); viaGlobal.shortString("echo hi"); viaGlobal.op(0x85); viaGlobal.op(0x52); viaGlobal.stop()
            assertThrows(["refusing pickle global '\(module).\(name)'", "GLOBAL"]) { try self.load(viaGlobal.bytes) }
            var viaStack = PickleWriter(protocol: 4)
            viaStack.stackGlobal(module, name); viaStack.shortString("echo hi"); viaStack.op(0x85); viaStack.op(0x52); viaStack.stop()
            assertThrows(["refusing pickle global '\(module).\(name)'", "STACK_GLOBAL"]) { try self.load(viaStack.bytes) }
        }
    }

    func testGlobalHiddenAfterValidTensorsIsRefused() {
        var p = PickleWriter()
        p.emptyDict(); p.mark()
        p.string("w"); p.tensor(key: "0", numel: 6, shape: [6], stride: [1])
        p.string("x"); p.global("os", "system"); p.string("id"); p.op(0x85); p.op(0x52)
        p.setItems(); p.stop()
        assertThrows(["os.system"]) { try self.load(p.bytes, storages: [("0", float32Bytes(self.six))]) }
    }

    func testControlCharactersInGlobalNamesAreEscaped() {
        var p = PickleWriter(protocol: 4)
        p.stackGlobal("os\u{1b}[2J", String(repeating: "x", count: 250)); p.stop()
        do {
            _ = try load(p.bytes)
            XCTFail("expected an error")
        } catch {
            let text = "\(error)"
            XCTAssertFalse(text.contains("\u{1b}"))
            XCTAssertTrue(text.contains("os\\u{1b}[2J.xxx"))
            XCTAssertTrue(text.contains("…"))
        }
    }

    func testDisallowedOpcodesAreNamedWithOffset() {
        let cases: [([UInt8], [String])] = [
            ([0x80, 2, 0x28, 0x58, 2, 0, 0, 0, 0x69, 0x64, 0x69] + Array("os\nsystem\n.".utf8), ["INST", "'os.system'", "at byte 10"]),
            ([0x80, 2, 0x28, 0x63] + Array("collections\nOrderedDict\n".utf8) + [0x6F, 0x2E], ["OBJ (0x6F 'o')", "at byte 28"]),
            ([0x80, 2, 0x82, 0x01, 0x2E], ["EXT1 (0x82)", "at byte 2"]),
            ([0x80, 2] + Array("P0\n.".utf8), ["PERSID (0x50 'P')"]),
            ([0x80, 2, 0x49] + Array("1\n.".utf8), ["INT (0x49 'I')"]),
            ([0x80, 2, 0x8F, 0x2E], ["EMPTY_SET"]),
            ([0x80, 2, 0x92, 0x2E], ["NEWOBJ_EX"]),
            ([0x80, 2, 0xFF, 0x2E], ["unknown opcode 0xFF", "at byte 2"]),
            (Array("(S'echo'\nios\nsystem\n.".utf8), ["STRING (0x53 'S')", "at byte 1"]),
            ([0x80, 1, 0x2E], ["unsupported pickle protocol 1"]),
            ([0x80, 6, 0x2E], ["unsupported pickle protocol 6"]),
        ]
        for (bytes, fragments) in cases {
            assertThrows(["data.pkl"] + fragments) { try self.load(bytes) }
        }
    }

    func testCallsOfAllowedGlobalsAreChecked() {
        func run(_ build: (inout PickleWriter) -> Void) -> [UInt8] {
            var p = PickleWriter(); build(&p); p.stop(); return p.bytes
        }
        assertThrows(["FloatStorage cannot be called"]) {
            try self.load(run { $0.global("torch", "FloatStorage"); $0.op(0x29); $0.op(0x52) })
        }
        assertThrows(["NEWOBJ is only allowed for collections.OrderedDict"]) {
            try self.load(run { $0.global("torch", "FloatStorage"); $0.op(0x29); $0.op(0x81) })
        }
        assertThrows(["REDUCE of a str"]) {
            try self.load(run { $0.string("os.system"); $0.op(0x29); $0.op(0x52) })
        }
        assertThrows(["BUILD on a list"]) {
            try self.load(run { $0.op(0x5D); $0.op(0x7D); $0.op(0x62) })
        }
        assertThrows(["_rebuild_tensor_v2 takes 6 or 7 arguments"]) {
            try self.load(run { $0.global("torch._utils", "_rebuild_tensor_v2"); $0.op(0x29); $0.op(0x52) })
        }
        assertThrows(["storage must be a persistent-id storage"]) {
            try self.load(run {
                $0.global("torch._utils", "_rebuild_tensor_v2"); $0.mark(); $0.string("0"); $0.int(0)
                $0.intTuple([1]); $0.intTuple([1]); $0.op(0x89); $0.op(0x7D); $0.tuple(); $0.op(0x52)
            })
        }
        assertThrows(["unsupported persistent id"]) {
            try self.load(run { $0.mark(); $0.string("module"); $0.string("x"); $0.tuple(); $0.op(0x51) })
        }
        assertThrows(["persistent id storage type"]) {
            try self.load(run {
                $0.mark(); $0.string("storage"); $0.global("collections", "OrderedDict"); $0.string("0"); $0.string("cpu"); $0.int(1)
                $0.tuple(); $0.op(0x51)
            })
        }
        assertThrows(["unhashable dictionary key of type list"]) {
            try self.load(run { $0.op(0x7D); $0.op(0x5D); $0.op(0x4E); $0.op(0x73) })
        }
    }

    func testMalformedPicklesFailCleanly() {
        let cases: [([UInt8], String)] = [
            ([0x80, 2, 0x7D], "no STOP"),
            ([0x80, 2, 0x2E], "stack underflow"),
            ([0x80, 2, 0x68, 0x07, 0x2E], "memo key 7 is not defined"),
            ([0x80, 2, 0x58, 0xFF, 0xFF, 0xFF, 0x7F, 0x41], "runs past its end"),
            ([0x80, 2, 0x8D, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], "runs past its end"),
            ([0x80, 2, 0x4A, 0x01], "truncated"),
            ([0x80, 2, 0x74, 0x2E], "no MARK"),
            ([0x80, 2, 0x28, 0x4B, 1, 0x4B, 2, 0x4B, 3, 0x75, 0x2E], "SETITEMS"),
            ([0x80, 2, 0x4E, 0x4E, 0x4E, 0x73, 0x2E], "SETITEM on a None"),
            ([0x80, 2, 0x63] + Array("os".utf8), "unterminated"),
            ([0x80, 2, 0x8A, 0x09, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x2E], "holds a int"),  // big int, fine until used
        ]
        for (bytes, fragment) in cases {
            assertThrows(["data.pkl", fragment]) { try self.load(bytes) }
        }
    }

    func testDeepNestingDoesNotOverflowTheStack() {
        var p = PickleWriter()
        p.op(0x29)
        p.raw([UInt8](repeating: 0x85, count: 300_000))  // 300k nested TUPLE1
        p.stop()
        assertThrows(["holds a tuple"]) { try self.load(p.bytes) }
        var q = PickleWriter()
        q.op(0x5D)
        for _ in 0..<100_000 { q.op(0x5D); q.op(0x61) }  // [] then [] APPEND... (all into the first list)
        q.raw([UInt8](repeating: 0x32, count: 1000))      // DUP
        q.stop()
        assertThrows(["holds a list"]) { try self.load(q.bytes) }
        var r = PickleWriter()  // self-referencing list: a cycle, not recursion
        r.op(0x5D); r.op(0x71); r.bytes.append(0); r.op(0x68); r.bytes.append(0); r.op(0x61); r.stop()
        assertThrows(["holds a list"]) { try self.load(r.bytes) }
        var s = PickleWriter()  // a deeply nested tuple used as a dict key
        s.op(0x7D); s.op(0x29); s.raw([UInt8](repeating: 0x85, count: 1000)); s.op(0x4E); s.op(0x73); s.stop()
        assertThrows(["nested too deeply"]) { try self.load(s.bytes) }
    }

    func testLong1Values() throws {
        // LONG1 with minimal encodings: 255 = ff 00, -1 = ff, -256 = 00 ff, 2^63-1
        for (encoded, value) in [([0xFF, 0x00], 255), ([0xFF], -1), ([0x00, 0xFF], -256), ([], 0),
                                 ([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], Int.max),
                                 ([0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0xFF], Int.min)] as [([UInt8], Int)] {
            var p = PickleWriter()
            p.emptyDict(); p.string("t")
            p.global("torch._utils", "_rebuild_tensor_v2"); p.mark()
            p.mark(); p.string("storage"); p.global("torch", "FloatStorage"); p.string("0"); p.string("cpu"); p.int(6); p.tuple(); p.op(0x51)
            p.op(0x8A); p.bytes.append(UInt8(encoded.count)); p.raw(encoded)  // storage offset
            p.intTuple([1]); p.intTuple([1]); p.op(0x89); p.op(0x7D); p.tuple(); p.op(0x52)
            p.op(0x73); p.stop()
            if (0..<6).contains(value) {
                XCTAssertEqual(try load(p.bytes, storages: [("0", float32Bytes(six))]).floats("t"), [Float(value)])
            } else if value < 0 {
                assertThrows(["negative storage offset"]) { try self.load(p.bytes, storages: [("0", float32Bytes(self.six))]) }
            } else {
                assertThrows(["tensor 't'", "storage offset \(value)"]) { try self.load(p.bytes, storages: [("0", float32Bytes(self.six))]) }
            }
        }
    }

    // MARK: Zip structure

    func testZipStructureErrors() {
        let pickle = simple()
        let storage = float32Bytes(six)
        func items() -> [ZipItem] {
            [ZipItem(name: "a/data.pkl", data: pickle), ZipItem(name: "a/data/0", data: storage)]
        }
        // A comment after the EOCD is fine, and so is a root-level data.pkl-less prefix search.
        XCTAssertNoThrow(try TorchCheckpoint(data: Data(makeZip(items(), comment: Array("hello".utf8)))))

        var bzip = items(); bzip[1].method = 12
        let ckpt = try? TorchCheckpoint(data: Data(makeZip(bzip)))
        XCTAssertNotNil(ckpt)
        assertThrows(["tensor 'w'", "compression method 12"]) { try ckpt!.floats("w") }

        var encrypted = items(); encrypted[0].flags = 1
        assertThrows(["encrypted"]) { try TorchCheckpoint(data: Data(makeZip(encrypted))) }

        let duplicate = items() + [ZipItem(name: "a/data/0", data: storage)]
        assertThrows(["duplicate entry 'a/data/0'"]) { try TorchCheckpoint(data: Data(makeZip(duplicate))) }

        let two = items() + [ZipItem(name: "b/data.pkl", data: pickle)]
        assertThrows(["several data.pkl"]) { try TorchCheckpoint(data: Data(makeZip(two))) }

        var pklCRC = items(); pklCRC[0].crcOverride = 0x1234_5678
        assertThrows(["CRC-32 mismatch", "a/data.pkl", "0x12345678"]) { try TorchCheckpoint(data: Data(makeZip(pklCRC))) }

        var sizes = items(); sizes[1].sizeOverride = 4
        let badSize = try? TorchCheckpoint(data: Data(makeZip(sizes)))
        XCTAssertNil(badSize)  // storage declared smaller than 6 floats

        var bytes = makeZip(items())
        let eocd = bytes.count - 22
        bytes[eocd + 16] = 0xF0  // central directory offset far away
        assertThrows(["central directory"]) { try TorchCheckpoint(data: Data(bytes)) }

        var local = makeZip(items())
        local[0] = 0x51  // break the first local header signature (the file then no longer starts with PK\3\4)
        assertThrows(["not a zip archive"]) { try TorchCheckpoint(data: Data(local)) }
        var secondLocal = makeZip(items())
        let second = 30 + "a/data.pkl".utf8.count + pickle.count
        secondLocal[second] = 0x51
        assertThrows(["no local header", "'a/data/0'"]) { try TorchCheckpoint(data: Data(secondLocal)) }

        var zip64 = makeZip(items())
        zip64[zip64.count - 22 + 10] = 0xFF; zip64[zip64.count - 22 + 11] = 0xFF
        assertThrows(["ZIP64"]) { try TorchCheckpoint(data: Data(zip64)) }
    }

    func testDeflateEntriesAndTheirErrors() throws {
        let pickle = simple()
        let storage = float32Bytes(six)
        var items = [ZipItem(name: "a/data.pkl", data: pickle, method: 8), ZipItem(name: "a/data/0", data: storage, method: 8)]
        let ckpt = try TorchCheckpoint(data: Data(makeZip(items)))
        XCTAssertEqual(try ckpt.floats("w"), six)

        items[1].payloadOverride = Array(deflateStored(storage).dropLast(3))  // truncated stream
        assertThrows(["tensor 'w'", "truncated"]) { try TorchCheckpoint(data: Data(makeZip(items))).floats("w") }

        items[1].payloadOverride = deflateStored(storage + [1, 2, 3, 4])     // longer than declared
        assertThrows(["more than its recorded size"]) { try TorchCheckpoint(data: Data(makeZip(items))).floats("w") }

        items[1].payloadOverride = deflateStored(Array(storage.prefix(20)))  // shorter than declared
        assertThrows(["inflates to 20 bytes"]) { try TorchCheckpoint(data: Data(makeZip(items))).floats("w") }

        items[1].payloadOverride = [0x07, 0x00, 0x00]                        // invalid block type
        assertThrows(["corrupt DEFLATE data"]) { try TorchCheckpoint(data: Data(makeZip(items))).floats("w") }

        items[1].payloadOverride = [0x01, 0x00]
        items[1].sizeOverride = 0xFFFF_FFF0                                   // zip-bomb style claim
        assertThrows(["4294967280 bytes", "view only 24"]) { try TorchCheckpoint(data: Data(makeZip(items))).floats("w") }
    }

    // MARK: Fuzzing: truncations and byte flips never crash

    private func exercise(_ data: Data) {
        guard let ckpt = try? TorchCheckpoint(data: data, name: "fuzz") else { return }
        for name in ckpt.tensorNames {
            _ = try? ckpt.floats(name)
            _ = try? ckpt.int64s(name)
        }
        _ = try? ckpt.verifyChecksums()
    }

    func testTruncationsNeverCrash() throws {
        for file in ["small.bin", "basic_deflate.bin", "basic_zip64.bin"] {
            let bytes = try Data(contentsOf: fixture(file))
            for length in stride(from: 0, to: bytes.count, by: file == "small.bin" ? 1 : 7) {
                exercise(bytes.prefix(length))
            }
        }
    }

    func testByteFlipsNeverCrash() throws {
        var rng = SplitMix64(state: 2024)
        for file in ["small.bin", "basic.bin", "basic_deflate.bin", "basic_zip64.bin", "big_endian.bin"] {
            let original = [UInt8](try Data(contentsOf: fixture(file)))
            for _ in 0..<400 {
                var bytes = original
                for _ in 0..<(1 + rng.below(4)) {
                    let i = rng.below(bytes.count)
                    switch rng.below(3) {
                    case 0: bytes[i] ^= UInt8(1 << rng.below(8))
                    case 1: bytes[i] = 0xFF
                    default: bytes[i] = UInt8(rng.below(256))
                    }
                }
                exercise(Data(bytes))
            }
        }
    }

    func testFuzzedPicklesNeverCrash() {
        var rng = SplitMix64(state: 7)
        let base = PickleWriter.stateDict([
            ("w", { $0.tensor(key: "0", numel: 6, shape: [2, 3], stride: [3, 1]) }),
            ("t", { $0.tensor(key: "0", numel: 6, shape: [3, 2], stride: [1, 3]) }),
        ])
        for _ in 0..<1500 {
            var bytes = base
            for _ in 0..<(1 + rng.below(3)) {
                let i = 2 + rng.below(bytes.count - 2)
                bytes[i] = UInt8(rng.below(256))
            }
            exercise(makeCheckpoint(pickle: bytes, storages: [("0", float32Bytes(six))]))
        }
    }
}
