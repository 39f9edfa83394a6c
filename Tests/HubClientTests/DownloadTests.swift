import Foundation
import Synchronization
import XCTest
@testable import HubClient

/// Downloads against the in-process fake Hub on 127.0.0.1.
final class DownloadTests: HubTestCase {
    var hub: FakeHub!
    var weights: Data!
    var bin: Data!

    override func setUpWithError() throws {
        try super.setUpWithError()
        hub = try FakeHub()
        weights = bytes(300_000, seed: 1)
        bin = bytes(50_000, seed: 2)
        hub.setRepo(repoID, .init(commit: commitA, files: [
            "config.json": config, "model.safetensors": weights, "pytorch_model.bin": bin, "onnx/model.onnx": bytes(1000, seed: 3),
        ], lfs: ["model.safetensors", "pytorch_model.bin"]))
    }

    override func tearDownWithError() throws {
        hub?.stop()
        try super.tearDownWithError()
    }

    var repoFolder: URL { cacheRoot.appendingPathComponent("models--test-org--tiny-cvt") }
    var blobs: URL { repoFolder.appendingPathComponent("blobs") }
    func snapshotFolder(_ commit: String) -> URL { repoFolder.appendingPathComponent("snapshots/\(commit)") }
    func client(_ extra: [String: String] = [:]) -> HubClient { HubClient(environment: environment(hub, extra)) }
    var resolveRequests: [TestHTTPServer.Request] { hub.requests.filter { $0.path.contains("/resolve/") } }
    var cdnRequests: [TestHTTPServer.Request] { hub.requests.filter { $0.path.hasPrefix("/cdn/") } }

    func testDownloadsRegularAndLFSFilesIntoCacheLayout() throws {
        let reported = Mutex([String: (Int64, Int64?)]())
        let folder = try client().snapshot(repo: repoID, files: ["config.json", "model.safetensors", "onnx/model.onnx"]) { file, done, total in
            reported.withLock { $0[file] = (done, total) }
        }
        let progress = reported.withLock { $0 }
        XCTAssertEqual(folder.path, snapshotFolder(commitA).path)
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("config.json")), config)
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
        XCTAssertEqual(try String(contentsOf: repoFolder.appendingPathComponent("refs/main"), encoding: .utf8), commitA)
        let sha = SHA256.hexDigest(weights)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: folder.appendingPathComponent("model.safetensors").path),
                       "../../blobs/\(sha)")
        XCTAssertTrue(try FileManager.default.destinationOfSymbolicLink(atPath: folder.appendingPathComponent("onnx/model.onnx").path)
            .hasPrefix("../../../blobs/"))
        XCTAssertEqual(try Data(contentsOf: blobs.appendingPathComponent(sha)), weights)
        XCTAssertFalse(listFiles(blobs).contains { $0.hasSuffix(".incomplete") })
        XCTAssertEqual(progress["model.safetensors"]?.0, Int64(weights.count))
        XCTAssertEqual(progress["model.safetensors"]?.1, Int64(weights.count))

        // The LFS file went through the 302 to /cdn/; metadata by HEAD, bytes by GET.
        XCTAssertEqual(cdnRequests.map(\.method), ["GET"])
        XCTAssertTrue(resolveRequests.allSatisfy { $0.method == "HEAD" || $0.method == "GET" })
        XCTAssertTrue(resolveRequests.allSatisfy { $0.header("Authorization") == nil })  // no token configured

        // Second call: everything cached, offline first → zero requests.
        hub.server.resetRequests()
        XCTAssertEqual(try client().snapshot(repo: repoID, files: ["config.json", "model.safetensors"]).path, folder.path)
        XCTAssertEqual(hub.requests.count, 0)
        // And a single file through the hf_hub_download-like entry point.
        XCTAssertEqual(try client().file(repo: repoID, filename: "config.json").path, folder.appendingPathComponent("config.json").path)
        XCTAssertEqual(hub.requests.count, 0)
    }

    func testOptionalFilesAndAlternatives() throws {
        let c = client()
        let folder = try c.snapshot(repo: repoID, files: ["config.json"], optionalFiles: ["preprocessor_config.json"],
                                    alternatives: [["tf_model.h5", "pytorch_model.bin", "model.safetensors"]])
        let fm = FileManager.default
        XCTAssertTrue(fm.fileExists(atPath: folder.appendingPathComponent("pytorch_model.bin").path))
        XCTAssertFalse(fm.fileExists(atPath: folder.appendingPathComponent("model.safetensors").path))
        XCTAssertFalse(fm.fileExists(atPath: folder.appendingPathComponent("preprocessor_config.json").path))
        // The 404s were recorded like huggingface_hub's .no_exist, so the next call makes no request.
        XCTAssertTrue(fm.fileExists(atPath: repoFolder.appendingPathComponent(".no_exist/\(commitA)/preprocessor_config.json").path))
        XCTAssertTrue(fm.fileExists(atPath: repoFolder.appendingPathComponent(".no_exist/\(commitA)/tf_model.h5").path))
        hub.server.resetRequests()
        _ = try c.snapshot(repo: repoID, files: ["config.json"], optionalFiles: ["preprocessor_config.json"],
                           alternatives: [["tf_model.h5", "pytorch_model.bin", "model.safetensors"]])
        XCTAssertEqual(hub.requests.count, 0)

        // No alternative exists → not-found error naming them all.
        let e = hubError { try c.snapshot(repo: repoID, files: [], alternatives: [["a.bin", "b.bin"]]) }
        XCTAssertEqual(e?.kind, .notFound)
        XCTAssertTrue(e?.description.contains("a.bin") ?? false)
    }

    func testMissingFileRepoAndRevision() throws {
        let c = client()
        var e = hubError { try c.snapshot(repo: repoID, files: ["config.json", "missing.json"]) }
        XCTAssertEqual(e?.kind, .notFound)
        var text = e?.description ?? ""
        XCTAssertTrue(text.contains("not found") && text.contains(repoID) && text.contains("missing.json") && text.contains("main"), text)
        XCTAssertFalse(listFiles(snapshotFolder(commitA)).contains("missing.json"))

        e = hubError { try c.snapshot(repo: "test-org/nope", files: ["config.json"]) }
        text = e?.description ?? ""
        XCTAssertEqual(e?.status, 401)
        XCTAssertEqual(e?.kind, .notFound)
        XCTAssertTrue(text.contains("Repository not found") && text.contains("HF_TOKEN") && text.contains("test-org/nope"), text)

        e = hubError { try c.snapshot(repo: repoID, revision: "v9", files: ["config.json"]) }
        XCTAssertEqual(e?.kind, .notFound)
        XCTAssertTrue(e?.description.contains("v9") ?? false)
        // A missing repo is an error even for optional files.
        XCTAssertNotNil(hubError { try c.snapshot(repo: "test-org/nope", files: [], optionalFiles: ["x.json"]) })
        XCTAssertFalse(FileManager.default.fileExists(atPath: cacheRoot.appendingPathComponent("models--test-org--nope/snapshots").path))
    }

    func testTokenRequiredAndDroppedOnCrossHostRedirect() throws {
        hub.privateRepos = [repoID]
        hub.cdnHost = "localhost"  // a different host than the endpoint's 127.0.0.1, same server
        let e = hubError { try client().snapshot(repo: repoID, files: ["config.json"]) }
        XCTAssertEqual(e?.kind, .unauthorized)
        XCTAssertEqual(e?.status, 401)
        XCTAssertTrue(e?.description.contains("HF_TOKEN") ?? false)

        let wrong = hubError { try client(["HF_TOKEN": "hf_wrong"]).snapshot(repo: repoID, files: ["config.json"]) }
        XCTAssertTrue(wrong?.description.contains("HF_TOKEN was sent") ?? false, wrong?.description ?? "")

        hub.server.resetRequests()
        let folder = try client(["HF_TOKEN": hub.token]).snapshot(repo: repoID, files: ["config.json", "model.safetensors"])
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
        XCTAssertFalse(resolveRequests.isEmpty)
        XCTAssertTrue(resolveRequests.allSatisfy { $0.header("Authorization") == "Bearer \(hub.token)" })
        XCTAssertEqual(cdnRequests.count, 1)
        XCTAssertTrue(cdnRequests[0].header("Host")?.hasPrefix("localhost") ?? false)
        XCTAssertNil(cdnRequests[0].header("Authorization"))
    }

    func testTokenKeptOnSameHostRedirect() throws {
        hub.privateRepos = [repoID]
        _ = try client(["HF_TOKEN": hub.token]).snapshot(repo: repoID, files: ["model.safetensors"])
        XCTAssertEqual(cdnRequests.count, 1)
        XCTAssertEqual(cdnRequests[0].header("Authorization"), "Bearer \(hub.token)")
    }

    func testRenamedRepoFollowsRelativeRedirect() throws {
        hub.renamed["old-org/old-name"] = repoID
        let folder = try client().snapshot(repo: "old-org/old-name", files: ["config.json", "model.safetensors"])
        XCTAssertEqual(folder.path, cacheRoot.appendingPathComponent("models--old-org--old-name/snapshots/\(commitA)").path)
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
    }

    func testCutDownloadLeavesNothingCompleteThenResumesWithRange() throws {
        hub.cutNextCDNResponses = 1
        hub.cutAfterBytes = 100_000
        var c = client()
        c.downloadAttempts = 1
        let e = hubError { try c.snapshot(repo: repoID, files: ["config.json", "model.safetensors"]) }
        XCTAssertEqual(e?.kind, .network)
        let sha = SHA256.hexDigest(weights)
        // Nothing complete-looking: no blob, no pointer in snapshots/, only the partial file.
        XCTAssertFalse(FileManager.default.fileExists(atPath: blobs.appendingPathComponent(sha).path))
        XCTAssertFalse(listFiles(snapshotFolder(commitA)).contains("model.safetensors"))
        let partial = HubCache.fileSize(blobs.appendingPathComponent(sha + ".incomplete").path) ?? 0
        XCTAssertGreaterThan(partial, 0)
        XCTAssertLessThan(partial, Int64(weights.count))

        hub.server.resetRequests()
        let folder = try c.snapshot(repo: repoID, files: ["config.json", "model.safetensors"])
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
        XCTAssertEqual(cdnRequests.count, 1)
        XCTAssertEqual(cdnRequests.first?.header("Range"), "bytes=\(partial)-")
        XCTAssertFalse(FileManager.default.fileExists(atPath: blobs.appendingPathComponent(sha + ".incomplete").path))
    }

    func testCutDownloadRetriedWithinOneCall() throws {
        hub.cutNextCDNResponses = 2
        hub.cutAfterBytes = 60_000
        let folder = try client().snapshot(repo: repoID, files: ["model.safetensors"])  // 3 attempts by default
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
        XCTAssertEqual(cdnRequests.count, 3)
        XCTAssertNil(cdnRequests[0].header("Range"))
        XCTAssertNotNil(cdnRequests[1].header("Range"))
        XCTAssertNotNil(cdnRequests[2].header("Range"))
    }

    func testServerIgnoringRangeRestartsFromZero() throws {
        hub.cutNextCDNResponses = 1
        hub.cutAfterBytes = 100_000
        var c = client()
        c.downloadAttempts = 1
        XCTAssertNotNil(hubError { try c.snapshot(repo: repoID, files: ["model.safetensors"]) })
        hub.honorRange = false
        hub.server.resetRequests()
        let folder = try c.snapshot(repo: repoID, files: ["model.safetensors"])
        XCTAssertNotNil(cdnRequests.first?.header("Range"))  // asked to resume, got 200 → restarted
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
    }

    func testStaleOversizedPartialIsDiscarded() throws {
        let sha = SHA256.hexDigest(weights)
        try FileManager.default.createDirectory(at: blobs, withIntermediateDirectories: true)
        try bytes(weights.count + 10, seed: 9).write(to: blobs.appendingPathComponent(sha + ".incomplete"))
        let folder = try client().snapshot(repo: repoID, files: ["model.safetensors"])
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
        XCTAssertNil(cdnRequests.first?.header("Range"))
    }

    func testSHA256MismatchFailsAndLeavesNothing() throws {
        let fake = String(repeating: "0f", count: 32)
        hub.etagOverride["model.safetensors"] = fake
        let e = hubError { try client().snapshot(repo: repoID, files: ["config.json", "model.safetensors"]) }
        XCTAssertEqual(e?.kind, .integrity)
        XCTAssertTrue(e?.description.contains("SHA-256") ?? false)
        XCTAssertFalse(listFiles(snapshotFolder(commitA)).contains("model.safetensors"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: blobs.appendingPathComponent(fake).path))
        XCTAssertFalse(FileManager.default.fileExists(atPath: blobs.appendingPathComponent(fake + ".incomplete").path))
    }

    func testConnectionRefusedNamesEndpoint() throws {
        let endpoint = "http://127.0.0.1:\(TestHTTPServer.closedPort())"
        let e = hubError { try client(["HF_ENDPOINT": endpoint]).snapshot(repo: repoID, files: ["config.json"]) }
        XCTAssertEqual(e?.kind, .network)
        XCTAssertTrue(e?.description.contains(endpoint) ?? false, e?.description ?? "")
        XCTAssertTrue(e?.description.contains("HF_HUB_OFFLINE") ?? false)
        XCTAssertFalse(FileManager.default.fileExists(atPath: repoFolder.appendingPathComponent("snapshots").path))
    }

    func testEndpointOverrideIsUsed() throws {
        // A second fake Hub with different content; HF_ENDPOINT decides which one is asked.
        let other = try FakeHub()
        defer { other.stop() }
        let otherConfig = Data(#"{"model_type": "cvt", "mirror": true}"#.utf8)
        other.setRepo(repoID, .init(commit: commitB, files: ["config.json": otherConfig]))
        let folder = try HubClient(environment: environment(hub, ["HF_ENDPOINT": other.endpoint + "/"])).snapshot(repo: repoID, files: ["config.json"])
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("config.json")), otherConfig)
        XCTAssertEqual(hub.requests.count, 0)
        XCTAssertEqual(other.requests.map(\.method), ["HEAD", "GET"])  // metadata, then bytes
    }

    func testBranchMovedDownloadsIntoNewCommitSnapshot() throws {
        try populateCache(repo: repoID, commit: commitB, files: ["config.json": config])  // refs/main → B (old)
        let folder = try client().snapshot(repo: repoID, files: ["config.json", "model.safetensors"])
        // The Hub says main is A now: all files end up in A's snapshot, config.json relinked from its blob.
        XCTAssertEqual(folder.path, snapshotFolder(commitA).path)
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("config.json")), config)
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
        XCTAssertEqual(HubCache(root: cacheRoot).commit(repo: repoID, revision: "main"), commitA)
    }

    func testCommitHashRevisionDownloadWritesNoRef() throws {
        let folder = try client().snapshot(repo: repoID, revision: commitA, files: ["config.json"])
        XCTAssertEqual(folder.path, snapshotFolder(commitA).path)
        XCTAssertTrue(resolveRequests.allSatisfy { $0.path.contains("/resolve/\(commitA)/") })
        XCTAssertFalse(FileManager.default.fileExists(atPath: repoFolder.appendingPathComponent("refs").path))
    }

    func testSlowButLiveDownloadIsNotTimedOut() throws {
        // 12 pieces 250 ms apart: 3 s in all, with a 1 s stall timeout.
        hub.cdnPacing = (12, 250)
        let started = Date()
        let folder = try client(["HF_HUB_DOWNLOAD_TIMEOUT": "1"]).snapshot(repo: repoID, files: ["model.safetensors"])
        // A lower bound only (the server's pacing): the whole download outlived the stall timeout.
        XCTAssertGreaterThan(Date().timeIntervalSince(started), 2.5)
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
        XCTAssertEqual(cdnRequests.count, 1)
    }

    func testWrongResumeOffsetRestartsFromZero() throws {
        hub.cutNextCDNResponses = 1
        hub.cutAfterBytes = 100_000
        hub.wrongRangeStart = 10
        let folder = try client().snapshot(repo: repoID, files: ["model.safetensors"])
        XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
        XCTAssertEqual(cdnRequests.map { $0.header("Range") == nil }, [true, false, true])  // cut, bad 206, fresh start
    }

    func testConcurrentDownloadsOfSameBlobShareOneTransfer() throws {
        hub.cdnPacing = (4, 100)
        let group = DispatchGroup()
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var all = [Result<URL, Error>]()
            func add(_ r: Result<URL, Error>) { lock.lock(); all.append(r); lock.unlock() }
        }
        let results = Results()
        let env = environment(hub)
        let repo = repoID
        for _ in 0..<2 {
            group.enter()
            Thread {
                let r = Result { try HubClient(environment: env).snapshot(repo: repo, files: ["model.safetensors"]) }
                results.add(r)
                group.leave()
            }.start()
        }
        XCTAssertEqual(group.wait(timeout: .now() + 30), .success)
        XCTAssertEqual(results.all.count, 2)
        for r in results.all {
            let folder = try r.get()
            XCTAssertEqual(try Data(contentsOf: folder.appendingPathComponent("model.safetensors")), weights)
        }
        XCTAssertEqual(cdnRequests.count, 1)  // the second waited on the lock, then found the blob
    }

    func testStalledDownloadTimesOutAndKeepsNothingComplete() throws {
        hub.cdnPacing = (2, 2500)  // nothing for 2.5 s, with a 1 s stall timeout
        var c = client(["HF_HUB_DOWNLOAD_TIMEOUT": "1"])
        c.downloadAttempts = 1
        let e = hubError { try c.snapshot(repo: repoID, files: ["model.safetensors"]) }
        XCTAssertEqual(e?.kind, .network)
        // The stall watchdog ended it (not the server finishing late), whatever the machine's speed.
        XCTAssertTrue("\(e.map { "\($0)" } ?? "")".contains("no data for 1.0 s"), "\(String(describing: e))")
        XCTAssertFalse(listFiles(snapshotFolder(commitA)).contains("model.safetensors"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: blobs.appendingPathComponent(SHA256.hexDigest(weights)).path))
    }
}
