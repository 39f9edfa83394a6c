import ArgumentParser
import CvtKit
import CvtServer
import Dispatch
import Foundation
import Logging
import ServiceLifecycle

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve image classification over HTTP, in the request format of Hugging Face Inference Endpoints, with dynamic batching.",
        discussion: """
        POST / (the first model) or POST /models/NAME with the image bytes (Content-Type: image/*) or JSON \
        {"inputs": "<base64 image>", "parameters": {"top_k": 5, "function_to_apply": "softmax"}}; the answer is \
        [{"label": …, "score": …}, …], as `cvt classify`. Also GET /health, /ready, /metrics (Prometheus), /models and \
        /openapi.json. SIGTERM or SIGINT stops accepting connections, finishes the requests in flight and exits 0. \
        See docs/serving.md.
        """)

    @Option(name: .customLong("model"), help: "Checkpoint folder or Hub id to serve, as NAME=MODEL or MODEL (named after its last path component); repeat to serve several (POST / serves the first). Default: the bundled Fashion-MNIST model.")
    var models: [String] = []
    @Option(help: "Address to bind (0.0.0.0 for every interface).") var host = "127.0.0.1"
    @Option(help: "Port (0: any free port; the bound address is printed).") var port = 8080
    @Option(help: "Most images per forward pass.") var maxBatchSize = 8
    @Option(help: "Longest wait (ms) of the oldest queued image for others to fill its batch.") var maxBatchDelayMs = 2.0
    @Option(help: "Classification requests held at once; more are answered 503 with Retry-After.") var maxQueue = 128
    @Option(help: "Largest request body in bytes; larger ones are answered 413.") var maxBodyBytes = 10 * 1024 * 1024
    @Option(help: "Largest image (width x height) decoded; larger ones are refused from their header (decompression bombs).")
    var maxImagePixels = 40_000_000
    @Option(help: "Seconds a connection may send nothing, and the most a request body may take to arrive.") var readTimeout = 30.0
    @Option(help: "Threads decoding and resizing images (default: all cores).") var decodeThreads: Int?
    @Option(help: "float32 (default, transformers' numbers), bfloat16 or float16 (as for `cvt classify`).") var dtype = "float32"
    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.") var logLevel = "info"
    @Option(help: "Log lines as text or json (one object per line).") var logFormat = "text"
    @OptionGroup var threadOptions: ThreadOptions

    func run() throws {
        guard let mode = InferenceDType(rawValue: dtype) else {
            throw ValidationError("--dtype must be one of \(InferenceDType.names), got \(dtype)")
        }
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("unknown --log-level \(logLevel)") }
        guard logFormat == "text" || logFormat == "json" else { throw ValidationError("--log-format must be text or json, got \(logFormat)") }
        guard maxBatchDelayMs.isFinite, readTimeout.isFinite, readTimeout > 0 else {
            throw ValidationError("--max-batch-delay-ms and --read-timeout must be finite, --read-timeout positive")
        }
        var configuration = ServerConfiguration()
        configuration.host = host
        configuration.port = port
        configuration.maxBatchSize = maxBatchSize
        configuration.maxBatchDelay = .nanoseconds(Int64(maxBatchDelayMs * 1e6))
        configuration.maxQueue = maxQueue
        configuration.maxBodyBytes = maxBodyBytes
        configuration.maxImagePixels = maxImagePixels
        configuration.readTimeout = .nanoseconds(Int64(readTimeout * 1e9))
        if let decodeThreads { configuration.decodeThreads = decodeThreads }
        do { try configuration.validate() } catch { throw ValidationError("\(error)") }

        let json = logFormat == "json"
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler = json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "cvt.serve")

        let engine = try threadOptions.engine()
        let references = try models.isEmpty ? [defaultModelPath()] : models
        let sources = try references.map { spec -> ModelSource in
            var name: String?, reference = spec
            // NAME=MODEL, unless the whole thing is a path that exists (a folder named with '=').
            if let eq = spec.firstIndex(of: "="), !FileManager.default.fileExists(atPath: spec) {
                name = String(spec[..<eq]); reference = String(spec[spec.index(after: eq)...])
            }
            guard !reference.isEmpty else { throw ValidationError("--model \(spec): no model after NAME=") }
            let ref = reference
            return ModelSource(name: name ?? ModelSource.defaultName(for: ref)) {
                try ImageClassificationPipeline(model: ref, engine: engine, dtype: mode)
            }
        }
        let server: CvtServer
        do {
            server = try CvtServer(configuration: configuration, models: sources, logger: logger) { host, port in
                // On standard output, for scripts that start the server on port 0.
                print("cvt serve: listening on http://\(host.contains(":") ? "[\(host)]" : host):\(port)")
                fflush(nil)
            }
        } catch let error as ServerConfigurationError {
            throw ValidationError(error.description)
        }
        let group = ServiceGroup(configuration: .init(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try runBlocking { try await group.run() }
    }
}

/// Runs async work from the synchronous command and waits for it (the other commands are synchronous).
private func runBlocking(_ body: @escaping @Sendable () async throws -> Void) throws {
    final class Outcome: @unchecked Sendable { var error: Error? }
    let outcome = Outcome()
    let done = DispatchSemaphore(value: 0)
    Task {
        do { try await body() } catch { outcome.error = error }
        done.signal()
    }
    done.wait()
    if let error = outcome.error { throw error }
}
