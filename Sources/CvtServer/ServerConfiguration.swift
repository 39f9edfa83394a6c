import Foundation

/// How `cvt serve` listens, batches and protects itself.
public struct ServerConfiguration: Sendable {
    /// Address to bind; 127.0.0.1 keeps the server local, 0.0.0.0 serves every interface.
    public var host: String = "127.0.0.1"
    /// TCP port; 0 picks a free one (reported through `CvtServer`'s `onListening`).
    public var port: Int = 8080
    /// The most images one forward pass runs.
    public var maxBatchSize: Int = 8
    /// How long the oldest waiting image may wait for others to fill its batch. Images that arrive
    /// while the model is busy are batched without waiting.
    public var maxBatchDelay: Duration = .milliseconds(2)
    /// Classification requests held at once (reading, decoding, waiting or running); more are
    /// answered 503 with Retry-After instead of queueing without bound.
    public var maxQueue: Int = 128
    /// Largest request body; larger ones are answered 413 without being read whole.
    public var maxBodyBytes: Int = 10 * 1024 * 1024
    /// Largest image (width × height) decoded; the size is read from the header, so a
    /// decompression bomb is refused before any pixel memory is allocated.
    public var maxImagePixels: Int = 40_000_000
    /// A connection that sends nothing for this long is closed, and a request body must arrive
    /// within it (slow clients are answered 408).
    public var readTimeout: Duration = .seconds(30)
    /// Threads that decode and resize images, outside the model's thread.
    public var decodeThreads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// The Retry-After (seconds) sent with 503 answers.
    public var retryAfterSeconds: Int = 1

    public init() {}

    /// Checks the values, naming the first bad one.
    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws { if !ok { throw ServerConfigurationError(message) } }
        try check((0...65535).contains(port), "port must be in 0…65535, got \(port)")
        try check(maxBatchSize >= 1, "max batch size must be at least 1, got \(maxBatchSize)")
        try check(maxBatchDelay >= .zero, "max batch delay must not be negative")
        try check(maxQueue >= 1, "max queue must be at least 1, got \(maxQueue)")
        try check(maxBodyBytes >= 1, "max body bytes must be at least 1, got \(maxBodyBytes)")
        try check(maxImagePixels >= 1, "max image pixels must be at least 1, got \(maxImagePixels)")
        try check(readTimeout > .zero, "read timeout must be positive")
        try check(decodeThreads >= 1, "decode threads must be at least 1, got \(decodeThreads)")
        try check(retryAfterSeconds >= 0, "retry-after must not be negative")
    }
}

public struct ServerConfigurationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
