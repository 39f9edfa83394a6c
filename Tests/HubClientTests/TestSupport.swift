import Foundation
import XCTest
@testable import HubClient

class HubTestCase: XCTestCase {
    var tmp: URL!
    let repoID = "test-org/tiny-cvt"
    let commitA = String(repeating: "a1", count: 20)
    let commitB = String(repeating: "b2", count: 20)
    let config = Data(#"{"model_type": "cvt"}"#.utf8)

    override func setUpWithError() throws {
        tmp = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("hubclient-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let tmp { try? FileManager.default.removeItem(at: tmp) }
    }

    var cacheRoot: URL { tmp.appendingPathComponent("cache") }

    /// An isolated environment: HOME and the cache inside `tmp`, the fake Hub as endpoint, short timeouts.
    func environment(_ hub: FakeHub?, _ extra: [String: String] = [:]) -> [String: String] {
        var env = [
            "HOME": tmp.appendingPathComponent("home").path,
            "HF_HUB_CACHE": cacheRoot.path,
            "HF_HUB_ETAG_TIMEOUT": "3",
            "HF_HUB_DOWNLOAD_TIMEOUT": "3",
        ]
        if let hub { env["HF_ENDPOINT"] = hub.endpoint }
        env.merge(extra) { $1 }
        return env
    }

    /// Deterministic pseudo-random bytes.
    func bytes(_ count: Int, seed: UInt64) -> Data {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var out = Data(count: count)
        for i in 0..<count {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            out[i] = UInt8(truncatingIfNeeded: state)
        }
        return out
    }

    /// Lays out a cached snapshot by hand, as huggingface_hub would have written it.
    func populateCache(repo: String, commit: String, ref: String? = "main", files: [String: Data]) throws {
        let cache = HubCache(root: cacheRoot)
        for (name, data) in files {
            let etag = SHA256.hexDigest(data)
            let blob = cache.blobURL(repo: repo, etag: etag)
            try FileManager.default.createDirectory(at: blob.deletingLastPathComponent(), withIntermediateDirectories: true)
            try data.write(to: blob)
            try cache.link(repo: repo, commit: commit, filename: name, etag: etag)
        }
        if let ref { try cache.writeRef(repo: repo, revision: ref, commit: commit) }
    }

    func listFiles(_ url: URL) -> [String] {
        guard let e = FileManager.default.enumerator(atPath: url.path) else { return [] }
        return (e.allObjects as? [String] ?? []).sorted()
    }

    func hubError(_ body: () throws -> Any, file: StaticString = #filePath, line: UInt = #line) -> HubError? {
        do {
            _ = try body()
            XCTFail("expected a HubError", file: file, line: line)
            return nil
        } catch let e as HubError {
            return e
        } catch {
            XCTFail("expected a HubError, got \(error)", file: file, line: line)
            return nil
        }
    }
}
