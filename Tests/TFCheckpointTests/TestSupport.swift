import Foundation
import XCTest

let tfFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures").appendingPathComponent("tf")

func tfFixture(_ path: String) -> URL { tfFixtures.appendingPathComponent(path) }

/// Asserts that `body` throws an error whose description contains every fragment.
func assertThrows<T>(_ fragments: [String], file: StaticString = #filePath, line: UInt = #line,
                     _ body: () throws -> T) {
    do {
        _ = try body()
        XCTFail("expected an error containing \(fragments)", file: file, line: line)
    } catch {
        let text = String(describing: error)
        for fragment in fragments where !text.contains(fragment) {
            XCTFail("error \(text.debugDescription) does not contain \(fragment.debugDescription)", file: file, line: line)
        }
    }
}

/// A temporary directory removed at the end of the test.
func makeTempDir(_ testCase: XCTestCase) throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tfcheckpoint-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    testCase.addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
    return dir
}

/// A minimal, self-contained safetensors reader (8-byte little-endian header length, JSON header
/// `{name: {dtype, shape, data_offsets}}`, then the data), enough to compare with the fixtures.
struct SafetensorsFixture {
    struct Tensor {
        let dtype: String
        let shape: [Int]
        let bytes: Data
    }

    let tensors: [String: Tensor]

    init(url: URL) throws {
        let data = try Data(contentsOf: url)
        struct Bad: Error, CustomStringConvertible { let description: String }
        guard data.count >= 8 else { throw Bad(description: "\(url.path): shorter than 8 bytes") }
        var headerLength = 0
        for i in 0..<8 { headerLength |= Int(data[data.startIndex + i]) << (8 * i) }
        guard headerLength >= 2, 8 + headerLength <= data.count else { throw Bad(description: "\(url.path): bad header length") }
        let header = data.subdata(in: 8..<(8 + headerLength))
        guard let json = try JSONSerialization.jsonObject(with: header) as? [String: Any] else {
            throw Bad(description: "\(url.path): header is not a JSON object")
        }
        let base = 8 + headerLength
        var tensors: [String: Tensor] = [:]
        for (name, value) in json where name != "__metadata__" {
            guard let entry = value as? [String: Any], let dtype = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int],
                  offsets.count == 2, offsets[0] <= offsets[1], base + offsets[1] <= data.count
            else { throw Bad(description: "\(url.path): bad entry \(name)") }
            tensors[name] = Tensor(dtype: dtype, shape: shape, bytes: data.subdata(in: (base + offsets[0])..<(base + offsets[1])))
        }
        self.tensors = tensors
    }

    /// The F32 tensors' names.
    var floatNames: Set<String> { Set(tensors.filter { $0.value.dtype == "F32" }.keys) }

    func floats(_ name: String) -> [Float]? {
        guard let t = tensors[name], t.dtype == "F32" else { return nil }
        return t.bytes.withUnsafeBytes { raw in
            (0..<(t.bytes.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
    }
}
