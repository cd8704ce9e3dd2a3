// swift-tools-version:6.1
// Strata: block-level, change-tracking, incremental disk imager.
// Module graph (see docs/DESIGN.md): strata -> {StrataChain, StrataBench}; StrataBench -> StrataChain;
// StrataChain -> {StrataFormat, StrataCodec, StrataIO, StrataS3 (S3 requests)}; StrataIO -> {CURing, CFuse (libfuse 3, for mount), CNBD (libnbd, NBD sources), CBlkid (libblkid, partition tables), CExt2fs (libext2fs, ext4 bitmaps), CNtfs (libntfs-3g, NTFS's $Bitmap), CXfs (XFS's free-space trees)}. The CLI imports StrataChain's and StrataBench's API only.
import PackageDescription

let swift6: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "Strata",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "strata", targets: ["strata"]),
        .library(name: "StrataChain", targets: ["StrataChain"]),
        .library(name: "StrataBench", targets: ["StrataBench"]),
        // For the benchmark package (Benchmarks/), which measures each module on its own.
        .library(name: "StrataFormat", targets: ["StrataFormat"]),
        .library(name: "StrataCodec", targets: ["StrataCodec"]),
        .library(name: "StrataIO", targets: ["StrataIO"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // The S3 store's HTTP client (SwiftNIO): it links statically, where Debian's libcurl cannot (docs/S3.md).
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        // Its buffers (ByteBuffer): an upload's parts are filled in place and sent without a copy.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
    ],
    targets: [
        .systemLibrary(name: "CURing", pkgConfig: "liburing", providers: [.apt(["liburing-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        // libnbd's header, the NBD client nbdcopy and virt-v2v use: captures from NBD exports (qemu-nbd,
        // qemu-storage-daemon, nbdkit). Not linked: StrataIO/LibNBD.swift loads it when an NBD source is opened.
        .systemLibrary(name: "CNBD", providers: [.apt(["libnbd-dev"])]),
        // util-linux's libblkid: partition tables and superblocks (StrataIO/DiskProbe.swift). Linked: Debian's
        // libblkid1 is essential, on every machine.
        .systemLibrary(name: "CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),
        // e2fsprogs' libext2fs: the block bitmaps of ext2/3/4 (capture --used-blocks), behind a small C interface.
        // Linked: Debian's libext2fs2 comes with e2fsprogs, on every machine.
        .target(name: "CExt2fs", linkerSettings: [.linkedLibrary("ext2fs"), .linkedLibrary("com_err")]),
        // ntfs-3g's libntfs-3g: the $Bitmap of an NTFS volume (capture --used-blocks), behind a small C interface.
        // Linked: Debian's libntfs-3g89 comes with ntfs-3g.
        .target(name: "CNtfs", linkerSettings: [.linkedLibrary("ntfs-3g")]),
        // XFS's free-space B+trees and log, read by hand with xfslibs-dev's on-disk headers (no library reads them).
        .target(name: "CXfs"),
        // The commit a binary was built from, written into it after the build (Tools/stamp-commit): `strata --version`.
        .target(name: "CBuildStamp"),
        // xxHash's header (libxxhash-dev) compiled in, AVX2 chosen at start-up where the CPU has it.
        .target(name: "CXXH3"),
        // AES-256-GCM from OpenSSL's libcrypto, keys from libsodium (encrypted chains; Sources/CSeal/include/CSeal.h).
        .target(name: "CSeal", linkerSettings: [.linkedLibrary("crypto"), .linkedLibrary("sodium")]),
        // Every module in Swift 6 language mode: the compiler checks what crosses threads (a thread's body is
        // @Sendable); each @unchecked Sendable left says in a line why it is safe. The tests are in Swift 5 mode.
        .target(name: "StrataFormat", swiftSettings: swift6),
        .target(name: "StrataCodec", dependencies: ["CZstd", "CXXH3", "CSeal"], swiftSettings: swift6),
        .target(name: "StrataIO", dependencies: ["CURing", "CFuse", "CNBD", "CBlkid", "CExt2fs", "CNtfs", "CXfs", "CBuildStamp"], swiftSettings: swift6),
        // Requests to S3-compatible stores: configuration, SigV4 signing (OpenSSL's SHA-256 and HMAC through CSeal).
        .target(name: "StrataS3", dependencies: [
            "CSeal", "StrataIO", .product(name: "AsyncHTTPClient", package: "async-http-client"), .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], swiftSettings: swift6),
        .target(name: "StrataChain", dependencies: ["StrataFormat", "StrataCodec", "StrataIO", "StrataS3", .product(name: "NIOCore", package: "swift-nio")], swiftSettings: swift6),
        .target(name: "StrataBench", dependencies: ["StrataChain", "StrataFormat", "StrataCodec", "StrataIO"], swiftSettings: swift6),
        .executableTarget(
            name: "strata",
            dependencies: ["StrataChain", "StrataBench", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swift6),
        // Child processes with deadlines and a RADOS Gateway, shared by the test targets.
        .target(name: "TestSupport", dependencies: ["StrataS3"], path: "Tests/TestSupport"),
        .testTarget(name: "StrataFormatTests", dependencies: ["StrataFormat"], exclude: ["Golden"]),
        .testTarget(name: "StrataCodecTests", dependencies: ["StrataCodec", "CXXH3"]),
        .testTarget(name: "StrataIOTests", dependencies: ["StrataIO"]),
        .testTarget(name: "StrataS3Tests", dependencies: ["StrataS3", "TestSupport", .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "StrataChainTests", dependencies: ["StrataChain", "StrataFormat", "StrataCodec", "StrataIO", "TestSupport"]),
        .testTarget(name: "StrataCLITests", dependencies: ["strata", "TestSupport", "StrataS3"]),
        // The modules' fences, read from Sources/: what each may import (docs/DESIGN.md, "Modules").
        .testTarget(name: "LayerTests"),
    ],
    swiftLanguageModes: [.v5]
)
