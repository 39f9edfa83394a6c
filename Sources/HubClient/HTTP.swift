import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// One HTTP exchange over URLSession, synchronous, with redirects not followed (the caller
/// follows them so that it decides about the Authorization header) and the body either collected
/// (small answers: errors, redirects) or handed chunk by chunk to a sink (downloads).
final class HTTPExchange: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    // Delegate calls run one at a time on a serial queue; `outcome` is read after `done` is signalled.
    struct Outcome {
        var response: HTTPURLResponse?
        var body = Data()  // only when not streamed; capped at `bodyLimit`
        var transportError: Error?
        var sinkError: Error?
        var streamedBytes: Int64 = 0
    }

    /// Decides on the response headers whether the body goes to `onData` (true) or is collected.
    private let onResponse: ((HTTPURLResponse) throws -> Bool)?
    private let onData: ((Data) throws -> Void)?
    private let bodyLimit = 64 * 1024
    private var outcome = Outcome()
    private var streaming = false
    private let done = DispatchSemaphore(value: 0)
    // Watchdog state, shared with the timer queue.
    private let activityLock = NSLock()
    private var lastActivity = Date()
    private var stalled = false

    private init(onResponse: ((HTTPURLResponse) throws -> Bool)?, onData: ((Data) throws -> Void)?) {
        self.onResponse = onResponse
        self.onData = onData
    }

    /// Sends `request` and waits for the end. The exchange is cancelled with a timed-out error when
    /// nothing arrives for `request.timeoutInterval` seconds, also in the middle of a body
    /// (URLSession on Linux only times out the wait for the response headers).
    static func send(_ request: URLRequest, configuration: URLSessionConfiguration,
                     onResponse: ((HTTPURLResponse) throws -> Bool)? = nil,
                     onData: ((Data) throws -> Void)? = nil) -> Outcome {
        let exchange = HTTPExchange(onResponse: onResponse, onData: onData)
        let queue = OperationQueue()
        queue.maxConcurrentOperationCount = 1
        let session = URLSession(configuration: configuration, delegate: exchange, delegateQueue: queue)
        let task = session.dataTask(with: request)
        let stallLimit = max(0.1, request.timeoutInterval)
        let watchdog = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "HubClient.watchdog"))
        watchdog.schedule(deadline: .now() + min(0.25, stallLimit / 4), repeating: min(0.25, stallLimit / 4))
        watchdog.setEventHandler { [weak exchange, weak task] in
            guard let exchange, exchange.checkStalled(limit: stallLimit) else { return }
            task?.cancel()
        }
        exchange.touch()
        watchdog.resume()
        task.resume()
        exchange.done.wait()
        watchdog.cancel()
        session.finishTasksAndInvalidate()
        var outcome = exchange.outcome
        if exchange.wasStalled, outcome.sinkError == nil {
            outcome.transportError = URLError(.timedOut, userInfo: [
                NSLocalizedDescriptionKey: "no data for \(stallLimit) s (HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT)",
            ])
        }
        return outcome
    }

    private func touch() {
        activityLock.lock()
        lastActivity = Date()
        activityLock.unlock()
    }

    /// True (once) when nothing arrived for `limit` seconds.
    private func checkStalled(limit: TimeInterval) -> Bool {
        activityLock.lock()
        defer { activityLock.unlock() }
        guard !stalled, Date().timeIntervalSince(lastActivity) > limit else { return false }
        stalled = true
        return true
    }

    private var wasStalled: Bool {
        activityLock.lock()
        defer { activityLock.unlock() }
        return stalled
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                    newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void) {
        completionHandler(nil)
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                    completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
        guard let http = response as? HTTPURLResponse else {
            outcome.sinkError = HubError(.invalidResponse, "Not an HTTP response", url: response.url?.absoluteString)
            completionHandler(.cancel)
            return
        }
        outcome.response = http
        touch()
        do {
            streaming = try onResponse?(http) ?? false
            completionHandler(.allow)
        } catch {
            outcome.sinkError = error
            completionHandler(.cancel)
        }
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        guard outcome.sinkError == nil else { return }
        touch()
        if streaming {
            do {
                try onData?(data)
                outcome.streamedBytes += Int64(data.count)
            } catch {
                outcome.sinkError = error
                dataTask.cancel()
            }
        } else if outcome.body.count < bodyLimit {
            outcome.body.append(data.prefix(bodyLimit - outcome.body.count))
        }
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
        if outcome.response == nil, let http = task.response as? HTTPURLResponse { outcome.response = http }
        if let error, outcome.sinkError == nil { outcome.transportError = error }
        done.signal()
    }
}

extension HTTPURLResponse {
    func header(_ name: String) -> String? {
        guard let v = value(forHTTPHeaderField: name)?.trimmingCharacters(in: .whitespaces), !v.isEmpty else { return nil }
        return v
    }
}

/// Python's `urllib.parse.quote`: percent-encodes everything but letters, digits, `_.-~` and `safe`.
func percentEncode(_ s: String, safe: String) -> String {
    let safeBytes = Set(safe.utf8)
    var out = ""
    for b in s.utf8 {
        let isUnreserved = (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122)
            || b == UInt8(ascii: "_") || b == UInt8(ascii: ".") || b == UInt8(ascii: "-") || b == UInt8(ascii: "~")
        if isUnreserved || safeBytes.contains(b) {
            out.unicodeScalars.append(Unicode.Scalar(b))
        } else {
            out += String(format: "%%%02X", b)
        }
    }
    return out
}

/// `host[:port]`, for comparing where a redirect goes.
func netloc(_ url: URL) -> String {
    let host = url.host?.lowercased() ?? ""
    if let port = url.port { return "\(host):\(port)" }
    return host
}
