import Foundation
import XCTest
@testable import HubClient

/// Resolution from the cache alone, with a server that must see no request.
final class CacheTests: HubTestCase {
    func testRefsMainAndCommitHashRevision() throws {
        try populateCache(repo: repoID, commit: commitA, files: ["config.json": config, "model.safetensors": Data([1, 2, 3])])
        let hub = try FakeHub()
        defer { hub.stop() }
        let client = HubClient(environment: environment(hub))
        let expected = cacheRoot.appendingPathComponent("models--test-org--tiny-cvt/snapshots/\(commitA)")

        // refs/main → commit A, everything there: no request even though online.
        XCTAssertEqual(try client.snapshot(repo: repoID, files: ["config.json", "model.safetensors"]).path, expected.path)
        // A 40-hex revision is its own commit (no refs/ lookup).
        XCTAssertEqual(try client.snapshot(repo: repoID, revision: commitA, files: ["config.json"]).path, expected.path)
        XCTAssertEqual(hub.requests.count, 0)

        let cache = HubCache(root: cacheRoot)
        XCTAssertEqual(cache.commit(repo: repoID, revision: "main"), commitA)
        XCTAssertEqual(cache.commit(repo: repoID, revision: commitB), commitB)
        XCTAssertNil(cache.commit(repo: repoID, revision: "v2"))
        XCTAssertEqual(cache.cachedFile(repo: repoID, filename: "config.json").map { try? Data(contentsOf: $0) }, config)
        XCTAssertNil(cache.cachedFile(repo: repoID, filename: "nope.json"))
        // Relative symlinks, like huggingface_hub.
        let link = try FileManager.default.destinationOfSymbolicLink(atPath: expected.appendingPathComponent("config.json").path)
        XCTAssertEqual(link, "../../blobs/\(SHA256.hexDigest(config))")
    }

    func testNestedFileAndRepoWithoutOrg() throws {
        try populateCache(repo: "cvt", commit: commitB, files: ["sub/dir/x.json": config])
        let client = HubClient(environment: environment(nil, ["HF_HUB_OFFLINE": "1"]))
        let folder = try client.snapshot(repo: "cvt", files: ["sub/dir/x.json"])
        XCTAssertEqual(folder.path, cacheRoot.appendingPathComponent("models--cvt/snapshots/\(commitB)").path)
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("sub/dir/x.json")), config)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: folder.appendingPathComponent("sub/dir/x.json").path),
                       "../../../../blobs/\(SHA256.hexDigest(config))")
    }

    func testOfflineWithPopulatedCacheMakesNoRequest() throws {
        try populateCache(repo: repoID, commit: commitA, files: ["config.json": config, "pytorch_model.bin": Data([9])])
        let hub = try FakeHub()
        defer { hub.stop() }
        let client = HubClient(environment: environment(hub, ["HF_HUB_OFFLINE": "1"]))
        XCTAssertTrue(client.offline)
        // Optional files that are not cached are skipped offline; an alternative that is cached is enough.
        let folder = try client.snapshot(repo: repoID, files: ["config.json"], optionalFiles: ["preprocessor_config.json"],
                                         alternatives: [["model.safetensors", "pytorch_model.bin"]])
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("pytorch_model.bin").path))
        XCTAssertEqual(hub.requests.count, 0)
    }

    func testOfflineWithEmptyCacheFailsClearlyWithoutRequest() throws {
        let hub = try FakeHub()
        defer { hub.stop() }
        hub.setRepo(repoID, .init(commit: commitA, files: ["config.json": config]))
        for value in ["1", "true", "yes", "on"] {
            let client = HubClient(environment: environment(hub, ["HF_HUB_OFFLINE": value]))
            let e = hubError { try client.snapshot(repo: repoID, files: ["config.json"]) }
            XCTAssertEqual(e?.kind, .offlineNotCached)
            let text = e?.description ?? ""
            XCTAssertTrue(text.contains("offline") && text.contains("HF_HUB_OFFLINE") && text.contains(repoID) && text.contains("config.json"), text)
        }
        // Cached snapshot but the requested file missing.
        try populateCache(repo: repoID, commit: commitA, files: ["config.json": config])
        let client = HubClient(environment: environment(hub, ["HF_HUB_OFFLINE": "1"]))
        let e = hubError { try client.snapshot(repo: repoID, files: ["config.json", "model.safetensors"]) }
        XCTAssertEqual(e?.kind, .offlineNotCached)
        XCTAssertTrue(e?.description.contains("model.safetensors") ?? false)
        XCTAssertEqual(hub.requests.count, 0)
    }

    func testInvalidNamesRejectedBeforeAnyIO() throws {
        let client = HubClient(environment: environment(nil, ["HF_ENDPOINT": "http://127.0.0.1:\(TestHTTPServer.closedPort())"]))
        for (repo, file, rev) in [("a/b/c", "x", "main"), ("org/m", "../escape", "main"), ("org/m", "/etc/passwd", "main"), ("org/m", "x", "../../x")] {
            XCTAssertEqual(hubError { try client.snapshot(repo: repo, revision: rev, files: [file]) }?.kind, .invalidReference)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: cacheRoot.path))
    }

    func testUnreachableHubOnlyNeededForOptionalFileIsNotAnError() throws {
        // A cache made by snapshot_download has no .no_exist marker for files the repo lacks.
        try populateCache(repo: repoID, commit: commitA, files: ["config.json": config])
        let client = HubClient(environment: environment(nil, ["HF_ENDPOINT": "http://127.0.0.1:\(TestHTTPServer.closedPort())"]))
        let folder = try client.snapshot(repo: repoID, files: ["config.json"], optionalFiles: ["preprocessor_config.json"])
        XCTAssertEqual(folder.lastPathComponent, commitA)
        // A required file that is missing still needs the Hub.
        XCTAssertEqual(hubError { try client.snapshot(repo: repoID, files: ["config.json", "model.safetensors"]) }?.kind, .network)
    }
}
