import CvtKit
import Foundation
import XCTest

/// Runs the built `cvt` executable as a user would.
final class CLITests: XCTestCase {
    static var executable: URL {
        // The test runner (…/debug/<package>PackageTests.xctest) sits next to the package's executables.
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("cvt")
    }

    func run(_ args: [String], environment: [String: String]? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
        try runCvt(args, environment: environment)
    }

    func testForwardWritesTransformersOutputs() throws {
        let dir = fixturesRoot.appendingPathComponent("parity/tiny")
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-forward-\(UUID().uuidString).safetensors")
        defer { try? FileManager.default.removeItem(at: output) }
        let r = try run(["forward", "--model", dir.path, "--input", dir.appendingPathComponent("input.safetensors").path,
                         "--output", output.path, "--hidden-states", "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let got = try SafetensorsFile(url: output)
        let expected = try SafetensorsFile(url: dir.appendingPathComponent("expected.safetensors"))
        XCTAssertEqual(Set(got.tensorNames), Set(expected.tensorNames))
        for name in expected.tensorNames {
            assertTensorClose(name, try got.tensor(name), try expected.tensor(name), tol: 1e-4)
        }
    }

    /// Small things a new user meets first: a version, JSON as other tools write it, help that
    /// names every format, and the same default model for every command.
    func testVersionJSONHelpAndDefaults() throws {
        let version = try run(["--version"])
        XCTAssertEqual(version.status, 0, version.stderr)
        XCTAssertEqual(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines), swiftCvtVersion)

        let bundled = fixturesRoot.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("models/cvt-fashion-mnist")
        let image = bundled.appendingPathComponent("samples/00-t-shirt-top.png").path
        let json = try run(["classify", "--json", "--top-k", "1", image])
        XCTAssertEqual(json.status, 0, json.stderr)
        XCTAssertFalse(json.stdout.contains("\\/"), "escaped slashes: \(json.stdout)")
        XCTAssertTrue(json.stdout.contains("\"T-shirt/top\""), json.stdout)

        let help = try run(["convert", "--help"])
        XCTAssertTrue(help.stdout.contains("tf_model.h5"), help.stdout)
        // bench's main options print first, the comparison switches after them.
        let benchHelp = try run(["bench", "--help"]).stdout
        let main = try XCTUnwrap(benchHelp.range(of: "--batch-size"), benchHelp)
        let switches = try XCTUnwrap(benchHelp.range(of: "--plain-weights"), benchHelp)
        XCTAssertLessThan(main.lowerBound, switches.lowerBound, benchHelp)

        let completion = try run(["--generate-completion-script", "bash"])
        XCTAssertEqual(completion.status, 0, completion.stderr)
        XCTAssertTrue(completion.stdout.contains("classify") && completion.stdout.contains("complete"), String(completion.stdout.prefix(300)))

        // bench-preprocess without --model preprocesses as the bundled model does (28 px), as
        // classify does, not at 224 px.
        let bench = try run(["bench-preprocess", "--iterations", "1", "--json", image])
        XCTAssertEqual(bench.status, 0, bench.stderr)
        let rows = (try JSONSerialization.jsonObject(with: Data(bench.stdout.utf8)) as? [String: Any])?["images"] as? [[String: Any]]
        XCTAssertEqual(rows?.first?["pixel_values_shape"] as? [Int], [1, 3, 28, 28], bench.stdout)
    }

    /// Invalid option values, a missing default model and a folder without a processor config get
    /// a message naming the value, and a non-zero exit.
    func testBadOptionValuesAndMissingFiles() throws {
        let bundled = fixturesRoot.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("models/cvt-fashion-mnist")
        let image = bundled.appendingPathComponent("samples/00-t-shirt-top.png").path
        for (args, needle) in [(["classify", "--top-k", "-1", image], "--top-k"),
                               (["classify", "--function", "softplus", image], "softplus"),
                               (["classify", "--dtype", "int8", image], "int8"),
                               (["classify", "--threads", "0", image], "--threads"),
                               (["bench", "--dtype", "float64", "--iterations", "1"], "float64")] {
            let r = try run(args)
            XCTAssertNotEqual(r.status, 0, "\(args) succeeded")
            XCTAssertTrue(r.stderr.contains(needle), "\(args): \(r.stderr)")
        }

        // Without --model, CVT_DEFAULT_MODEL or the bundled model next to the binary or the
        // current folder: an error that says how to give one.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-alone-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let copy = dir.appendingPathComponent("cvt")
        try FileManager.default.copyItem(at: CLITests.executable, to: copy)
        let p = Process()
        p.executableURL = copy
        p.arguments = ["classify", image]
        p.currentDirectoryURL = dir
        p.environment = ProcessInfo.processInfo.environment.filter { $0.key != "CVT_DEFAULT_MODEL" }
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertNotEqual(p.terminationStatus, 0)
        XCTAssertTrue(message.contains("CVT_DEFAULT_MODEL") && message.contains("--model"), message)

        // A checkpoint folder without preprocessor_config.json: microsoft/cvt-13's settings, with a warning.
        let noProcessor = dir.appendingPathComponent("model")
        try FileManager.default.createDirectory(at: noProcessor, withIntermediateDirectories: true)
        for f in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(at: bundled.appendingPathComponent(f), to: noProcessor.appendingPathComponent(f))
        }
        let out = dir.appendingPathComponent("pixels.safetensors")
        let r = try run(["preprocess", "--model", noProcessor.path, "--output", out.path, image])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("preprocessor_config.json not found"), r.stderr)
        XCTAssertEqual(try SafetensorsFile(url: out).info("pixel_values")?.shape, [1, 3, 224, 224])
    }

    /// `cvt evaluate` on an image folder: its per-image predictions are the pipeline's top labels,
    /// and the accuracy is computed from them.
    func testEvaluateImageFolder() throws {
        let bundled = fixturesRoot.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("models/cvt-fashion-mnist")
        let config = try CvtConfig.decode(Data(contentsOf: bundled.appendingPathComponent("config.json")))
        let samples = try FileManager.default.contentsOfDirectory(atPath: bundled.appendingPathComponent("samples").path)
            .filter { $0.hasSuffix(".png") }.sorted()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-evaluate-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        var truth: [String: Int] = [:]
        for name in samples {
            let label = Int(name.prefix(2))!
            let folder = dir.appendingPathComponent(config.id2label[label]!.replacingOccurrences(of: "/", with: "_"))
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try FileManager.default.copyItem(at: bundled.appendingPathComponent("samples/\(name)"), to: folder.appendingPathComponent(name))
            truth[name] = label
        }
        let predictionsFile = dir.appendingPathComponent("predictions.json")
        let r = try run(["evaluate", "--data", dir.path, "--json", "--batch-size", "4", "--predictions", predictionsFile.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        XCTAssertEqual(report["count"] as? Int, samples.count)
        let predicted = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: predictionsFile)) as? [Int])
        XCTAssertEqual(predicted.count, samples.count)
        // The pipeline's top label for each image, in the order evaluate reads the folder (labels sorted).
        let pipeline = try ImageClassificationPipeline(model: bundled)
        let ordered = samples.sorted { (config.id2label[truth[$0]!]!.replacingOccurrences(of: "/", with: "_"), $0)
            < (config.id2label[truth[$1]!]!.replacingOccurrences(of: "/", with: "_"), $1) }
        let top = try pipeline(ordered.map { bundled.appendingPathComponent("samples/\($0)").path }, topK: 1).map { $0[0].label }
        XCTAssertEqual(predicted.map { config.id2label[$0]! }, top)
        let correct = zip(ordered, predicted).filter { truth[$0.0] == $0.1 }.count
        XCTAssertEqual(report["top1"] as? Double ?? -1, Double(correct) / Double(samples.count), accuracy: 1e-12)
    }

    func testErrorsGoToStderrWithNonZeroExit() throws {
        let dir = fixturesRoot.appendingPathComponent("parity/tiny")
        let missing = try run(["forward", "--model", "/nonexistent/model", "--input", dir.appendingPathComponent("input.safetensors").path,
                               "--output", "/tmp/x.safetensors"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("/nonexistent/model"), missing.stderr)
        let noPixels = try run(["forward", "--model", dir.path, "--input", dir.appendingPathComponent("expected.safetensors").path,
                                "--output", "/tmp/x.safetensors"])
        XCTAssertNotEqual(noPixels.status, 0)
        XCTAssertTrue(noPixels.stderr.contains("pixel_values"), noPixels.stderr)
    }

    func testBenchJSON() throws {
        let r = try run(["bench", "--model", fixturesRoot.appendingPathComponent("parity/tiny").path, "--image-size", "64",
                         "--batch-size", "2", "--iterations", "2", "--threads", "1", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        for key in ["median_ms", "images_per_second", "peak_rss_mb", "batch_size", "threads", "dtype", "thread_team"] {
            XCTAssertNotNil(obj[key], "missing \(key) in \(r.stdout)")
        }
        XCTAssertEqual(obj["batch_size"] as? Int, 2)
        XCTAssertTrue(["own", "openmp"].contains(obj["thread_team"] as? String ?? ""), r.stdout)
        // Which code paths oneDNN chose on this CPU (AMX on CPUs with it): reported, never guessed.
        XCTAssertEqual(obj["onednn_isa"] as? String, Engine.backendISA)
        XCTAssertNotNil(obj["onednn_implementations"] as? [String: [String]], r.stdout)
    }

    /// How OpenMP's threads wait: the environment's choice when it makes one, else the CLI's
    /// (a brief spin when nothing else is runnable at start, sleeping otherwise), as reported.
    func testOpenMPWaitPolicy() throws {
        let args = ["bench", "--model", fixturesRoot.appendingPathComponent("parity/tiny").path, "--image-size", "64",
                    "--iterations", "1", "--threads", "1", "--json"]
        func policy(_ env: [String: String]) throws -> String {
            let r = try runCvt(args, environment: env, unsetting: ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "CVT_OMP_WAIT_CHOSEN"].filter { env[$0] == nil })
            XCTAssertEqual(r.status, 0, r.stderr)
            let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            return try XCTUnwrap(obj["omp_wait_policy"] as? String, r.stdout)
        }
        XCTAssertEqual(try policy(["GOMP_SPINCOUNT": "77"]), "spin 77 (environment)")
        XCTAssertEqual(try policy(["OMP_WAIT_POLICY": "PASSIVE"]), "passive (environment)")
        XCTAssertTrue(["spin 5000 (cvt's choice)", "passive (cvt's choice)"].contains(try policy([:])))
    }

    /// `--profile` shares out the time of a split batch over its workers, and the layout and
    /// splitting switches are reported.
    func testBenchProfileAndSwitches() throws {
        let tiny = fixturesRoot.appendingPathComponent("parity/tiny").path
        // 9 images in parts of at most 4 (set: the default depends on the CPU): 3 parts, run by one
        // worker per thread.
        let r = try run(["bench", "--model", tiny, "--image-size", "64", "--batch-size", "9", "--iterations", "1",
                         "--images-per-part", "4", "--threads", "2", "--profile"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("batch split in 3 parts across 2 workers"), r.stdout)
        let shares = r.stdout.split(separator: "\n").compactMap { line -> Double? in
            guard let open = line.firstIndex(of: "("), let pct = line.range(of: "%)") else { return nil }
            return Double(line[line.index(after: open)..<pct.lowerBound].trimmingCharacters(in: .whitespaces))
        }
        XCTAssertFalse(shares.isEmpty, r.stdout)
        for s in shares { XCTAssertTrue((0...100).contains(s), "share \(s)% in\n\(r.stdout)") }
        let plain = try run(["bench", "--model", tiny, "--image-size", "64", "--batch-size", "2", "--iterations", "1",
                             "--plain-weights", "--no-batch-split", "--json"])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(plain.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(obj["weights_layout"] as? String, "plain")
        XCTAssertEqual(obj["batch_split"] as? Bool, false)
        // The kernel switches, and what ran.
        let switched = try run(["bench", "--model", tiny, "--image-size", "64", "--batch-size", "3", "--iterations", "1",
                                "--linear-kernel", "onednn", "--no-fused-attention", "--images-per-part", "1", "--json"])
        XCTAssertEqual(switched.status, 0, switched.stderr)
        let s = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(switched.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(s["linear_kernel"] as? String, "onednn")
        XCTAssertEqual(s["fused_attention"] as? Bool, false)
        XCTAssertEqual(s["images_per_part"] as? Int, 1)
        let bad = try run(["bench", "--model", tiny, "--linear-kernel", "cuda"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--linear-kernel"), bad.stderr)
    }

    func testBenchDTypesReportWeightMemory() throws {
        var weights: [String: Double] = [:]
        for dtype in ["float32", "float16", "bfloat16"] {
            let r = try run(["bench", "--model", fixturesRoot.appendingPathComponent("parity/tiny").path, "--image-size", "64",
                             "--iterations", "1", "--threads", "1", "--dtype", dtype, "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            XCTAssertEqual(obj["dtype"] as? String, dtype)
            weights[dtype] = try XCTUnwrap(obj["weights_mb"] as? Double, r.stdout)
            // bfloat16 says when it runs emulated (no avx512_bf16 / AMX kernels on this CPU).
            let emulated = dtype == "bfloat16" && !Engine.hasNativeBFloat16
            XCTAssertEqual(obj["matmul_kernels"] as? String, dtype == "bfloat16" ? (emulated ? "bfloat16-emulated" : "bfloat16") : "float32")
            XCTAssertEqual(r.stderr.contains("bfloat16 runs emulated"), emulated, r.stderr)
        }
        let f32 = try XCTUnwrap(weights["float32"])
        XCTAssertLessThan(try XCTUnwrap(weights["float16"]), f32 * 0.6)
        XCTAssertEqual(weights["float16"], weights["bfloat16"])
        let bad = try run(["bench", "--dtype", "int8"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("float16"), bad.stderr)
    }

    /// A model that exists only in a Hugging Face cache (as Python leaves it) loads by Hub id, offline.
    func testHubIdFromTheCacheOffline() throws {
        let fm = FileManager.default
        let cache = fm.temporaryDirectory.appendingPathComponent("cvt-hf-cache-\(UUID().uuidString)")
        defer { try? fm.removeItem(at: cache) }
        let commit = String(repeating: "ab", count: 20)
        let repo = cache.appendingPathComponent("models--acme--tiny-cvt")
        let snapshot = repo.appendingPathComponent("snapshots/\(commit)")
        let blobs = repo.appendingPathComponent("blobs")
        try fm.createDirectory(at: snapshot, withIntermediateDirectories: true)
        try fm.createDirectory(at: blobs, withIntermediateDirectories: true)
        try fm.createDirectory(at: repo.appendingPathComponent("refs"), withIntermediateDirectories: true)
        try Data(commit.utf8).write(to: repo.appendingPathComponent("refs/main"))
        let source = fixturesRoot.appendingPathComponent("parity/tiny")
        for (i, file) in ["config.json", "model.safetensors"].enumerated() {
            // huggingface_hub's layout: snapshot entries are relative symlinks into blobs/.
            let blob = blobs.appendingPathComponent("blob\(i)")
            try fm.copyItem(at: source.appendingPathComponent(file), to: blob)
            try fm.createSymbolicLink(atPath: snapshot.appendingPathComponent(file).path, withDestinationPath: "../../blobs/blob\(i)")
        }
        let output = fm.temporaryDirectory.appendingPathComponent("cvt-hub-\(UUID().uuidString).safetensors")
        defer { try? fm.removeItem(at: output) }
        let env = ["HF_HUB_CACHE": cache.path, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"]
        let r = try run(["forward", "--model", "acme/tiny-cvt", "--input", source.appendingPathComponent("input.safetensors").path,
                         "--output", output.path], environment: env)
        XCTAssertEqual(r.status, 0, r.stderr)
        let expected = try SafetensorsFile(url: source.appendingPathComponent("expected.safetensors"))
        assertTensorClose("logits via HF cache", try SafetensorsFile(url: output).tensor("logits"), try expected.tensor("logits"), tol: 1e-4)
        let missing = try run(["forward", "--model", "acme/not-there", "--input", source.appendingPathComponent("input.safetensors").path,
                               "--output", output.path], environment: env)
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("acme/not-there"), missing.stderr)
    }

    func testClassifyJSONAndExitCode() throws {
        let model = fixturesRoot.appendingPathComponent("pipeline/single_label").path
        let images = fixturesRoot.appendingPathComponent("images")
        let good = images.appendingPathComponent("rocket.jpg").path, bad = images.appendingPathComponent("not_an_image.jpg").path
        let r = try run(["classify", "--model", model, good, bad, "--json", "--top-k", "2"])
        XCTAssertNotEqual(r.status, 0, "a failed image makes the exit code non-zero")
        let array = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
        XCTAssertEqual(array.count, 2)
        XCTAssertEqual(array[0]["image"] as? String, good)
        XCTAssertEqual((array[0]["predictions"] as? [[String: Any]])?.count, 2)
        XCTAssertEqual(array[1]["image"] as? String, bad)
        XCTAssertNotNil(array[1]["error"])
        let ok = try run(["classify", "--model", model, good])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("rocket"), ok.stdout)
    }

    func testPreprocessMatchesTransformersPixels() throws {
        let model = fixturesRoot.appendingPathComponent("pipeline/single_label").path
        let image = fixturesRoot.appendingPathComponent("images/coffee.png").path
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-pre-\(UUID().uuidString).safetensors")
        defer { try? FileManager.default.removeItem(at: output) }
        let r = try run(["preprocess", "--model", model, image, image, "--output", output.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let pixels = try SafetensorsFile(url: output).tensor("pixel_values")
        XCTAssertEqual(pixels.shape, [2, 3, 64, 64])
    }
}

/// Runs the built `cvt` executable with `args`.
func runCvt(_ args: [String], environment: [String: String]? = nil, unsetting: [String] = []) throws -> (status: Int32, stdout: String, stderr: String) {
    let exe = CLITests.executable
    guard FileManager.default.isExecutableFile(atPath: exe.path) else {
        struct MissingExecutable: Error, CustomStringConvertible { let description: String }
        throw MissingExecutable(description: "the cvt executable is not at \(exe.path); `swift test` builds it")
    }
    let p = Process()
    p.executableURL = exe
    p.arguments = args
    if environment != nil || !unsetting.isEmpty {
        var env = ProcessInfo.processInfo.environment.merging(environment ?? [:]) { $1 }
        for name in unsetting { env[name] = nil }
        p.environment = env
    }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out; p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}
