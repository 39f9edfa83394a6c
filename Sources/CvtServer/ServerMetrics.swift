import CoreMetrics
import Foundation
import Prometheus

/// The server's metrics, recorded through swift-metrics into a Prometheus registry of its own
/// (not the process-wide `MetricsSystem`, so several servers in one process, as in the tests, keep
/// separate counts).
public final class ServerMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory
    let queueDepth: CoreMetrics.Gauge
    let inFlight: CoreMetrics.Gauge
    let batchSize: CoreMetrics.Recorder
    let batchDuration: CoreMetrics.Timer

    public init() {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.valueHistogramBuckets["cvt_batch_size"] = [1, 2, 4, 8, 16, 32, 64, 128]
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
        ]
        self.registry = registry
        self.factory = factory
        queueDepth = CoreMetrics.Gauge(label: "cvt_queue_depth", factory: factory)
        inFlight = CoreMetrics.Gauge(label: "cvt_requests_in_flight", factory: factory)
        batchSize = CoreMetrics.Recorder(label: "cvt_batch_size", aggregate: true, factory: factory)
        batchDuration = CoreMetrics.Timer(label: "cvt_batch_duration_seconds", factory: factory)
        queueDepth.record(0)
        inFlight.record(0)
    }

    /// One answered request. `route` is the route's pattern (e.g. `/models/{name}`), which keeps
    /// the label set small whatever paths clients send.
    func recordRequest(method: String, route: String, status: Int, duration: Duration) {
        CoreMetrics.Counter(label: "cvt_http_requests_total", dimensions: [("method", method), ("route", route), ("status", String(status))],
                factory: factory).increment()
        CoreMetrics.Timer(label: "cvt_http_request_duration_seconds", dimensions: [("method", method), ("route", route)],
                          factory: factory).recordNanoseconds(duration.nanoseconds)
    }

    /// Prometheus' text exposition format.
    public func exposition() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (s, atto) = components
        return s * 1_000_000_000 + atto / 1_000_000_000
    }
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
