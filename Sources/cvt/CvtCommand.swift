import ArgumentParser
import CheckpointSupport
import CvtKit
import Foundation
// C's `stdout` (flushed and checked for write errors below) is a global that Swift 6 cannot prove
// safe; the CLI touches it only from its main thread.
@preconcurrency import SwiftGlibc

@main
enum Entry {
    static func main() {
        useSleepingOpenMPThreads()
        // Diagnostics (used by the tests' memory bounds): the peak RSS of this process, written
        // at exit. A parent's wait4/getrusage cannot tell it, as Linux carries the parent's peak
        // over a vfork + exec into the child's.
        if getenv("CVT_PEAK_RSS_FILE") != nil {
            atexit {
                guard let path = getenv("CVT_PEAK_RSS_FILE") else { return }
                try? Data("\(peakRSSMegabytes())\n".utf8).write(to: URL(fileURLWithPath: String(cString: path)))
            }
        }
        // `--resume-from-checkpoint` may come without a value (the newest checkpoint), as in
        // transformers' scripts; the argument parser needs one.
        var args = Array(CommandLine.arguments.dropFirst())
        if let i = args.firstIndex(of: "--resume-from-checkpoint"), i + 1 == args.count || args[i + 1].hasPrefix("--") {
            args.insert("last", at: i + 1)
        }
        run(args)
    }

    /// `Cvt.main`, with the error and help text written in one `write` (ArgumentParser writes
    /// stderr a byte at a time: a 10 MB message took 20 s), control characters escaped and the
    /// length bounded; and results that could not be written to stdout (a full disk, a closed
    /// descriptor) are an error, not exit 0.
    static func run(_ args: [String]) {
        do {
            var command = try Cvt.parseAsRoot(args)
            try command.run()
        } catch {
            let code = Cvt.exitCode(for: error)
            let text = Cvt.fullMessage(for: error)
            if code == .success {
                writeAll(STDOUT_FILENO, text.isEmpty ? "" : text + "\n")
                flushStdoutOrFail()
                exit(code.rawValue)
            }
            fflush(stdout)
            if !text.isEmpty { writeAll(STDERR_FILENO, terminalSafe(text.hasPrefix("Error: ") || text.hasPrefix("error: ") ? text : "Error: " + text) + "\n") }
            exit(code.rawValue)
        }
        flushStdoutOrFail()
    }

    static func flushStdoutOrFail() {
        if fflush(stdout) != 0 || ferror(stdout) != 0 {
            let reason = String(cString: strerror(errno))
            writeAll(STDERR_FILENO, "Error: cannot write to standard output: \(reason)\n")
            exit(1)
        }
    }

    /// Longest message printed: the start and the end of anything longer are kept.
    static let maxMessageBytes = 16 << 10

    /// Control characters (other than newline and tab) escaped, at most `maxMessageBytes`.
    static func terminalSafe(_ text: String) -> String {
        let out = escapedForMessage(text, limit: .max, quoting: false, keeping: ["\n", "\t"])
        let bytes = Array(out.utf8)
        guard bytes.count > maxMessageBytes else { return out }
        let half = maxMessageBytes / 2
        return String(decoding: bytes.prefix(half), as: UTF8.self) + "\n… (\(bytes.count - maxMessageBytes) bytes left out) …\n"
            + String(decoding: bytes.suffix(half), as: UTF8.self)
    }

    /// Writes all of `text` with as few `write` calls as the descriptor allows.
    static func writeAll(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            bytes = bytes.dropFirst(n)
        }
    }

    /// How long idle OpenMP threads spin before they sleep. libgomp reads its wait policy only
    /// when it loads, so the CLI re-executes itself once with the policy set, unless the user chose
    /// one (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`). Both extremes lose:
    /// - sleeping at once (`passive`) makes every parallel region wake its threads with a futex
    ///   call, and on a VM an idle vCPU takes tens of microseconds to wake: a pass has hundreds of
    ///   regions, a training step thousands;
    /// - libgomp's default (300,000 spins, milliseconds) or `active` lets a thread spin while the
    ///   one it waits for is descheduled: when anything else runs on the machine, a pass becomes
    ///   many times slower.
    /// So threads spin briefly (`spinCount` pause loops, tens of microseconds: long enough for the
    /// back-to-back regions of a pass, short enough to cost little when a core is taken) when the
    /// machine has no other runnable task at start, and sleep at once otherwise. This concerns
    /// oneDNN's threads: on AVX-512 CPUs the matmuls and the kernels' team are OpenMP's. On other
    /// CPUs a pass runs no oneDNN primitive and our team (team.c) spins briefly, yielding.
    static func useSleepingOpenMPThreads() {
        let env = ProcessInfo.processInfo.environment
        guard env["OMP_WAIT_POLICY"] == nil, env["GOMP_SPINCOUNT"] == nil else { return }
        if othersRunnable() == 0 {
            setenv("GOMP_SPINCOUNT", "\(spinCount)", 1)
        } else {
            setenv("OMP_WAIT_POLICY", "passive", 1)
        }
        setenv("CVT_OMP_WAIT_CHOSEN", "1", 1)
        var argv: [UnsafeMutablePointer<CChar>?] = CommandLine.arguments.map { strdup($0) }
        argv.append(nil)
        execv("/proc/self/exe", &argv)
        // execv only returns on failure: carry on with the default policy.
    }

    /// Pause loops an idle OpenMP thread spins before sleeping, when the machine is otherwise idle.
    static let spinCount = 5000

    /// Tasks other than this one that the kernel counts as runnable (`procs_running` in
    /// /proc/stat): zero as soon as one sample shows none, else the least of samples 2 ms apart
    /// over 20 ms (another process's thread pools, PyTorch's or ONNX Runtime's, spin for a few
    /// milliseconds after their last work: that is not a busy machine). nil where it cannot be read.
    static func othersRunnable() -> Int? {
        var least: Int?
        for i in 0..<11 {
            if i > 0 { usleep(2000) }
            guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
                  let line = text.split(separator: "\n").first(where: { $0.hasPrefix("procs_running ") }),
                  let n = Int(line.dropFirst("procs_running ".count).trimmingCharacters(in: .whitespaces)) else { return least }
            least = min(least ?? n, max(0, n - 1))
            if least == 0 { return 0 }
        }
        return least
    }

    /// The OpenMP wait policy this process runs with, as `cvt bench --json` reports it.
    static var openMPWaitPolicy: String {
        let env = ProcessInfo.processInfo.environment
        let chosen = env["CVT_OMP_WAIT_CHOSEN"] != nil ? "cvt's choice" : "environment"
        if let policy = env["OMP_WAIT_POLICY"] { return "\(policy.lowercased()) (\(chosen))" }
        if let spins = env["GOMP_SPINCOUNT"] { return "spin \(spins) (\(chosen))" }
        return "libgomp default"
    }
}

struct Cvt: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cvt",
        abstract: "Run CvT (Convolutional vision Transformer) image classifiers, with transformers' numbers.",
        version: swiftCvtVersion,
        subcommands: [Classify.self, Preprocess.self, Evaluate.self, Forward.self, Gradients.self, Train.self, Convert.self, Serve.self, Bench.self, BenchPreprocess.self])
}

struct ThreadOptions: ParsableArguments {
    @Option(help: "Compute threads (default: all cores).")
    var threads: Int?

    /// More threads than this only add stacks and contention (libgomp fails at 100,000).
    static let maxThreads = 1024

    func engine() throws -> Engine {
        let e = try Engine.shared()
        if let threads {
            guard (1...Self.maxThreads).contains(threads) else {
                throw ValidationError("--threads must be between 1 and \(Self.maxThreads), got \(threads)")
            }
            e.threads = threads
        }
        return e
    }
}

struct Forward: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a checkpoint on pixel_values from a safetensors file and write every output.",
        discussion: """
        IN holds float32 `pixel_values` [B,C,H,W] and optionally `labels` (int64 [B] for classes, float32 \
        [B] or [B,num_labels] for regression / multi-label). OUT receives `logits`, `last_hidden_state`, \
        `cls_token_value` (when the last stage has a CLS token), `hidden_states.0`… with --hidden-states, \
        and `loss` [1] when labels were given, in transformers' shapes and layouts.
        """)

    @Option(help: "Checkpoint folder or Hub id (org/name[@revision], from the HF cache or downloaded).") var model: String
    @Option(help: "Input safetensors file.") var input: String
    @Option(help: "Output safetensors file.") var output: String
    @Flag(help: "Also write the per-stage hidden states.") var hiddenStates = false
    @OptionGroup var threadOptions: ThreadOptions

    func run() throws {
        let engine = try threadOptions.engine()
        let classifier = try CvtForImageClassification(pretrained: model, engine: engine, progress: TerminalProgressBar()?.callback)
        let inputFile = try SafetensorsFile(url: URL(fileURLWithPath: input))
        guard let info = inputFile.info("pixel_values") else {
            throw CheckpointError(path: input, "has no tensor named `pixel_values`")
        }
        guard info.dtype.isFloatingPoint else {
            throw CheckpointError(path: input, "`pixel_values` is \(info.dtype.rawValue); expected a float tensor")
        }
        var labels: Labels?
        if let l = inputFile.info("labels") {
            switch l.dtype {
            case .i64, .i32, .i16, .i8, .u8: labels = .classIndices(try inputFile.int64s("labels").map { Int($0) })
            case .f32, .f16, .bf16, .f64: labels = .values(try inputFile.tensor("labels"))
            case .bool: throw CheckpointError(path: input, "`labels` is BOOL; expected int64 or float32")
            }
        }
        let out = try classifier(inputFile.tensor("pixel_values"), labels: labels, outputHiddenStates: hiddenStates)
        var writer = SafetensorsWriter(metadata: ["format": "pt"])
        try writer.add("logits", out.logits)
        try writer.add("last_hidden_state", out.lastHiddenState)
        if let cls = out.clsTokenValue { try writer.add("cls_token_value", cls) }
        for (i, h) in (out.hiddenStates ?? []).enumerated() { try writer.add("hidden_states.\(i)", h) }
        if let loss = out.loss { try writer.add("loss", loss) }
        try writer.write(to: URL(fileURLWithPath: output))
    }
}

/// `cvt bench`'s main options, a help group of their own so that they print before the comparison switches.
struct BenchOptions: ParsableArguments {
    @Option(help: "Preset: \(CvtConfig.presetNames.joined(separator: ", ")).") var preset = "cvt-13"
    @Option(help: "Checkpoint folder to time instead of a random-init preset.") var model: String?
    @Option(help: "Images per forward pass.") var batchSize = 1
    @Option(help: "Input height and width.") var imageSize = 224
    @Option(help: "float32, bfloat16 (bf16 matmuls with float32 accumulation, bf16 weights) or float16 (float16-stored weights, float32 arithmetic).")
    var dtype: InferenceDType = .float32
    @Option(help: "Timed iterations (after 2 warm-up passes).") var iterations = 10
    @Option(name: .customLong("mode"), help: "inference (forward passes) or train (optimizer steps: forward, loss, backward, clipping, AdamW).")
    var runMode: BenchMode = .inference
    @Flag(help: "Print one JSON object.") var json = false
    @Flag(help: "Also print the time spent in each backend operation kind.") var profile = false
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time forward passes (or, with --mode train, training steps) of a CvT model on random input (random-init preset or a checkpoint).")

    @OptionGroup(title: "What to time") var options: BenchOptions
    var preset: String { options.preset }
    var model: String? { options.model }
    var batchSize: Int { options.batchSize }
    var imageSize: Int { options.imageSize }
    var dtype: InferenceDType { options.dtype }
    var iterations: Int { options.iterations }
    var runMode: BenchMode { options.runMode }
    var json: Bool { options.json }
    var profile: Bool { options.profile }
    @OptionGroup(title: "Comparison switches (change what runs, to compare code paths)") var comparison: ComparisonOptions
    @OptionGroup var threadOptions: ThreadOptions

    func run() throws {
        let mode = dtype
        guard batchSize > 0, imageSize > 0, iterations > 0 else {
            throw ValidationError("--batch-size, --image-size and --iterations must be positive")
        }
        guard batchSize <= maxBatchSize else { throw ValidationError("--batch-size must be at most \(maxBatchSize), got \(batchSize)") }
        guard imageSize <= PreprocessorConfig.maxEdge else {
            throw ValidationError("--image-size must be at most \(PreprocessorConfig.maxEdge), got \(imageSize)")
        }
        let engine = try threadOptions.engine()
        if runMode == .train {
            guard dtype != .float16 else { throw ValidationError("--mode train runs float32 or bfloat16") }
            return try runTrain(engine, precision: dtype.precision)
        }
        engine.packsWeights = !comparison.plainWeights
        engine.splitsBatches = !comparison.noBatchSplit
        engine.allowsFusedAttention = !comparison.noFusedAttention
        if let imagesPerPart = comparison.imagesPerPart {
            guard imagesPerPart >= 0 else { throw ValidationError("--images-per-part must be >= 0, got \(imagesPerPart)") }
            engine.imagesPerPart = imagesPerPart
        }
        if let linearKernel = comparison.linearKernel {
            guard linearKernel.kernel.isSupported else { throw ValidationError("--linear-kernel avx2 needs a CPU with AVX2 and FMA") }
            engine.linearKernel = linearKernel.kernel
        }
        if let depthwiseKernel = comparison.depthwiseKernel {
            guard depthwiseKernel.kernel.isSupported else { throw ValidationError("--depthwise-kernel avx2 needs a CPU with AVX2 and FMA") }
            engine.depthwiseKernel = depthwiseKernel.kernel
        }
        let classifier: CvtForImageClassification
        if let model {
            classifier = try CvtForImageClassification(pretrained: model, engine: engine, dtype: mode, progress: TerminalProgressBar()?.callback)
        } else {
            guard let config = CvtConfig.preset(named: preset) else {
                throw ValidationError("unknown preset \(preset); use one of \(CvtConfig.presetNames.joined(separator: ", "))")
            }
            classifier = try .randomlyInitialized(config: config, seed: 0, engine: engine, weightStorage: mode.weightStorage)
        }
        try checkInput(classifier.config)
        try mode.apply(to: classifier)
        if mode == .bfloat16, !Engine.hasNativeBFloat16 { FileHandle.standardError.write(Data("warning: \(InferenceDType.bfloat16EmulationNote)\n".utf8)) }
        var rng = SplitMix64(seed: 1)
        let shape = [batchSize, classifier.config.numChannels, imageSize, imageSize]
        let pixels = Tensor(shape: shape) { _ in rng.nextGaussian() }
        // What `cvt classify` runs (`logits`), or with --full-output everything `CvtForImageClassification` returns.
        let forward = { comparison.fullOutput ? try classifier(pixels).logits : try classifier.logits(pixels) }
        for _ in 0..<2 { _ = try forward() }
        // After the warm-up: the first pass packs the matmul weights (blocked layouts may pad them).
        let weightsMB = Double(classifier.parameterBytes) / 1_048_576
        var times: [Double] = []
        engine.profile = profile
        for _ in 0..<iterations {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try forward()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
        }
        times.sort()
        let median = times.count % 2 == 1 ? times[times.count / 2] : (times[times.count / 2 - 1] + times[times.count / 2]) / 2
        let ips = Double(batchSize) / (median / 1000)
        let rss = peakRSSMegabytes()
        if profile {
            // Split batches run on `parts` single-threaded workers whose times add up: compare them
            // with `parts` × the wall time.
            // One worker thread per thread, each running its parts in turn.
            let parts = engine.batchParts(batchSize), workers = min(parts, engine.threads)
            if workers > 1 { print("  (batch split in \(parts) parts across \(workers) workers: times are summed over them, percentages of \(workers) × wall time)") }
            let total = times.reduce(0, +) * Double(workers)
            for (op, ms) in engine.profileTimes.sorted(by: { $0.value > $1.value }) {
                print(String(format: "  %-12@ %8.2f ms/iteration (%4.1f%%)", op, ms / Double(iterations), 100 * ms / total))
            }
            let backend = engine.profileTimes.values.reduce(0, +)
            print(String(format: "  %-12@ %8.2f ms/iteration (%4.1f%%)", "other", (total - backend) / Double(iterations), 100 * (total - backend) / total))
            print("  slowest backend calls (summed over all layers):")
            for (op, ms) in engine.profileDetail.sorted(by: { $0.value > $1.value }).prefix(25) {
                print(String(format: "    %8.2f ms/iteration (%4.1f%%)  %@", ms / Double(iterations), 100 * ms / total, op))
            }
        }
        let name = model ?? preset
        if json {
            let obj: [String: Any] = [
                "model": name, "batch_size": batchSize, "image_size": imageSize, "dtype": dtype.rawValue,
                "threads": engine.threads, "iterations": iterations, "median_ms": median,
                "min_ms": times.first ?? 0, "max_ms": times.last ?? 0,
                "median_ms_per_image": median / Double(batchSize), "images_per_second": ips, "peak_rss_mb": rss,
                "weights_mb": weightsMB, "weights_layout": comparison.plainWeights ? "plain" : "packed", "batch_split": !comparison.noBatchSplit, "images_per_part": engine.imagesPerPart,
                "linear_kernel": engine.linearKernel.rawValue, "depthwise_kernel": engine.depthwiseKernel.rawValue,
                // The code paths oneDNN chose on this CPU (AMX tiles where the CPU has them).
                "onednn_isa": Engine.backendISA,
                "onednn_implementations": engine.backendImplementations.mapValues { $0.sorted() },
                "fused_attention": engine.fusesAttention, "thread_team": engine.threadTeam,
                "omp_wait_policy": Entry.openMPWaitPolicy,
                "output": comparison.fullOutput ? "full" : "logits",
                // What the matmul kernels really run: bfloat16 may be emulated in float32 kernels.
                "matmul_kernels": mode.precision == .float32 ? "float32" : Engine.hasNativeBFloat16 ? "bfloat16" : "bfloat16-emulated",
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(String(format: "%@ batch %d, %dx%d, %@, %d threads: median %.2f ms/batch (%.2f ms/image, min %.2f, max %.2f), %.1f images/s, peak RSS %.0f MB, weights %.1f MB",
                         name, batchSize, imageSize, imageSize, dtype.rawValue, engine.threads, median, median / Double(batchSize),
                         times.first ?? 0, times.last ?? 0, ips, rss, weightsMB))
        }
    }
}

extension Bench {
    /// The input batch and one image's largest buffer within bounds, before anything is allocated.
    func checkInput(_ config: CvtConfig) throws {
        let (perImage, o1) = config.numChannels.multipliedReportingOverflow(by: imageSize * imageSize)
        let (total, o2) = perImage.multipliedReportingOverflow(by: batchSize)
        guard !o1, !o2, total <= CvtConfig.maxActivation else {
            throw ValidationError("--batch-size \(batchSize) × --image-size \(imageSize)² is more than \(CvtConfig.maxActivation) input values")
        }
        do { try config.checkInputSize(height: imageSize, width: imageSize, what: "--image-size") } catch let e as CvtConfigError {
            throw ValidationError(e.description)
        }
    }
}

/// The largest `--batch-size` any command accepts.
let maxBatchSize = 65536

/// Peak resident set size of this process (VmHWM), in MB.
func peakRSSMegabytes() -> Double {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.split(separator: " ").compactMap { Double($0) }.first ?? 0
        return kb / 1024
    }
    return 0
}

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert any supported checkpoint to config.json + model.safetensors (+ preprocessor_config.json), loadable by transformers.")

    @Option(help: "Source checkpoint folder or Hub id (model.safetensors, pytorch_model.bin or tf_model.h5).") var model: String
    @Option(help: "Output folder.") var output: String
    @Option(help: "Stored weight dtype: float32, float16 or bfloat16.") var dtype = "float32"
    @Flag(help: "Replace the model files of an existing output folder (the folder is swapped in one step; its other files are kept).")
    var overwrite = false

    func run() throws {
        let stored: SafetensorsDType
        switch dtype {
        case "float32": stored = .f32
        case "float16": stored = .f16
        case "bfloat16": stored = .bf16
        default: throw ValidationError("--dtype must be float32, float16 or bfloat16, got \(dtype)")
        }
        let source = try ModelResolver.resolve(model, progress: TerminalProgressBar()?.callback)
        let classifier = try CvtForImageClassification(pretrained: source)
        // Everything is written into a staging folder, then swapped in: the output (which may be
        // the source itself) is never left with new config and old weights.
        let folder = try StagedFolder(destination: URL(fileURLWithPath: output), overwrite: overwrite,
                                      writes: ["config.json", "model.safetensors", "preprocessor_config.json"])
        do {
            try classifier.savePretrained(to: folder.staging, dtype: stored)
            let preprocessor = CheckpointFolder(source).preprocessorURL
            if FileManager.default.fileExists(atPath: preprocessor.path) {
                try Data(contentsOf: preprocessor).write(to: folder.staging.appendingPathComponent("preprocessor_config.json"))
            }
            try folder.commit()
        } catch {
            folder.discard()
            throw error
        }
    }
}

/// `cvt bench` switches that change which code paths run, to compare them (not needed to time a model).
struct ComparisonOptions: ParsableArguments {
    @Flag(help: "Keep matmul weights in their plain layout instead of oneDNN's blocked one (for comparison).")
    var plainWeights = false
    @Flag(help: "Run every operation on all threads instead of splitting the batch across them (for comparison).")
    var noBatchSplit = false
    @Option(help: "Kernels for the Linear layers' float32 matmuls: avx2 is our GEMM (default on CPUs without AVX-512).")
    var linearKernel: KernelChoice?
    @Option(help: "Kernel for the depthwise Q/K/V convolutions: avx2 is ours (default on CPUs with AVX2 and FMA), onednn for comparison.")
    var depthwiseKernel: KernelChoice?
    @Option(help: "Images per part when a batch is split across the threads (0: one part per thread).")
    var imagesPerPart: Int?
    @Flag(help: "Run attention as oneDNN matmuls and softmax even where the fused AVX2 kernel runs (for comparison).")
    var noFusedAttention = false
    @Flag(help: "Time the full forward pass (last hidden state included) instead of the logits only, which skip the last layer's work on tokens other than the CLS (for comparison).")
    var fullOutput = false
}
