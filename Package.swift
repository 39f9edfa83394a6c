// swift-tools-version:6.1
import PackageDescription

// Targets depend one way. The model: CvtTensor (tensor + engine: oneDNN and CKernels) → CvtNN
// (layers, losses) → Cvt (config and model, no I/O). Images: CvtVision (decoding, resampling, the
// image processor) on CvtTensor alone. Files: Safetensors, TorchCheckpoint and TFCheckpoint, and
// HubClient, each standing alone but for CheckpointSupport (mapped files, file errors, the JSON reader and
// writer that config.json and the safetensors header share, and the one routine that escapes file
// text for messages, which CvtNN's strict loader uses too). CvtKit joins them (checkpoint loading,
// pipeline, evaluation, training) and cvt (the CLI) sits on CvtKit. CvtServer (`cvt serve`) is the
// only target on the server stack, so users of CvtKit alone do not build it.
let package = Package(
    name: "swift-cvt",
    products: [
        .library(name: "CvtKit", targets: ["CvtKit"]),
        .library(name: "CvtServer", targets: ["CvtServer"]),
        .executable(name: "cvt", targets: ["cvt"]),
    ],
    dependencies: [
        // The CLI's argument parsing.
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // Documentation only: `swift package generate-documentation` (plugins build only when invoked).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
        // The HTTP server (CvtServer only). Hummingbird's swift-configuration support is left out.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: ["FullFoundation"]),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
    ],
    targets: [
        .systemLibrary(name: "CDNNL", path: "Sources/CDNNL"),
        // No unsafe flags anywhere: SwiftPM refuses them in packages used as dependencies.
        // Small C kernels that need instructions outside the x86-64 baseline (chosen at run time).
        .target(name: "CKernels"),
        .target(name: "CvtTensor", dependencies: ["CDNNL", "CKernels"]),
        // File mapping, error shape and message quoting shared by the checkpoint readers.
        .target(name: "CheckpointSupport"),
        .target(name: "Safetensors", dependencies: ["CheckpointSupport"]),
        // PyTorch's zip checkpoints (pytorch_model.bin) through a restricted unpickler; zlib from Debian.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        .target(name: "TorchCheckpoint", dependencies: ["CZlib", "CheckpointSupport"]),
        // TensorFlow tf_model.h5 checkpoints through Debian's libhdf5 (pkg-config hdf5).
        .systemLibrary(name: "CHDF5", path: "Sources/CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        .target(name: "TFCheckpoint", dependencies: ["CHDF5", "CheckpointSupport"]),
        // Hugging Face cache layout and Hub downloads; SHA-256 from OpenSSL's libcrypto (Debian).
        .systemLibrary(name: "CCrypto", path: "Sources/CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .target(name: "HubClient", dependencies: ["CCrypto", "CheckpointSupport"]),
        .target(name: "CvtNN", dependencies: ["CvtTensor", "CheckpointSupport"]),
        .target(name: "Cvt", dependencies: ["CvtNN", "CvtTensor", "CheckpointSupport"]),
        // libjpeg-turbo and libpng (Debian), wrapped in C because their error handling uses setjmp.
        .target(name: "CImageCodecs", linkerSettings: [.linkedLibrary("jpeg"), .linkedLibrary("png")]),
        .target(name: "CvtVision", dependencies: ["CImageCodecs", "CvtTensor"]),
        .target(name: "CvtKit", dependencies: ["Cvt", "CvtNN", "CvtTensor", "CvtVision", "Safetensors", "TorchCheckpoint", "TFCheckpoint", "HubClient", "CZlib"]),
        // `cvt serve`: Hummingbird 2 on SwiftNIO, swift-service-lifecycle, swift-log, swift-metrics with Prometheus.
        .target(name: "CvtServer", dependencies: [
            "CvtKit",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
        ]),
        .executableTarget(name: "cvt", dependencies: [
            "CvtKit", "CvtServer", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Fuzz harnesses for the parsers (Scripts/fuzz.sh builds them with libFuzzer; the flags are
        // given on the command line, never here). Not part of any product.
        .executableTarget(name: "cvt-fuzz", dependencies: ["CvtKit", "CvtVision"]),
        .testTarget(name: "CvtTensorTests", dependencies: ["CvtTensor", "CKernels", "CDNNL"]),
        .testTarget(name: "SafetensorsTests", dependencies: ["Safetensors"]),
        .testTarget(name: "TorchCheckpointTests", dependencies: ["TorchCheckpoint"]),
        .testTarget(name: "TFCheckpointTests", dependencies: ["TFCheckpoint"]),
        .testTarget(name: "HubClientTests", dependencies: ["HubClient"]),
        .testTarget(name: "CvtTests", dependencies: ["Cvt", "CvtNN", "CvtTensor"]),
        .testTarget(name: "CvtVisionTests", dependencies: ["CvtVision"]),
        .testTarget(name: "CvtKitTests", dependencies: ["CvtKit"]),
        // The public API only, as an app sees it (Swift 6 mode, no @testable).
        .testTarget(name: "CvtKitLibraryTests", dependencies: ["CvtKit"]),
        .testTarget(name: "CvtServerTests", dependencies: ["CvtServer", "CvtKit"]),
    ],
    swiftLanguageModes: [.v6]
)
