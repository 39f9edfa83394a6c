// swift-tools-version:6.0
import PackageDescription

// Targets depend one way. The model: CvtTensor (tensor + engine: oneDNN and CKernels) → CvtNN
// (layers, losses) → Cvt (config and model, no I/O). Images: CvtVision (decoding, resampling, the
// image processor) on CvtTensor alone. Files: Safetensors, TorchCheckpoint and TFCheckpoint (on
// CheckpointSupport), HubClient, each standing alone. CvtKit joins them (checkpoint loading,
// pipeline, evaluation, training) and cvt (the CLI) sits on CvtKit.
let package = Package(
    name: "swift-cvt",
    products: [
        .library(name: "CvtKit", targets: ["CvtKit"]),
        .executable(name: "cvt", targets: ["cvt"]),
    ],
    dependencies: [
        // Third-party packages: the CLI's argument parsing, and the documentation plugin below.
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // Documentation only: `swift package generate-documentation` (plugins build only when invoked).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
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
        .target(name: "HubClient", dependencies: ["CCrypto"]),
        .target(name: "CvtNN", dependencies: ["CvtTensor"]),
        .target(name: "Cvt", dependencies: ["CvtNN", "CvtTensor"]),
        // libjpeg-turbo and libpng (Debian), wrapped in C because their error handling uses setjmp.
        .target(name: "CImageCodecs", linkerSettings: [.linkedLibrary("jpeg"), .linkedLibrary("png")]),
        .target(name: "CvtVision", dependencies: ["CImageCodecs", "CvtTensor"]),
        .target(name: "CvtKit", dependencies: ["Cvt", "CvtNN", "CvtTensor", "CvtVision", "Safetensors", "TorchCheckpoint", "TFCheckpoint", "HubClient", "CZlib"]),
        .executableTarget(name: "cvt", dependencies: [
            "CvtKit", .product(name: "ArgumentParser", package: "swift-argument-parser"),
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
    ],
    swiftLanguageModes: [.v6]
)
