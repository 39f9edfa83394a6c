import Foundation
import TorchCheckpoint
import XCTest

/// Pickles and archives whose cost is not bounded by their size: refused after work proportional
/// to the file, with an error naming why.
final class HostileCheckpointTests: XCTestCase {
    /// `t = (t, t)` repeated 24 times and used as a dict key would expand to 16 million elements.
    func testExponentiallySharedTupleKeyIsRefused() {
        var p: [UInt8] = [0x80, 0x02, 0x7D, 0x29]           // PROTO 2, EMPTY_DICT, EMPTY_TUPLE
        for _ in 0..<24 { p += [0x32, 0x86] }               // DUP, TUPLE2
        p += [0x4E, 0x73, 0x2E]                             // NONE, SETITEM, STOP
        assertThrows(["dictionary key", "4096 elements"]) {
            try TorchCheckpoint(data: makeCheckpoint(pickle: p), name: "tuple-bomb")
        }
    }

    /// OrderedDict(d) of a 20,000-entry dict repeated 20,000 times: 7 bytes each, 4·10⁸ entries copied.
    func testRepeatedDictCopiesAreRefused() {
        var p: [UInt8] = [0x80, 0x02, 0x63] + Array("collections\nOrderedDict\n".utf8) + [0x71, 0x01, 0x30] // GLOBAL, BINPUT 1, POP
        p += [0x7D, 0x28]                                   // EMPTY_DICT, MARK
        for k in 0..<20_000 { p += [0x4D, UInt8(k & 0xFF), UInt8(k >> 8), 0x4E] }  // BININT2 k, NONE
        p += [0x75, 0x71, 0x00]                             // SETITEMS, BINPUT 0
        for _ in 0..<20_000 { p += [0x68, 0x01, 0x68, 0x00, 0x85, 0x52, 0x30] }   // OrderedDict(d), POP
        p += [0x2E]
        assertThrows(["more work than its", "refused"]) {
            try TorchCheckpoint(data: makeCheckpoint(pickle: p), name: "copies")
        }
    }

    /// A compressed storage that inflates to far more than its tensors view is refused before
    /// anything is inflated; one that many tensors view is inflated once and read by all.
    func testCompressedStorageBounds() throws {
        let big = PickleWriter.stateDict([("w", { $0.tensor(key: "0", numel: 1_000_000, shape: [6], stride: [1]) })])
        let items = [ZipItem(name: "a/data.pkl", data: big),
                     ZipItem(name: "a/data/0", data: float32Bytes([0, 1, 2, 3, 4, 5]), method: 8, sizeOverride: 4_000_000)]
        assertThrows(["4000000 bytes", "view only 24"]) { try TorchCheckpoint(data: Data(makeZip(items)), name: "oversize") }

        let values = (0..<1000).map(Float.init)
        let shared = PickleWriter.stateDict((0..<200).map { i in
            ("t\(i)", { $0.tensor(key: "0", numel: 1000, offset: i * 5, shape: [5], stride: [1]) })
        })
        let ok = try TorchCheckpoint(data: Data(makeZip([ZipItem(name: "a/data.pkl", data: shared),
                                                         ZipItem(name: "a/data/0", data: float32Bytes(values), method: 8)])))
        for i in [0, 7, 199] { XCTAssertEqual(try ok.floats("t\(i)"), Array(values[(i * 5)..<(i * 5 + 5)])) }
    }
}
