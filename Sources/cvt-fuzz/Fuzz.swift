import CvtKit
import CvtVision
import Foundation

// Fuzz harnesses for every parser that reads untrusted bytes. Built two ways:
//  - normally (`swift build`): `cvt-fuzz TARGET FILE...` runs each file through the harness (the
//    seed corpora in Tests/Fuzz/<target>/ are replayed in CI this way, and a crash found by the
//    fuzzer is reproduced the same way);
//  - with libFuzzer (`Scripts/fuzz.sh`, `swift build -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING`):
//    libFuzzer provides `main` and calls `LLVMFuzzerTestOneInput`; the harness is chosen by the
//    CVT_FUZZ_TARGET environment variable. libFuzzer's -rss_limit_mb / -malloc_limit_mb turn an
//    input that needs more memory than the documented bound into a failure.

enum Harness: String, CaseIterable {
    case safetensors, pickle, zip, config, preprocessor, image, idx

    func run(_ data: Data) {
        switch self {
        case .safetensors:
            guard let file = try? SafetensorsFile(data: data, name: "fuzz") else { return }
            for t in file.tensors {
                _ = try? file.floats(t.name)
                _ = try? file.int64s(t.name)
            }
        case .pickle:
            // The bytes as data.pkl of an otherwise valid archive, with one storage "0".
            run(checkpoint: Data(storedZip([("archive/data.pkl", [UInt8](data)), ("archive/data/0", [UInt8](repeating: 0, count: 64)),
                                            ("archive/version", Array("3\n".utf8))])))
        case .zip:
            run(checkpoint: data)
        case .config:
            guard let config = try? CvtConfig.decode(data) else { return }
            _ = config.parameterCount
            _ = config.largestActivation(height: 224, width: 224)
            _ = try? config.jsonData()
        case .preprocessor:
            guard let config = try? PreprocessorConfig.decode(data) else { return }
            let image = RGBImage(width: 7, height: 5, pixels: [UInt8](repeating: 128, count: 7 * 5 * 3))
            _ = try? ConvNextImageProcessor(config: config)(image)
        case .image:
            // At most 16 M pixels: the fuzzer's inputs are small, the pixel limit bounds their output.
            _ = try? ImageDecoder.decodeStored(data: data, name: "fuzz", maxPixels: 1 << 24)
        case .idx:
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("cvt-fuzz-\(getpid())-idx1-ubyte")
            guard (try? data.write(to: url)) != nil else { return }
            _ = try? IDXFile(url: url)
        }
    }

    private func run(checkpoint data: Data) {
        guard let ckpt = try? TorchCheckpoint(data: data, name: "fuzz") else { return }
        for name in ckpt.tensorNames {
            _ = try? ckpt.floats(name)
            _ = try? ckpt.int64s(name)
        }
    }
}

/// A zip archive of STORED entries (what torch.save writes), for the pickle harness.
func storedZip(_ entries: [(String, [UInt8])]) -> [UInt8] {
    func le16(_ v: Int, _ out: inout [UInt8]) { out += [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
    func le32(_ v: UInt32, _ out: inout [UInt8]) { for i in 0..<4 { out.append(UInt8((v >> (8 * UInt32(i))) & 0xFF)) } }
    func crc(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            c ^= UInt32(b)
            for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        }
        return c ^ 0xFFFF_FFFF
    }
    var out: [UInt8] = [], central: [UInt8] = []
    for (name, data) in entries {
        let n = Array(name.utf8), c = crc(data), offset = UInt32(out.count)
        le32(0x0403_4B50, &out); le16(20, &out); le16(0, &out); le16(0, &out); le16(0, &out); le16(0x21, &out)
        le32(c, &out); le32(UInt32(data.count), &out); le32(UInt32(data.count), &out); le16(n.count, &out); le16(0, &out)
        out += n + data
        le32(0x0201_4B50, &central); le16(0x031E, &central); le16(20, &central); le16(0, &central); le16(0, &central)
        le16(0, &central); le16(0x21, &central); le32(c, &central); le32(UInt32(data.count), &central)
        le32(UInt32(data.count), &central); le16(n.count, &central)
        for _ in 0..<4 { le16(0, &central) }
        le32(0, &central); le32(offset, &central)
        central += n
    }
    let cd = UInt32(out.count)
    out += central
    le32(0x0605_4B50, &out); le16(0, &out); le16(0, &out); le16(entries.count, &out); le16(entries.count, &out)
    le32(UInt32(central.count), &out); le32(cd, &out); le16(0, &out)
    return out
}

#if FUZZING
private let harness: Harness = {
    let name = ProcessInfo.processInfo.environment["CVT_FUZZ_TARGET"] ?? ""
    guard let h = Harness(rawValue: name) else {
        fatalError("set CVT_FUZZ_TARGET to one of \(Harness.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return h
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ bytes: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    harness.run(count == 0 ? Data() : Data(bytes: bytes!, count: count))
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
               _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// SwiftPM's debug builds link an executable with `main` defined as `<module>_main` (so tests can
/// import it); this entry point hands over to libFuzzer's driver there. (Release builds take
/// libFuzzer's own `main`.)
@_cdecl("cvt_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var args = argv
    return runDriver(&count, &args) { fuzzOne($0, $1) }
}
#else
@main
enum Replay {
    static func main() {
        let args = CommandLine.arguments.dropFirst()
        guard let name = args.first, let harness = Harness(rawValue: name) else {
            FileHandle.standardError.write(Data("usage: cvt-fuzz \(Harness.allCases.map(\.rawValue).joined(separator: "|")) FILE-OR-FOLDER...\n".utf8))
            exit(64)
        }
        var count = 0
        for path in args.dropFirst() {
            var isDir: ObjCBool = false
            FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
            let files = isDir.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 }
                : [path]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                harness.run(data)
                count += 1
            }
        }
        print("\(name): \(count) inputs, no crash")
    }
}
#endif
