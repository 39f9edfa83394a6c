#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A one-line download progress bar on stderr, drawn only when stderr is a terminal:
///
///     model.safetensors [##########----------]  50%  40.1/80.2 MB
///
/// Pass `bar.callback` as the `progress` of `HubClient.snapshot`. Redraws at most ten times a
/// second; a new file or a finished one ends the line.
/// Its state is guarded by `lock`, so downloads may report from any thread.
public final class TerminalProgressBar: @unchecked Sendable {
    private let lock = NSLock()
    private var currentFile: String?
    private var lastDraw = Date.distantPast
    private var lineOpen = false
    private let width: Int

    /// Nil when stderr is not a TTY (pipes, CI logs), so callers can write `TerminalProgressBar()?.callback`.
    public init?(width: Int = 30) {
        guard Self.isStandardErrorTerminal else { return nil }
        self.width = width
    }

    /// Whether the process's standard error is a terminal (`isatty(2)`).
    public static var isStandardErrorTerminal: Bool { isatty(STDERR_FILENO) == 1 }

    /// A `DownloadProgress` closure that calls `update(file:done:total:)`; pass it to `HubClient.snapshot`.
    public var callback: DownloadProgress {
        { [self] file, done, total in update(file: file, done: done, total: total) }
    }

    /// Reports `done` of `total` bytes (nil: unknown) of `file` and redraws when due; a new file or a finished one ends the line.
    public func update(file: String, done: Int64, total: Int64?) {
        lock.lock()
        defer { lock.unlock() }
        let finished = total.map { done >= $0 } ?? false
        if file != currentFile {
            if lineOpen { emit("\n") }
            currentFile = file
            lastDraw = .distantPast
        }
        let now = Date()
        guard finished || now.timeIntervalSince(lastDraw) >= 0.1 else { return }
        lastDraw = now
        emit("\r" + Self.line(file: file, done: done, total: total, width: width) + "\u{1B}[K")
        lineOpen = true
        if finished {
            emit("\n")
            lineOpen = false
            currentFile = nil
        }
    }

    /// Ends an unfinished line (call after an error).
    public func finish() {
        lock.lock()
        defer { lock.unlock() }
        if lineOpen { emit("\n") }
        lineOpen = false
        currentFile = nil
    }

    /// Progress of counted work (images evaluated, say): `label [####------] done/total`, redrawn
    /// as `update` is, ending the line when `done` reaches `total`.
    public func update(count done: Int, of total: Int, label: String) {
        lock.lock()
        defer { lock.unlock() }
        let now = Date()
        guard done >= total || now.timeIntervalSince(lastDraw) >= 0.1 else { return }
        lastDraw = now
        let fraction = total > 0 ? Double(done) / Double(total) : 1
        emit("\r\(label) [\(Self.bar(fraction, width: width))] \(done)/\(total)\u{1B}[K")
        lineOpen = true
        if done >= total {
            emit("\n")
            lineOpen = false
        }
    }

    /// `width` characters, the `fraction` (clamped to 0…1) of them `#`, the rest `-`.
    public static func bar(_ fraction: Double, width: Int) -> String {
        let filled = Int(min(1, max(0, fraction)) * Double(width))
        return String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
    }

    /// The text of one progress line.
    public static func line(file: String, done: Int64, total: Int64?, width: Int = 30) -> String {
        let mb = { (n: Int64) in String(format: "%.1f", Double(n) / 1_000_000) }
        guard let total, total > 0 else { return "\(file) \(mb(done)) MB" }
        let fraction = min(1, max(0, Double(done) / Double(total)))
        let percent = String(format: "%3d%%", Int(fraction * 100))
        return "\(file) [\(bar(fraction, width: width))] \(percent)  \(mb(done))/\(mb(total)) MB"
    }

    private func emit(_ s: String) {
        FileHandle.standardError.write(Data(s.utf8))
    }
}
