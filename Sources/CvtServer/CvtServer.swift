import CvtKit
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// `cvt serve`: an HTTP server for image classification in the request format of Hugging Face
/// Inference Endpoints, with dynamic batching (`Batcher`), health and readiness probes, Prometheus
/// metrics and an OpenAPI document. Run it as a `Service` (in a `ServiceGroup` with
/// `gracefulShutdownSignals: [.sigterm, .sigint]` for a process): on graceful shutdown it stops
/// accepting connections, finishes the requests in flight and returns.
public final class CvtServer: Service, Sendable {
    public let configuration: ServerConfiguration
    public let sources: [ModelSource]
    public let metrics: ServerMetrics
    let logger: Logger
    let onListening: @Sendable (_ host: String, _ port: Int) -> Void

    /// - Parameter onListening: called once the socket is bound, with the bound address (the real
    ///   port when `configuration.port` is 0).
    public init(configuration: ServerConfiguration, models: [ModelSource], logger: Logger = Logger(label: "cvt.serve"),
                onListening: @escaping @Sendable (_ host: String, _ port: Int) -> Void = { _, _ in }) throws {
        try configuration.validate()
        guard !models.isEmpty else { throw ServerConfigurationError("no model to serve") }
        var seen = Set<String>()
        for m in models {
            guard ModelSource.isValidName(m.name) else {
                throw ServerConfigurationError("model name \"\(m.name)\" must be letters, digits, '.', '_' or '-'")
            }
            guard seen.insert(m.name).inserted else {
                throw ServerConfigurationError("two models are named \(m.name); name them with NAME=MODEL")
            }
        }
        self.configuration = configuration
        self.sources = models
        self.metrics = ServerMetrics()
        self.logger = logger
        self.onListening = onListening
    }

    public func run() async throws {
        let registry = ModelRegistry(names: sources.map(\.name))
        let batcher = Batcher(maxBatchSize: configuration.maxBatchSize, maxBatchDelay: configuration.maxBatchDelay, metrics: metrics)
        let decodePool = NIOThreadPool(numberOfThreads: configuration.decodeThreads)
        decodePool.start()
        let handlers = Handlers(configuration: configuration, registry: registry, batcher: batcher, metrics: metrics,
                                decodePool: decodePool, admission: Admission(limit: configuration.maxQueue))
        let router = Router(context: ServeContext.self)
        router.add(middleware: ServeMiddleware(metrics: metrics))
        handlers.addRoutes(to: router)

        let loader = ModelLoader(sources: sources, registry: registry, batcher: batcher, logger: logger)
        let host = configuration.host
        let onListening = self.onListening
        let logger = self.logger
        let timeout = TimeAmount.nanoseconds(configuration.readTimeout.nanoseconds)
        let app = Application(
            router: router,
            server: .http1(configuration: .init(additionalChannelHandlers: [CloseConnectionHandler()], idleTimeout: timeout)),
            configuration: .init(address: .hostname(host, port: configuration.port), serverName: "cvt"),
            // Shut down in reverse order: the HTTP server first (finishing requests in flight,
            // which need the batcher), then the loader, then the batcher.
            services: [batcher, loader],
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                logger.info("listening", metadata: ["host": "\(host)", "port": "\(port)"])
                onListening(host, port)
            },
            logger: logger
        )
        defer { decodePool.shutdownGracefully { _ in } }
        try await app.run()
        logger.info("stopped")
    }
}

/// Loads the models one after the other on the model thread, then waits for shutdown (a service
/// that returns would end the group). A model that fails to load stops the server with its error.
struct ModelLoader: Service {
    let sources: [ModelSource]
    let registry: ModelRegistry
    let batcher: Batcher
    let logger: Logger

    func run() async throws {
        for source in sources {
            let start = ContinuousClock.now
            let load = source.load
            let pipeline: ImageClassificationPipeline
            do {
                pipeline = try await batcher.onModelThread { UncheckedBox(try load()) }.value
            } catch {
                logger.error("model failed to load", metadata: ["model": "\(source.name)", "error": "\(error)"])
                throw error
            }
            for w in pipeline.warnings { logger.warning("\(w)", metadata: ["model": "\(source.name)"]) }
            registry.add(ServedModel(name: source.name, pipeline: pipeline))
            logger.info("model loaded", metadata: [
                "model": "\(source.name)", "labels": "\(pipeline.model.config.numLabels)",
                "seconds": "\(String(format: "%.2f", (ContinuousClock.now - start).seconds))",
            ])
        }
        logger.info("ready")
        try? await gracefulShutdown()
    }
}

/// Moves a non-Sendable value from the thread that made it to its one user.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// The request context: Hummingbird's, plus the connection (to stop reading a body that took too long).
struct ServeContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// Bounds the classification requests in the server at once.
final class Admission: Sendable {
    let limit: Int
    private let count = Atomic<Int>(0)

    init(limit: Int) { self.limit = limit }

    func enter() -> Bool {
        if count.wrappingAdd(1, ordering: .relaxed).newValue > limit {
            count.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func leave() { count.wrappingSubtract(1, ordering: .relaxed) }

    var current: Int { count.load(ordering: .relaxed) }
}
