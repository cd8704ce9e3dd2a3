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
    // One target per module: (benchmark target, the Strata library it measures).
    targets: [("CodecBenchmarks", "StrataCodec"), ("FormatBenchmarks", "StrataFormat"), ("EngineBenchmarks", "StrataIO"),
              ("ChainBenchmarks", "StrataChain")].map { name, module in
        .executableTarget(
            name: name, dependencies: benchmark + [.product(name: module, package: "Strata")],
            path: "Benchmarks/\(name)", plugins: plugins)
    },
    swiftLanguageModes: [.v5]
)
