// Helpers for chain tests: scratch directories, a deterministic random source, and a disk model whose nights
// change the way real disks do (overwrites, zeroed ranges, writes at the end, quiet nights).
import Foundation
import StrataChain
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

func scratchDirectory(_ tag: String = "chain") throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("strata-\(tag)-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// SplitMix64: reproducible sequences from a printed seed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A disk captured night after night into a chain, with what each point must restore to: a disk of `size` bytes
/// whose first `random` bytes are random (incompressible frames of 1 MiB of blocks), the rest DiskModel's night 0.
final class Nights {
    let chain: String
    let source: String
    var rng: SeededGenerator
    var disk: DiskModel
    var states: [UInt32: [UInt8]] = [:]

    init(chain: String, source: String, seed: UInt64, size: Int, random: Int) {
        (self.chain, self.source) = (chain, source)
        rng = SeededGenerator(seed: seed)
        disk = DiskModel(size: size, rng: &rng)
        overwrite(at: 0, count: random)
    }

    func overwrite(at offset: Int, count: Int) { disk.overwrite(at: offset, count: count, rng: &rng) }

    /// Captures the disk as it is now; returns the point.
    @discardableResult
    func capture() throws -> UInt32 {
        try disk.writeSparse(to: source)
        let point = try Capture.run(source: source, chain: chain, options: CaptureOptions()).point
        states[point] = disk.bytes
        return point
    }
}

/// The content of a disk, changed night by night.
struct DiskModel {
    var bytes: [UInt8]

    init(size: Int, rng: inout SeededGenerator) {
        bytes = [UInt8](repeating: 0, count: size)
        // Night 0: compressible "files" in the first half, random data, zero gaps elsewhere.
        var at = 0
        while at < size / 2 {
            let len = min(Int.random(in: 1000...200_000, using: &rng), size - at)
            let pattern = UInt8.random(in: 1...250, using: &rng)
            for i in 0..<len { bytes[at + i] = i % 97 == 0 ? UInt8.random(in: 0...255, using: &rng) : pattern &+ UInt8(i % 5) }
            at += len + Int.random(in: 0...70_000, using: &rng)
        }
        overwrite(at: size * 3 / 4, count: size / 16, rng: &rng)
    }

    mutating func overwrite(at offset: Int, count: Int, rng: inout SeededGenerator) {
        let end = min(bytes.count, offset + count)
        for i in offset..<end { bytes[i] = UInt8.random(in: 0...255, using: &rng) }
    }

    mutating func zero(at offset: Int, count: Int) {
        let end = min(bytes.count, offset + count)
        for i in offset..<end { bytes[i] = 0 }
    }

    /// One night of random change; `kind` picks the kind so tests can make sure each happens.
    mutating func night(_ kind: Int, rng: inout SeededGenerator) {
        let size = bytes.count
        switch kind % 4 {
        case 0:  // scattered overwrites, some unaligned
            for _ in 0..<Int.random(in: 1...40, using: &rng) {
                overwrite(at: Int.random(in: 0..<size, using: &rng), count: Int.random(in: 1...20_000, using: &rng), rng: &rng)
            }
        case 1:  // zeroed ranges (deleted files, discards)
            for _ in 0..<Int.random(in: 1...5, using: &rng) {
                zero(at: Int.random(in: 0..<size, using: &rng), count: Int.random(in: 1...300_000, using: &rng))
            }
        case 2:  // appends at the end of the device region
            let n = Int.random(in: 1...100_000, using: &rng)
            overwrite(at: size - n, count: n, rng: &rng)
        default:  // nothing changed at all
            break
        }
    }

    /// Writes the model to `path` as a sparse file: 64 KiB runs of zeros are left as holes.
    func writeSparse(to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        defer { close(fd) }
        ftruncate(fd, off_t(bytes.count))
        let run = 65536
        try bytes.withUnsafeBytes { b in
            var at = 0
            while at < b.count {
                let n = min(run, b.count - at)
                if !b[at..<(at + n)].allSatisfy({ $0 == 0 }) {
                    guard pwrite(fd, b.baseAddress! + at, n, off_t(at)) == n else { throw POSIXError(.EIO) }
                }
                at += n
            }
        }
        fsync(fd)
    }

    /// Writes the model onto a block device (or any file) in place, zeros included.
    func writeInPlace(to path: String) throws {
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        defer { close(fd) }
        try bytes.withUnsafeBytes { guard pwrite(fd, $0.baseAddress!, $0.count, 0) == $0.count else { throw POSIXError(.EIO) } }
        fsync(fd)
    }
}

/// Reads a file or a block device (Foundation refuses devices), the first `count` bytes or all of a file.
func readFile(_ path: String, count: Int? = nil) throws -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw POSIXError(.ENOENT) }
    defer { close(fd) }
    var st = stat()
    fstat(fd, &st)
    let n = count ?? Int(st.st_size)
    var out = [UInt8](repeating: 0, count: n)
    var done = 0
    while done < n {
        let r = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, n - done, off_t(done)) }
        if r <= 0 { break }
        done += r
    }
    return Array(out[0..<done])
}

/// Runs a command (within the deadline every test child has), returning its exit status and stdout.
@discardableResult
func shell(_ args: [String]) -> (status: Int32, output: String) {
    let r = runProcess("/usr/bin/env", args)
    XCTAssertFalse(r.timedOut, "\(args.joined(separator: " ")) did not finish and was killed")
    return (r.status, r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
}

/// A fixture that could not be set up on a machine that should allow it: the test fails, it does not skip.
struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A loop device over a file, detached at deinit; nil (with a reason) where loop devices are unavailable.
final class LoopDevice {
    let path: String
    let backing: String

    static func unavailableReason() -> String? {
        if getuid() != 0 { return "loop devices need root" }
        if shell(["losetup", "--version"]).status != 0 { return "losetup is not installed" }
        return nil
    }

    init(size: Int, in dir: String) throws {
        backing = "\(dir)/loop-\(UUID().uuidString).img"
        _ = FileManager.default.createFile(atPath: backing, contents: nil)
        guard truncate(backing, off_t(size)) == 0 else { throw POSIXError(.EIO) }
        let r = shell(["losetup", "-f", "--show", backing])
        guard r.status == 0, r.output.hasPrefix("/dev/loop") else { throw TestFailure("losetup failed on a machine that has loop devices") }
        path = r.output
    }

    deinit {
        shell(["losetup", "-d", path])
        unlink(backing)
    }
}

extension RestoreOptions {
    /// Tests restore into the same scratch file again and again: they replace it, as `--force` does.
    static var overwriting: RestoreOptions {
        var o = RestoreOptions()
        o.force = true
        return o
    }
}
