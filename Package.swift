// swift-tools-version:6.0
// SwiftLDM: a Swift trainer for two-stage Latent Diffusion Models.
// Layers (one-way imports) are described in ARCHITECTURE.md.
import PackageDescription

/// Numeric kernels are built optimised even in debug builds (debug numeric Swift
/// runs ~100x slower), for a Haswell (AVX2 + FMA) baseline so loops vectorise.
/// oneDNN picks AVX-512 kernels itself at run time. Not -Ounchecked: it drops the
/// preconditions that name mismatched shapes (and skips their side effects).
let kernelSettings: [SwiftSetting] = [
    .unsafeFlags(["-O", "-target-cpu", "haswell"]),
]

let package = Package(
    name: "SwiftLDM",
    products: [
        .executable(name: "ldm-train", targets: ["LDMTrain"]),
        .library(name: "TensorEngine", targets: ["TensorEngine"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // C shims: a module map and shim.h each, nothing else.
        .systemLibrary(name: "CDNNL", path: "Sources/CDNNL"),
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c"),
        .systemLibrary(name: "CHDF5", path: "Sources/CHDF5", pkgConfig: "hdf5-openmpi"),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        .systemLibrary(name: "CFastMath", path: "Sources/CFastMath"),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG"),
        .systemLibrary(name: "CJPEG", path: "Sources/CJPEG"),

        .target(name: "TensorEngine", dependencies: ["CDNNL", "CFastMath"], swiftSettings: kernelSettings),
        .target(name: "NN", dependencies: ["TensorEngine"], swiftSettings: kernelSettings),
        .target(name: "Diffusion", dependencies: ["TensorEngine"], swiftSettings: kernelSettings),
        .target(name: "Distributed", dependencies: ["TensorEngine", "CMPI"], swiftSettings: kernelSettings),
        .target(name: "Storage", dependencies: ["TensorEngine", "Distributed", "CHDF5", "CZlib"], swiftSettings: kernelSettings),
        .target(name: "Datasets", dependencies: ["TensorEngine", "Distributed", "Storage", "CPNG", "CJPEG", "CZlib"],
                swiftSettings: kernelSettings),
        .target(name: "Training", dependencies: ["TensorEngine", "NN", "Diffusion", "Distributed", "Storage", "Datasets",
                                                 .product(name: "Yams", package: "Yams")],
                swiftSettings: kernelSettings),
        // Op, model and scaling benchmarks (`ldm-train bench`) over the training steps.
        .target(name: "Benchmarks", dependencies: ["TensorEngine", "NN", "Diffusion", "Distributed", "Training"],
                swiftSettings: kernelSettings),
        .executableTarget(
            name: "LDMTrain",
            dependencies: [
                "TensorEngine", "Datasets", "Training", "Benchmarks",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        // Run by the distributed tests under Launch/mpirun-local: exact collective and bucket sums.
        .executableTarget(name: "CollectiveCheck", dependencies: ["Distributed", "TensorEngine"], swiftSettings: kernelSettings),
        .target(name: "TestSupport", dependencies: ["TensorEngine"], swiftSettings: kernelSettings),
        .testTarget(name: "TensorEngineTests", dependencies: ["TensorEngine", "TestSupport"]),
        .testTarget(name: "NNTests", dependencies: ["NN", "TensorEngine", "TestSupport"]),
        .testTarget(name: "DiffusionTests", dependencies: ["Diffusion", "NN", "TensorEngine", "TestSupport"]),
        .testTarget(name: "StorageTests", dependencies: ["Storage", "Distributed", "TestSupport"]),
        .testTarget(name: "ShimTests", dependencies: ["CDNNL", "CMPI", "CHDF5", "Storage"]),
        .testTarget(name: "CommandTests", dependencies: ["Training", "Benchmarks", "Datasets", "NN", "TensorEngine", "Storage", "Distributed",
                                                        "TestSupport"]),
    ],
    swiftLanguageModes: [.v5]
)
