import CvtKit
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import NIOHTTPTypes

/// The routes. Classification: admission (bounded, else 503) → body (bounded, else 413; in time,
/// else 408) → parse (400) → decode and resize on the decoding threads (400 for bad images) → the
/// batcher → `[{"label", "score"}]`.
struct Handlers: Sendable {
    let configuration: ServerConfiguration
    let registry: ModelRegistry
    let batcher: Batcher
    let metrics: ServerMetrics
    let decodePool: NIOThreadPool
    let admission: Admission

    func addRoutes(to router: Router<ServeContext>) {
        router.get("/health") { _, _ in jsonResponse(["status": "ok"]) }
        router.get("/ready") { _, _ in
            registry.isReady ? jsonResponse(["status": "ready", "models": registry.names])
                : jsonResponse(["status": "loading", "models": registry.names], status: .serviceUnavailable)
        }
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: metrics.exposition())))
        }
        let openAPI = OpenAPIDocument.json(modelNames: registry.names)
        router.get("/openapi.json") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: openAPI)))
        }
        router.get("/models") { _, _ in
            jsonResponse(["models": registry.names.map { name -> [String: Any] in
                var entry: [String: Any] = ["name": name, "default": name == registry.defaultName, "loaded": false]
                if let m = registry.model(named: name) {
                    entry["loaded"] = true
                    entry["labels"] = (0..<m.config.numLabels).map { m.config.id2label[$0] ?? "LABEL_\($0)" }
                }
                return entry
            }])
        }
        router.post("/") { request, context in await classify(request, context: context, modelName: registry.defaultName ?? "") }
        router.post("/models/{name}") { request, context in
            await classify(request, context: context, modelName: context.parameters.get("name") ?? "")
        }
    }

    func classify(_ request: Request, context: ServeContext, modelName: String) async -> Response {
        guard admission.enter() else {
            // Refused before the body is read: the connection is closed rather than drained.
            return errorResponse(ServeError(.serviceUnavailable, "queue_full",
                                            "the server is at its limit of \(admission.limit) requests; retry later",
                                            retryAfter: configuration.retryAfterSeconds), closeConnection: true)
        }
        metrics.inFlight.record(admission.current)
        defer {
            admission.leave()
            metrics.inFlight.record(admission.current)
        }
        guard registry.names.contains(modelName) else {
            return errorResponse(ServeError(.notFound, "model_not_found",
                                            "no model named \(modelName); served: \(registry.names.joined(separator: ", "))"),
                                 closeConnection: true)
        }
        guard let model = registry.model(named: modelName) else {
            return errorResponse(ServeError(.serviceUnavailable, "model_loading", "model \(modelName) is still loading",
                                            retryAfter: configuration.retryAfterSeconds), closeConnection: true)
        }
        let body: ByteBuffer
        do {
            body = try await readBody(request, context: context)
        } catch {
            return errorResponse(error as? ServeError ?? ServeError(.badRequest, "invalid_body", "\(error)"), closeConnection: true)
        }
        do {
            var query: [String: String] = [:]
            for (k, v) in request.uri.queryParameters { query[String(k)] = String(v) }
            let parsed = try ClassificationRequest.parse(contentType: request.headers[.contentType], body: Data(buffer: body), query: query)
            let maxPixels = configuration.maxImagePixels
            let image: RGBImage
            do {
                image = try await decodePool.runIfActive { try model.prepare(encoded: parsed.image, maxPixels: maxPixels) }
            } catch let error as ImageError {
                throw ServeError.image(error)
            } catch let error as PreprocessingError {
                throw ServeError(.badRequest, "invalid_image", error.message)
            }
            let predictions = try await batcher.classify(image, model: model, topK: parsed.topK, function: parsed.function)
            return jsonResponse(predictions.map { ["label": $0.label, "score": Double($0.score)] })
        } catch let error as ServeError {
            return errorResponse(error)
        } catch {
            context.logger.error("classification failed", metadata: ["error": "\(error)"])
            return errorResponse(ServeError(.internalServerError, "internal_error", "\(error)"))
        }
    }

    /// The whole body, refused with 413 as soon as it is known to exceed the limit (from
    /// Content-Length, before reading, or while reading), and with 408 when it does not arrive
    /// within the read timeout (a client sending a byte now and then).
    func readBody(_ request: Request, context: ServeContext) async throws -> ByteBuffer {
        let limit = configuration.maxBodyBytes
        let tooLarge = ServeError(.contentTooLarge, "body_too_large", "the request body exceeds the limit of \(limit) bytes")
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit { throw tooLarge }
        let timeout = configuration.readTimeout
        let body = request.body
        let channel = context.channel
        let outcome: ByteBuffer? = try await withThrowingTaskGroup(of: ByteBuffer?.self) { group in
            group.addTask {
                do { return try await body.collect(upTo: limit) } catch is NIOTooManyBytesError { throw tooLarge }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next() ?? nil
            if first == nil {
                // Ends the body stream, so the reading task returns; the answer still goes out.
                channel.close(mode: .input, promise: nil)
            }
            group.cancelAll()
            return first
        }
        guard let outcome else {
            throw ServeError(.requestTimeout, "request_timeout", "the request body did not arrive within \(timeout)")
        }
        return outcome
    }
}

func jsonResponse(_ object: Any, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("null".utf8)
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

/// `closeConnection`: the answer comes before the request body was read, so the connection is
/// closed after it rather than the rest of the body read and thrown away.
func errorResponse(_ error: ServeError, closeConnection: Bool = false) -> Response {
    var headers: HTTPFields = [.contentType: "application/json"]
    if let retry = error.retryAfter { headers[.retryAfter] = String(retry) }
    if closeConnection { headers[.connection] = "close" }
    return Response(status: error.status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: error.jsonBody)))
}

/// Turns anything thrown (the router's 404s, say) into a JSON error, then counts the request in
/// the metrics and logs it: one structured line per request.
struct ServeMiddleware: RouterMiddleware {
    typealias Context = ServeContext
    let metrics: ServerMetrics

    func handle(_ request: Request, context: ServeContext, next: (Request, ServeContext) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as ServeError {
            response = errorResponse(error)
        } catch let error as HTTPError {
            if error.status == .notFound, let allowed = OpenAPIDocument.methods(forPath: request.uri.path) {
                // A route that exists, asked with another method.
                response = errorResponse(ServeError(.methodNotAllowed, "method_not_allowed",
                                                    "\(request.method) is not allowed on \(request.uri.path); use \(allowed)"))
                response.headers[.allow] = allowed
            } else if error.status == .notFound {
                response = errorResponse(ServeError(.notFound, "not_found", "no route \(request.method) \(request.uri.path)"))
            } else {
                response = errorResponse(ServeError(error.status, "http_error", error.body ?? error.status.reasonPhrase))
            }
        } catch let error as any HTTPResponseError {
            response = errorResponse(ServeError(error.status, "http_error", error.status.reasonPhrase))
        } catch {
            response = errorResponse(ServeError(.internalServerError, "internal_error", "\(error)"))
        }
        let duration = ContinuousClock.now - start
        let route = context.endpointPath ?? "unmatched"
        metrics.recordRequest(method: request.method.rawValue, route: route, status: response.status.code, duration: duration)
        let remote = context.channel.remoteAddress.flatMap { $0.ipAddress } ?? "-"
        context.logger.log(level: response.status.code >= 500 && response.status.code != 503 ? .warning : .info, "request", metadata: [
            "method": "\(request.method.rawValue)", "path": "\(request.uri.path)", "status": "\(response.status.code)",
            "duration_ms": "\(String(format: "%.2f", duration.seconds * 1000))", "remote": "\(remote)",
        ])
        return response
    }
}

/// Closes a connection after a response that says `Connection: close` (Hummingbird would otherwise
/// read and discard the rest of an unread request body to keep the connection). The write side
/// closes first, so the client reads the whole answer; the connection closes fully a moment later.
final class CloseConnectionHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart
    private var closeAfterEnd = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let part = unwrapOutboundIn(data)
        switch part {
        case .head(let head):
            if head.headerFields[.connection]?.lowercased() == "close" { closeAfterEnd = true }
            context.write(data, promise: promise)
        case .body:
            context.write(data, promise: promise)
        case .end:
            context.write(data, promise: promise)
            guard closeAfterEnd else { return }
            closeAfterEnd = false
            context.flush()
            context.close(mode: .output, promise: nil)
            let channel = context.channel
            context.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        }
    }
}
