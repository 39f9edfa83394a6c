import CvtKit
import Foundation
import HTTPTypes

/// A request the server answers with an error: an HTTP status and a JSON body
/// `{"error": message, "error_type": type}` (the shape of Hugging Face's inference servers).
public struct ServeError: Error, CustomStringConvertible, Equatable, Sendable {
    public var status: HTTPResponse.Status
    /// A stable machine-readable name ("invalid_image", "queue_full", …).
    public var type: String
    public var message: String
    /// Seconds, for 503 answers.
    public var retryAfter: Int?

    public init(_ status: HTTPResponse.Status, _ type: String, _ message: String, retryAfter: Int? = nil) {
        self.status = status; self.type = type; self.message = message; self.retryAfter = retryAfter
    }

    public var description: String { "\(status.code) \(type): \(message)" }

    static func badRequest(_ type: String, _ message: String) -> ServeError { ServeError(.badRequest, type, message) }

    /// An image that cannot be classified: its kind decides the type; all are the client's fault
    /// (400) except running out of memory.
    static func image(_ error: ImageError) -> ServeError {
        switch error.kind {
        case .tooManyPixels: return ServeError(.badRequest, "image_too_large", error.message)
        case .outOfMemory: return ServeError(.serviceUnavailable, "out_of_memory", error.message, retryAfter: 1)
        case .unsupportedFormat: return ServeError(.badRequest, "unsupported_image_format", error.message)
        default: return ServeError(.badRequest, "invalid_image", error.message)
        }
    }

    var jsonBody: Data {
        let object: [String: Any] = ["error": message, "error_type": type]
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }
}
