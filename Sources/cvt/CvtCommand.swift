import ArgumentParser
import CvtKit
import Foundation

@main
enum Entry {
    static func main() {
        useSleepingOpenMPThreads()
        // `--resume-from-checkpoint` may come without a value (the newest checkpoint), as in
        // transformers' scripts; the argument parser needs one.
        var args = Array(CommandLine.arguments.dropFirst())
        if let i = args.firstIndex(of: "--resume-from-checkpoint"), i + 1 == args.count || args[i + 1].hasPrefix("--") {
            args.insert("last", at: i + 1)
        }
        Cvt.main(args)
    }

    /// libgomp's default wait policy spins between parallel regions; when anything else runs on
    /// the machine a spinning thread waits for a descheduled one and a forward pass becomes many
    /// times slower. libgomp reads the policy only when it loads, so the CLI re-executes
    /// itself once with OMP_WAIT_POLICY=passive unless the user chose a policy. (This concerns
    /// oneDNN's threads: on AVX-512 CPUs the matmuls and the kernels' team are OpenMP's. On other
    /// CPUs a pass runs no oneDNN primitive and our team, team.c, spins only briefly, yielding.)
    static func useSleepingOpenMPThreads() {
        let env = ProcessInfo.processInfo.environment
        guard env["OMP_WAIT_POLICY"] == nil, env["GOMP_SPINCOUNT"] == nil else { return }
        setenv("OMP_WAIT_POLICY", "passive", 1)
        var argv: [UnsafeMutablePointer<CChar>?] = CommandLine.arguments.map { strdup($0) }
        argv.append(nil)
        execv("/proc/self/exe", &argv)
        // execv only returns on failure: carry on with the default policy.
    }
}

struct Cvt: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cvt",
        abstract: "Run CvT (Convolutional vision Transformer) image classifiers, with transformers' numbers.",
        subcommands: [Classify.self, Preprocess.self, Evaluate.self, Forward.self, Gradients.self, Train.self, Convert.self, Serve.self, Bench.self, BenchPreprocess.self])
}

struct ThreadOptions: ParsableArguments {
    @Option(help: "Compute threads (default: all cores).")
    var threads: Int?

    func engine() throws -> Engine {
        let e = try Engine.shared()
        if let threads {
            guard threads > 0 else { throw ValidationError("--threads must be positive, got \(threads)") }
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

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time forward passes (or, with --mode train, training steps) of a CvT model on random input (random-init preset or a checkpoint).")

    @Option(help: "Preset: \(CvtConfig.presetNames.joined(separator: ", ")).") var preset = "cvt-13"
    @Option(help: "Checkpoint folder to time instead of a random-init preset.") var model: String?
    @Option(help: "Images per forward pass.") var batchSize = 1
    @Option(help: "Input height and width.") var imageSize = 224
    @Option(help: "float32, bfloat16 (bf16 matmuls with float32 accumulation, bf16 weights) or float16 (float16-stored weights, float32 arithmetic).")
    var dtype = "float32"
    @Option(help: "Timed iterations (after 2 warm-up passes).") var iterations = 10
    @Option(name: .customLong("mode"), help: "inference (forward passes) or train (optimizer steps: forward, loss, backward, clipping, AdamW).")
    var runMode = "inference"
    @Flag(help: "Print one JSON object.") var json = false
    @Flag(help: "Also print the time spent in each backend operation kind.") var profile = false
    @Flag(help: "Keep matmul weights in their plain layout instead of oneDNN's blocked one (for comparison).")
    var plainWeights = false
    @Flag(help: "Run every operation on all threads instead of splitting the batch across them (for comparison).")
    var noBatchSplit = false
    @Option(help: "Kernels for the Linear layers' float32 matmuls: onednn or avx2 (our GEMM; default on CPUs without AVX-512).")
    var linearKernel: String?
    @Option(help: "Kernel for the depthwise Q/K/V convolutions: avx2 (ours, default on CPUs with AVX2 and FMA) or onednn (for comparison).")
    var depthwiseKernel: String?
    @Option(help: "Images per part when a batch is split across the threads (0: one part per thread).")
    var imagesPerPart: Int?
    @Flag(help: "Run attention as oneDNN matmuls and softmax even where the fused AVX2 kernel runs (for comparison).")
    var noFusedAttention = false
    @Flag(help: "Time the full forward pass (last hidden state included) instead of the logits only, which skip the last layer's work on tokens other than the CLS (for comparison).")
    var fullOutput = false
    @OptionGroup var threadOptions: ThreadOptions

    func run() throws {
        guard let mode = InferenceDType(rawValue: dtype) else {
            throw ValidationError("--dtype must be one of \(InferenceDType.names), got \(dtype)")
        }
        guard batchSize > 0, imageSize > 0, iterations > 0 else {
            throw ValidationError("--batch-size, --image-size and --iterations must be positive")
        }
        let engine = try threadOptions.engine()
        if runMode == "train" {
            guard dtype != "float16" else { throw ValidationError("--mode train runs float32 or bfloat16") }
            return try runTrain(engine, precision: dtype == "bfloat16" ? .bfloat16 : .float32)
        }
        guard runMode == "inference" else { throw ValidationError("--mode must be inference or train, got \(runMode)") }
        engine.packsWeights = !plainWeights
        engine.splitsBatches = !noBatchSplit
        engine.allowsFusedAttention = !noFusedAttention
        if let imagesPerPart {
            guard imagesPerPart >= 0 else { throw ValidationError("--images-per-part must be >= 0, got \(imagesPerPart)") }
            engine.imagesPerPart = imagesPerPart
        }
        if let linearKernel {
            guard let k = LinearKernel(rawValue: linearKernel), k.isSupported else {
                throw ValidationError("--linear-kernel must be onednn or avx2 (on a CPU with AVX2 and FMA), got \(linearKernel)")
            }
            engine.linearKernel = k
        }
        if let depthwiseKernel {
            guard let k = LinearKernel(rawValue: depthwiseKernel), k.isSupported else {
                throw ValidationError("--depthwise-kernel must be onednn or avx2 (on a CPU with AVX2 and FMA), got \(depthwiseKernel)")
            }
            engine.depthwiseKernel = k
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
        try mode.apply(to: classifier)
        if engine.emulatesBFloat16 { FileHandle.standardError.write(Data("warning: \(InferenceDType.bfloat16EmulationNote)\n".utf8)) }
        var rng = SplitMix64(seed: 1)
        let shape = [batchSize, classifier.config.numChannels, imageSize, imageSize]
        let pixels = Tensor(shape: shape) { _ in rng.nextGaussian() }
        // What `cvt classify` runs (`logits`), or with --full-output everything `CvtForImageClassification` returns.
        let forward = { fullOutput ? try classifier(pixels).logits : try classifier.logits(pixels) }
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
                "model": name, "batch_size": batchSize, "image_size": imageSize, "dtype": dtype,
                "threads": engine.threads, "iterations": iterations, "median_ms": median,
                "min_ms": times.first ?? 0, "max_ms": times.last ?? 0,
                "median_ms_per_image": median / Double(batchSize), "images_per_second": ips, "peak_rss_mb": rss,
                "weights_mb": weightsMB, "weights_layout": plainWeights ? "plain" : "packed", "batch_split": !noBatchSplit, "images_per_part": engine.imagesPerPart,
                "linear_kernel": engine.linearKernel.rawValue, "depthwise_kernel": engine.depthwiseKernel.rawValue,
                "fused_attention": engine.fusesAttention, "thread_team": engine.threadTeam,
                "output": fullOutput ? "full" : "logits",
                // What the matmul kernels really run: bfloat16 may be emulated in float32 kernels.
                "matmul_kernels": engine.precision == .float32 ? "float32" : engine.emulatesBFloat16 ? "bfloat16-emulated" : "bfloat16",
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(String(format: "%@ batch %d, %dx%d, %@, %d threads: median %.2f ms/batch (%.2f ms/image, min %.2f, max %.2f), %.1f images/s, peak RSS %.0f MB, weights %.1f MB",
                         name, batchSize, imageSize, imageSize, dtype, engine.threads, median, median / Double(batchSize),
                         times.first ?? 0, times.last ?? 0, ips, rss, weightsMB))
        }
    }
}

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

    @Option(help: "Source checkpoint folder or Hub id (safetensors or pytorch_model.bin).") var model: String
    @Option(help: "Output folder.") var output: String
    @Option(help: "Stored weight dtype: float32, float16 or bfloat16.") var dtype = "float32"

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
        let out = URL(fileURLWithPath: output)
        try classifier.savePretrained(to: out, dtype: stored)
        let preprocessor = CheckpointFolder(source).preprocessorURL
        if FileManager.default.fileExists(atPath: preprocessor.path) {
            let target = out.appendingPathComponent("preprocessor_config.json")
            try? FileManager.default.removeItem(at: target)
            try FileManager.default.copyItem(at: preprocessor, to: target)
        }
    }
}
