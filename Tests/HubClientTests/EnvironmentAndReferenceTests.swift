import Foundation
import XCTest
@testable import HubClient

final class EnvironmentTests: XCTestCase {
    func testCacheRootPrecedence() {
        let home = ["HOME": "/home/u"]
        XCTAssertEqual(HubEnvironment(home).hubCache, "/home/u/.cache/huggingface/hub")
        XCTAssertEqual(HubEnvironment(home.merging(["XDG_CACHE_HOME": "/xdg"]) { $1 }).hubCache, "/xdg/huggingface/hub")
        XCTAssertEqual(HubEnvironment(home.merging(["XDG_CACHE_HOME": "/xdg", "HF_HOME": "/hf"]) { $1 }).hubCache, "/hf/hub")
        XCTAssertEqual(HubEnvironment(home.merging(["HF_HOME": "/hf", "HUGGINGFACE_HUB_CACHE": "/legacy"]) { $1 }).hubCache, "/legacy")
        XCTAssertEqual(HubEnvironment(home.merging(["HF_HOME": "/hf", "HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HUB_CACHE": "/new"]) { $1 }).hubCache, "/new")
        XCTAssertEqual(HubEnvironment(home.merging(["HF_HOME": "/hf", "HF_HUB_CACHE": "/new"]) { $1 }).hubCache, "/new")
        // ~ and $VARS are expanded like os.path.expanduser / expandvars; unknown variables stay.
        XCTAssertEqual(HubEnvironment(home.merging(["HF_HOME": "~/hf"]) { $1 }).hubCache, "/home/u/hf/hub")
        XCTAssertEqual(HubEnvironment(home.merging(["HF_HUB_CACHE": "$HOME/c/${HOME}/$NOPE_X"]) { $1 }).hubCache, "/home/u/c//home/u/$NOPE_X")
        // Empty counts as unset.
        XCTAssertEqual(HubEnvironment(home.merging(["HF_HUB_CACHE": ""]) { $1 }).hubCache, "/home/u/.cache/huggingface/hub")

        let client = HubClient(environment: home.merging(["HF_HOME": "/hf"]) { $1 })
        XCTAssertEqual(client.cacheDirectory.path, "/hf/hub")
        XCTAssertEqual(HubCache(environment: home.merging(["HF_HUB_CACHE": "/new"]) { $1 }).root.path, "/new")
    }

    func testOfflineEndpointTokenAndTimeouts() throws {
        for v in ["1", "true", "TRUE", "yes", "On"] { XCTAssertTrue(HubEnvironment(["HF_HUB_OFFLINE": v]).offline, v) }
        for v in ["0", "false", "no", "", "2"] { XCTAssertFalse(HubEnvironment(["HF_HUB_OFFLINE": v]).offline, v) }
        XCTAssertTrue(HubEnvironment(["TRANSFORMERS_OFFLINE": "1"]).offline)
        XCTAssertFalse(HubEnvironment([:]).offline)

        XCTAssertEqual(HubEnvironment([:]).endpoint, "https://huggingface.co")
        XCTAssertEqual(HubEnvironment(["HF_ENDPOINT": "http://mirror.local:8080//"]).endpoint, "http://mirror.local:8080")

        let tmp = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("hubenv-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: tmp) }
        let hfHome = tmp.appendingPathComponent("hf")
        try FileManager.default.createDirectory(at: hfHome, withIntermediateDirectories: true)
        var env = ["HOME": tmp.path, "HF_HOME": hfHome.path]
        XCTAssertNil(HubEnvironment(env).token)
        try Data("  hf_from_file\n".utf8).write(to: hfHome.appendingPathComponent("token"))
        XCTAssertEqual(HubEnvironment(env).token, "hf_from_file")
        env["HUGGING_FACE_HUB_TOKEN"] = "hf_legacy"
        XCTAssertEqual(HubEnvironment(env).token, "hf_legacy")
        env["HF_TOKEN"] = " hf_env "
        XCTAssertEqual(HubEnvironment(env).token, "hf_env")
        env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
        XCTAssertNil(HubEnvironment(env).token)

        XCTAssertEqual(HubEnvironment([:]).etagTimeout, 10)
        XCTAssertEqual(HubEnvironment(["HF_HUB_DOWNLOAD_TIMEOUT": "2.5"]).downloadTimeout, 2.5)
    }

    func testResolveURLEncoding() {
        let client = HubClient(environment: ["HOME": "/h", "HF_ENDPOINT": "http://127.0.0.1:1/"])
        XCTAssertEqual(try client.resolveURL(repo: "org/m", revision: "refs/pr/1", filename: "sub dir/a+b.json").absoluteString,
                       "http://127.0.0.1:1/org/m/resolve/refs%2Fpr%2F1/sub%20dir/a%2Bb.json")
    }

    func testProgressLine() {
        XCTAssertEqual(TerminalProgressBar.line(file: "m.bin", done: 500_000, total: 1_000_000, width: 10),
                       "m.bin [#####-----]  50%  0.5/1.0 MB")
        XCTAssertEqual(TerminalProgressBar.line(file: "m.bin", done: 2_000_000, total: nil), "m.bin 2.0 MB")
        XCTAssertEqual(TerminalProgressBar.bar(0.25, width: 8), "##------")
        XCTAssertEqual(TerminalProgressBar.bar(1.5, width: 4), "####")
    }
}

final class ModelReferenceTests: HubTestCase {
    func testRepoIDValidation() {
        for ok in ["microsoft/cvt-13", "cvt", "a/b", "org_1/model.v2", "A-b/c_D.e", String(repeating: "x", count: 96), "x/" + String(repeating: "y", count: 96)] {
            XCTAssertNoThrow(try RepoID.validate(ok), ok)
        }
        for bad in ["", "a/b/c", "/b", "a/", "-a/b", "a/b-", ".a", "a.", "a--b", "a..b", "a/b.git", "a b", "a/b@c", "é/x",
                    String(repeating: "x", count: 97), "a/" + String(repeating: "y", count: 97)] {
            XCTAssertThrowsError(try RepoID.validate(bad), bad)
        }
    }

    func testParse() throws {
        XCTAssertEqual(try ModelReference.parse("microsoft/cvt-13"), .hub(repo: "microsoft/cvt-13", revision: "main"))
        XCTAssertEqual(try ModelReference.parse("cvt"), .hub(repo: "cvt", revision: "main"))
        XCTAssertEqual(try ModelReference.parse("microsoft/cvt-13@v1.0"), .hub(repo: "microsoft/cvt-13", revision: "v1.0"))
        XCTAssertEqual(try ModelReference.parse("org/m@refs/pr/3"), .hub(repo: "org/m", revision: "refs/pr/3"))
        XCTAssertEqual(try ModelReference.parse("org/m@" + commitA), .hub(repo: "org/m", revision: commitA))
        XCTAssertEqual(ModelReference.hub(repo: "org/m", revision: "v1").description, "org/m@v1")

        // Existing folders win, absolute, relative or ~.
        let folder = tmp.appendingPathComponent("home/models/local-cvt")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let env = environment(nil)
        XCTAssertEqual(try ModelReference.parse(folder.path, environment: env), .local(URL(fileURLWithPath: folder.path, isDirectory: true)))
        XCTAssertEqual(try ModelReference.parse("~/models/local-cvt", environment: env), .local(URL(fileURLWithPath: folder.path, isDirectory: true)))
        let cwd = FileManager.default.currentDirectoryPath
        _ = FileManager.default.changeCurrentDirectoryPath(tmp.appendingPathComponent("home").path)
        defer { _ = FileManager.default.changeCurrentDirectoryPath(cwd) }
        // "models/local-cvt" looks like a Hub id but exists here as a folder: local, like transformers.
        XCTAssertEqual(try ModelReference.parse("models/local-cvt", environment: env), .local(URL(fileURLWithPath: folder.path, isDirectory: true)))
        XCTAssertEqual(try ModelReference.parse("./models/local-cvt", environment: env), .local(URL(fileURLWithPath: folder.path, isDirectory: true)))

        for missing in ["/nonexistent/cvt-model", "./nope", "../nope/x", "~/nope"] {
            let e = hubError { try ModelReference.parse(missing, environment: env) }
            XCTAssertEqual(e?.kind, .localPathNotFound, missing)
            XCTAssertTrue(e?.description.contains(missing) ?? false, e?.description ?? "")
        }
        let file = tmp.appendingPathComponent("afile")
        try Data().write(to: file)
        XCTAssertEqual(hubError { try ModelReference.parse(file.path) }?.kind, .localPathNotFound)

        for bad in ["a/b/c", "org/--x", "bad name", "org/m@", "org/m@a/../b", "org/m@x y", ""] {
            let e = hubError { try ModelReference.parse(bad, environment: env) }
            XCTAssertEqual(e?.kind, .invalidReference, bad)
        }
        XCTAssertTrue(hubError { try ModelReference.parse("a/b/c") }?.description.contains("a/b/c") ?? false)
    }

    func testLocalReferenceSnapshotChecksFiles() throws {
        let folder = tmp.appendingPathComponent("m")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try config.write(to: folder.appendingPathComponent("config.json"))
        try Data([1]).write(to: folder.appendingPathComponent("pytorch_model.bin"))
        let client = HubClient(environment: environment(nil, ["HF_HUB_OFFLINE": "1"]))
        XCTAssertEqual(try client.snapshot(.local(folder), files: ["config.json"], alternatives: [["model.safetensors", "pytorch_model.bin"]]), folder)
        let e = hubError { try client.snapshot(.local(folder), files: ["config.json", "preprocessor_config.json"]) }
        XCTAssertTrue(e?.description.contains("preprocessor_config.json") ?? false)
        XCTAssertNotNil(hubError { try client.snapshot(.local(folder), files: [], alternatives: [["model.safetensors"]]) })
    }
}

final class HostileEndpointTests: XCTestCase {
    /// An endpoint that does not form a URL is an error naming HF_ENDPOINT, not a trap.
    func testEndpointWithASpaceIsAnError() {
        for endpoint in ["http://exa mple.invalid", "not a url", "ftp://example.invalid", "\u{1b}[2J"] {
            let client = HubClient(environment: ["HOME": "/h", "HF_ENDPOINT": endpoint])
            XCTAssertThrowsError(try client.resolveURL(repo: "org/m", revision: "main", filename: "config.json")) { error in
                let e = error as? HubError
                XCTAssertEqual(e?.kind, .invalidReference)
                XCTAssertTrue(e?.message.contains("HF_ENDPOINT") == true, "\(error)")
                XCTAssertFalse(e?.message.contains("\u{1b}") == true, "control bytes escaped")
            }
        }
    }
}
