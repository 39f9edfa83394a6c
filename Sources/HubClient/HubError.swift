import Foundation

/// Why a model could not be resolved or downloaded. The description names the repository, file,
/// revision, URL and HTTP status that apply, and what to do about it.
public struct HubError: Error, CustomStringConvertible, LocalizedError {
    public enum Kind: String, Sendable {
        /// Not a valid repo id, revision, file name or model path.
        case invalidReference
        /// A path-looking model reference that does not exist on disk (or is not a folder).
        case localPathNotFound
        /// HTTP 404: the repository, revision or file does not exist (or is private).
        case notFound
        /// HTTP 401/403: authentication needed (HF_TOKEN) or access to a gated repo not granted.
        case unauthorized
        /// `HF_HUB_OFFLINE` is on and the file is not in the cache.
        case offlineNotCached
        /// The endpoint could not be reached (connection refused, DNS, timeout, dropped connection).
        case network
        /// Another unexpected HTTP status.
        case httpStatus
        /// The server's answer lacks what the Hub always sends (commit, etag, size) or is inconsistent.
        case invalidResponse
        /// The downloaded bytes do not match the expected size or SHA-256.
        case integrity
        /// Reading or writing the cache failed.
        case fileSystem
    }

    public let kind: Kind
    public let message: String
    public var repo: String?
    public var file: String?
    public var revision: String?
    public var url: String?
    public var status: Int?

    public init(_ kind: Kind, _ message: String, repo: String? = nil, file: String? = nil, revision: String? = nil,
                url: String? = nil, status: Int? = nil) {
        self.kind = kind
        self.message = message
        self.repo = repo
        self.file = file
        self.revision = revision
        self.url = url
        self.status = status
    }

    public var description: String {
        var details = [String]()
        if let repo { details.append("repo \(repo)") }
        if let revision { details.append("revision \(revision)") }
        if let file { details.append("file \(file)") }
        if let status { details.append("HTTP \(status)") }
        if let url { details.append("URL \(url)") }
        return details.isEmpty ? message : "\(message) [\(details.joined(separator: ", "))]"
    }

    public var errorDescription: String? { description }

    /// A dropped or timed-out transfer that may succeed when tried again (resuming the partial file).
    var isRetryable: Bool { kind == .network }
}
