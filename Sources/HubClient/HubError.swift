import Foundation

/// Why a model could not be resolved or downloaded. The description names the repository, file,
/// revision, URL and HTTP status that apply, and what to do about it.
public struct HubError: Error, CustomStringConvertible, LocalizedError {
    /// The category of failure, for callers that react to some (e.g. retry `.network`, ask for a token on `.unauthorized`).
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

    /// The category of failure.
    public let kind: Kind
    /// What went wrong and what to do about it, without the details below.
    public let message: String
    /// The Hub repository id (`org/name`) concerned, when there is one.
    public var repo: String?
    /// The file within the repository, when there is one.
    public var file: String?
    /// The revision (branch, tag or commit) concerned, when there is one.
    public var revision: String?
    /// The URL requested, when the failure concerns a request.
    public var url: String?
    /// The HTTP status code received, when there was one.
    public var status: Int?

    /// Creates an error of `kind` with `message` and whichever details apply.
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

    /// `message` followed by the details that are set, e.g. `"… [repo org/name, revision main, file config.json, HTTP 404]"`.
    public var description: String {
        var details = [String]()
        if let repo { details.append("repo \(repo)") }
        if let revision { details.append("revision \(revision)") }
        if let file { details.append("file \(file)") }
        if let status { details.append("HTTP \(status)") }
        if let url { details.append("URL \(url)") }
        return details.isEmpty ? message : "\(message) [\(details.joined(separator: ", "))]"
    }

    /// The same text as `description`, for `LocalizedError`.
    public var errorDescription: String? { description }

    /// A dropped or timed-out transfer that may succeed when tried again (resuming the partial file).
    var isRetryable: Bool { kind == .network }
}
