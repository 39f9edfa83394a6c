import CvtKit
import CvtServer
import Foundation
import Logging
import ServiceLifecycle
import XCTest

#if canImport(Glibc)
import Glibc
#endif

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let bundledModel = repoRoot.appendingPathComponent("models/cvt-fashion-mnist")
let samples = bundledModel.appendingPathComponent("samples")
let fixtureImages = repoRoot.appendingPathComponent("Tests/Fixtures/images")

func sampleNames() throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: samples.path).filter { $0.hasSuffix(".png") }.sorted()
}

/// The bundled model, loaded once for the comparisons (the servers load their own).
let referencePipeline: UncheckedPipeline = UncheckedPipeline(try! ImageClassificationPipeline(model: bundledModel))

struct UncheckedPipeline: @unchecked Sendable {
    let pipeline: ImageClassificationPipeline
    init(_ p: ImageClassificationPipeline) { pipeline = p }
}

func bundledSource(name: String = "cvt-fashion-mnist") -> ModelSource {
    ModelSource(name: name) { try ImageClassificationPipeline(model: bundledModel) }
}

/// A server on an ephemeral loopback port, in this process, stopped by graceful shutdown.
final class TestServer: @unchecked Sendable {
    let server: CvtServer
    let group: ServiceGroup
    let port: Int
    let run: Task<Void, any Error>

    static func start(_ configure: (inout ServerConfiguration) -> Void = { _ in },
                      models: [ModelSource] = [bundledSource()], waitUntilReady: Bool = true) async throws -> TestServer {
        var configuration = ServerConfiguration()
        configuration.port = 0
        configure(&configuration)
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        var logger = Logger(label: "test.serve")
        logger.logLevel = .warning
        let server = try CvtServer(configuration: configuration, models: models, logger: logger) { _, port in
            continuation.yield(port)
            continuation.finish()
        }
        let group = ServiceGroup(configuration: .init(services: [server], logger: logger))
        let run = Task { try await group.run() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw XCTSkip("the server did not start") }
        let s = TestServer(server: server, group: group, port: port, run: run)
        if waitUntilReady {
            for _ in 0..<500 where try await s.get("/ready").status != 200 { try await Task.sleep(for: .milliseconds(10)) }
        }
        return s
    }

    private init(server: CvtServer, group: ServiceGroup, port: Int, run: Task<Void, any Error>) {
        self.server = server; self.group = group; self.port = port; self.run = run
    }

    /// Graceful shutdown; waits until the server has stopped.
    func stop() async throws {
        await group.triggerGracefulShutdown()
        try await run.value
    }

    func get(_ path: String) async throws -> HTTPResult {
        try await HTTPClient.request(port: port, method: "GET", path: path)
    }

    func post(_ path: String = "/", contentType: String?, body: Data, headers: [(String, String)] = []) async throws -> HTTPResult {
        var h = headers
        if let contentType { h.append(("Content-Type", contentType)) }
        return try await HTTPClient.request(port: port, method: "POST", path: path, headers: h, body: body)
    }

    func postJSON(_ path: String = "/", _ object: [String: Any]) async throws -> HTTPResult {
        try await post(path, contentType: "application/json", body: JSONSerialization.data(withJSONObject: object))
    }
}

struct HTTPResult: Sendable {
    var status: Int
    /// Lower-cased names.
    var headers: [String: String]
    var body: Data

    var text: String { String(decoding: body, as: UTF8.self) }
    var json: Any? { try? JSONSerialization.jsonObject(with: body) }
    var errorType: String? { (json as? [String: Any])?["error_type"] as? String }
    var predictions: [Prediction]? {
        guard let array = json as? [[String: Any]] else { return nil }
        return array.compactMap { o in
            guard let label = o["label"] as? String, let score = (o["score"] as? NSNumber)?.doubleValue else { return nil }
            return Prediction(label: label, score: Float(score))
        }
    }
}

/// A plain HTTP/1.1 client on POSIX sockets: requests as written (partial bodies, lying
/// Content-Length, pauses), each on a thread of its own so that the server's tasks in this process
/// never wait for a blocked client.
enum HTTPClient {
    struct Failure: Error, CustomStringConvertible { let description: String }

    static func request(port: Int, method: String, path: String, headers: [(String, String)] = [], body: Data? = nil) async throws -> HTTPResult {
        try await onThread {
            let c = try Connection(port: port)
            defer { c.close() }
            try c.send(head(method: method, path: path, headers: headers, contentLength: body?.count))
            if let body { try c.send(body) }
            return try c.readResponse()
        }
    }

    static func head(method: String, path: String, headers: [(String, String)], contentLength: Int?, close: Bool = true) -> Data {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if close { text += "Connection: close\r\n" }
        if let contentLength, !headers.contains(where: { $0.0.lowercased() == "content-length" || $0.0.lowercased() == "transfer-encoding" }) {
            text += "Content-Length: \(contentLength)\r\n"
        }
        for (k, v) in headers { text += "\(k): \(v)\r\n" }
        return Data((text + "\r\n").utf8)
    }

    static func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    /// One TCP connection to 127.0.0.1, with a receive timeout so that a test never hangs.
    final class Connection: @unchecked Sendable {
        let fd: Int32

        init(port: Int, receiveTimeoutSeconds: Int = 60) throws {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Failure(description: "socket() failed") }
            var timeout = timeval(tv_sec: receiveTimeoutSeconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let r = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard r == 0 else { Glibc.close(fd); throw Failure(description: "connect to port \(port) failed (errno \(errno))") }
        }

        func send(_ data: Data) throws {
            try data.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let n = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                    guard n > 0 else { throw Failure(description: "send failed (errno \(errno))") }
                    offset += n
                }
            }
        }

        /// Sends, reporting instead of throwing when the server has closed the connection.
        func trySend(_ data: Data) -> Bool { (try? send(data)) != nil }

        /// Bytes until the server closes the connection (or the receive timeout).
        func readToEnd() throws -> Data {
            var out = Data()
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n > 0 { out.append(contentsOf: buffer[0..<n]); continue }
                if n == 0 || errno == ECONNRESET { return out }
                throw Failure(description: "recv failed (errno \(errno)) after \(out.count) bytes")
            }
        }

        /// One response; reads until the connection closes or Content-Length bytes of body arrived.
        func readResponse() throws -> HTTPResult {
            var data = Data()
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                if let r = Self.parse(data) { return r }
                let n = recv(fd, &buffer, buffer.count, 0)
                if n > 0 { data.append(contentsOf: buffer[0..<n]); continue }
                if n == 0 || errno == ECONNRESET {
                    if let r = Self.parse(data, complete: true) { return r }
                    throw Failure(description: "connection closed after \(data.count) bytes, before a whole response")
                }
                throw Failure(description: "recv failed (errno \(errno)) after \(data.count) bytes")
            }
        }

        static func parse(_ data: Data, complete: Bool = false) -> HTTPResult? {
            guard let end = data.range(of: Data("\r\n\r\n".utf8)) else { return nil }
            let head = String(decoding: data[..<end.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
            guard let statusLine = head.first, statusLine.hasPrefix("HTTP/1.1 "),
                  let status = Int(statusLine.dropFirst(9).prefix(3)) else { return nil }
            var headers: [String: String] = [:]
            for line in head.dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            let body = data[end.upperBound...]
            if let length = headers["content-length"].flatMap({ Int($0) }) {
                guard body.count >= length else { return nil }
                return HTTPResult(status: status, headers: headers, body: Data(body.prefix(length)))
            }
            return complete ? HTTPResult(status: status, headers: headers, body: Data(body)) : nil
        }

        func close() { Glibc.close(fd) }
    }
}

/// A metric's value from Prometheus' text format (the first line starting with `series`).
func metricValue(_ exposition: String, _ series: String) -> Double? {
    for line in exposition.split(separator: "\n") where line.hasPrefix(series + " ") {
        return Double(line.split(separator: " ").last ?? "")
    }
    return nil
}
