import Foundation
import XCTest
@testable import HubClient

final class SHA256Tests: XCTestCase {
    func testKnownVectors() {
        XCTAssertEqual(SHA256.hexDigest(Data()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hexDigest(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256.hexDigest(Data("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256.hexDigest(Data(repeating: UInt8(ascii: "a"), count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    func testIncrementalEqualsOneShot() {
        var data = Data()
        for i in 0..<1000 { data.append(UInt8(truncatingIfNeeded: i &* 31 &+ 7)) }
        let expected = SHA256.hexDigest(data)
        for chunk in [1, 3, 63, 64, 65, 127, 500] {
            var h = SHA256()
            var i = 0
            while i < data.count {
                h.update(data.subdata(in: i..<min(i + chunk, data.count)))
                i += chunk
            }
            XCTAssertEqual(h.finalizeHex(), expected, "chunk \(chunk)")
        }
        // Lengths around the padding boundary.
        XCTAssertEqual(SHA256.hexDigest(Data(repeating: 0x61, count: 55)), "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318")
        XCTAssertEqual(SHA256.hexDigest(Data(repeating: 0x61, count: 56)), "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a")
        XCTAssertEqual(SHA256.hexDigest(Data(repeating: 0x61, count: 64)), "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb")
    }

    /// A copy hashes on by itself (the OpenSSL context is copied on write).
    func testCopiesAreIndependent() {
        var a = SHA256()
        a.update(Data("ab".utf8))
        var b = a
        b.update(Data("c".utf8))
        a.update(Data("x".utf8))
        XCTAssertEqual(b.finalizeHex(), SHA256.hexDigest(Data("abc".utf8)))
        XCTAssertEqual(a.finalizeHex(), SHA256.hexDigest(Data("abx".utf8)))
    }
}
