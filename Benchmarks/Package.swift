// swift-tools-version:6.1
// Strata's benchmark suite (ordo-one/benchmark): one executable per module, throughput and allocations.
// Run from the repository root with `Tools/benchmarks` (all) or `Tools/benchmarks check` (allocation thresholds).
import PackageDescription

let benchmark: [Target.Dependency] = [.product(name: "Benchmark", package: "benchmark")]
let plugins: [Target.PluginUsage] = [.plugin(name: "BenchmarkPlugin", package: "benchmark")]

let package = Package(
    name: "StrataBenchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "Strata", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "CodecBenchmarks", dependencies: benchmark + [.product(name: "StrataCodec", package: "Strata")],
            path: "Benchmarks/CodecBenchmarks", plugins: plugins),
        .executableTarget(
            name: "FormatBenchmarks", dependencies: benchmark + [.product(name: "StrataFormat", package: "Strata")],
            path: "Benchmarks/FormatBenchmarks", plugins: plugins),
        .executableTarget(
            name: "EngineBenchmarks", dependencies: benchmark + [.product(name: "StrataIO", package: "Strata")],
            path: "Benchmarks/EngineBenchmarks", plugins: plugins),
        .executableTarget(
            name: "ChainBenchmarks", dependencies: benchmark + [.product(name: "StrataChain", package: "Strata")],
            path: "Benchmarks/ChainBenchmarks", plugins: plugins),
    ],
    swiftLanguageModes: [.v5]
)
