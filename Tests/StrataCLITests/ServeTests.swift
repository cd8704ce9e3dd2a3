// `strata serve`: real NBD clients (nbdinfo, nbdcopy, qemu-img from Debian's libnbd-bin and qemu-utils) read
// every point as its restore gives it and see its zero extents; two clients at once; a raw client's bad requests
// get NBD errors (EINVAL past the end, EPERM for a write) and garbage ends only its own connection; SIGTERM stops
// the server and removes its socket; bad input gets one line and its exit code.
import Foundation
import TestSupport
import XCTest

final class ServeTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        for tool in ["nbdinfo", "nbdcopy", "qemu-img"] where toolOutput(["sh", "-c", "command -v \(tool)"]).isEmpty {
            throw XCTSkip("\(tool) is not installed (Tools/setup installs it)")
        }
        dir = try scratchDirectory("strata-serve")
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func contents(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// A chain of three points and a merge of 1..2; the restored bytes of each point.
    private func makeChain() throws -> (chain: String, points: [Int: Data]) {
        let chain = "\(dir)/chain"
        var points: [Int: Data] = [:]
        for night in 0..<3 {
            try makeDisk("\(dir)/disk", size: 6 << 20, seed: 31, changes: 60 * night)
            XCTAssertEqual(try strata("capture", "\(dir)/disk", chain, "--quiet").status, 0)
            points[night + 1] = try contents("\(dir)/disk")
        }
        XCTAssertEqual(try strata("merge", chain, "--from", "1", "--to", "2", "--quiet").status, 0)
        points[1] = nil
        return (chain, points)
    }

    /// Starts `strata serve` on a Unix socket and waits until it listens.
    private func serve(_ chain: String, _ extra: [String] = []) throws -> (ChildProcess, String) {
        let socket = "\(dir)/nbd.sock"
        let p = try ChildProcess(strataBinary, ["serve", chain, "--socket", socket] + extra, deadline: 300)
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: socket) { usleep(50_000) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: socket), "the server did not listen")
        return (p, socket)
    }

    private func uri(_ socket: String, _ export: String) -> String { "nbd+unix:///\(export)?socket=\(socket)" }

    func testRealClientsReadEveryPointAndSkipZeros() throws {
        let (chain, points) = try makeChain()
        let (server, socket) = try serve(chain)
        defer {
            kill(server.pid, SIGTERM)
            let r = server.finish()
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "SIGTERM removes the socket")
        }
        for (point, bytes) in points {
            XCTAssertEqual(runTool("/usr/bin/env", ["nbdcopy", uri(socket, "\(point)"), "\(dir)/copy-\(point).img"]), 0)
            XCTAssertEqual(try contents("\(dir)/copy-\(point).img"), bytes, "nbdcopy of point \(point)")
            XCTAssertEqual(runTool("/usr/bin/env", ["qemu-img", "convert", "-O", "raw", uri(socket, "\(point)"), "\(dir)/qemu-\(point).img"]), 0)
            XCTAssertEqual(try contents("\(dir)/qemu-\(point).img"), bytes, "qemu-img convert of point \(point)")
        }
        // Block sizes: any byte, a frame's span preferred (nbdcopy then asks 1 MiB at a time), 32 MiB at most.
        let info = jsonObject(toolOutput(["nbdinfo", "--json", uri(socket, "3")]))
        let export = (info["exports"] as? [[String: Any]])?.first
        XCTAssertEqual(export?["block_size_minimum"] as? Int, 1)
        XCTAssertEqual(export?["block_size_preferred"] as? Int, 1 << 20)
        XCTAssertEqual(export?["block_size_maximum"] as? Int, 32 << 20)
        XCTAssertEqual(export?["export-size"] as? Int, points[3]!.count)
        // "" is the newest point.
        XCTAssertEqual(runTool("/usr/bin/env", ["nbdcopy", uri(socket, ""), "\(dir)/newest.img"]), 0)
        XCTAssertEqual(try contents("\(dir)/newest.img"), points[3])
        // The map: every zero 4 KiB block of the point is in a hole,zero extent, every other in a data extent.
        let map = toolOutput(["nbdinfo", "--map", uri(socket, "3")]).split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        let disk = [UInt8](points[3]!)
        var covered = 0
        for line in map {
            let offset = Int(line[0])!, length = Int(line[1])!, zero = line[2] == "3"
            for b in stride(from: offset, to: offset + length, by: 4096) {
                XCTAssertEqual(disk[b..<min(b + 4096, disk.count)].allSatisfy { $0 == 0 }, zero, "block at \(b)")
            }
            covered += length
        }
        XCTAssertEqual(covered, disk.count)
        XCTAssertTrue(map.contains { $0[2] == "3" }, "the disk has zero blocks to report")
        // Two clients at once.
        let a = try ChildProcess("/usr/bin/env", ["nbdcopy", uri(socket, "2"), "\(dir)/a.img"])
        let b = try ChildProcess("/usr/bin/env", ["nbdcopy", uri(socket, "3"), "\(dir)/b.img"])
        XCTAssertEqual(a.finish().status, 0)
        XCTAssertEqual(b.finish().status, 0)
        XCTAssertEqual(try contents("\(dir)/a.img"), points[2])
        XCTAssertEqual(try contents("\(dir)/b.img"), points[3])
    }

    /// A client speaking the protocol by hand: reads past the end get EINVAL, writes EPERM, a read in range the
    /// point's bytes; an unknown export closes the connection; garbage ends its connection and nothing else.
    func testBadRequestsGetErrorsAndGarbageEndsOnlyItsConnection() throws {
        let (chain, points) = try makeChain()
        let (server, socket) = try serve(chain)
        defer {
            kill(server.pid, SIGTERM)
            _ = server.finish()
        }
        let script = """
            import socket, struct, sys, json
            def connect(name):
                s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
                def recv(n):
                    b = b''
                    while len(b) < n:
                        c = s.recv(n - len(b))
                        if not c: raise EOFError
                        b += c
                    return b
                magic, opt, flags = struct.unpack('>QQH', recv(18))
                assert magic == 0x4e42444d41474943 and opt == 0x49484156454F5054
                s.sendall(struct.pack('>I', 3))
                s.sendall(struct.pack('>QII', 0x49484156454F5054, 1, len(name)) + name)
                size, tflags = struct.unpack('>QH', recv(10))
                return s, recv, size, tflags
            out = {}
            s, recv, size, tflags = connect(b'3')
            out['size'] = size; out['readOnly'] = bool(tflags & 2)
            def request(kind, offset, length, payload=b''):
                s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, kind, 7, offset, length) + payload)
                magic, error, cookie = struct.unpack('>IIQ', recv(16))
                assert magic == 0x67446698 and cookie == 7
                return error, (recv(length) if error == 0 and kind == 0 else b'')
            out['pastEnd'] = request(0, size - 100, 4096)[0]
            out['write'] = request(1, 0, 512, b'x' * 512)[0]
            err, data = request(0, 12345, 5000)
            out['read'] = err; out['data'] = data.hex()
            s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 2, 8, 0, 0))
            try:
                connect(b'99')
                out['unknownExport'] = 'served'
            except (EOFError, ConnectionError):
                out['unknownExport'] = 'closed'
            g = socket.socket(socket.AF_UNIX); g.connect(sys.argv[1]); g.recv(18); g.sendall(b'\\xff' * 4 + b'garbage' * 100)
            try:
                out['garbage'] = 'closed' if g.recv(100) == b'' else 'answered'
            except ConnectionError:
                out['garbage'] = 'closed'
            print(json.dumps(out))
            """
        let r = runProcess("/usr/bin/python3", ["-c", script, socket])
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = jsonObject(r.stdout)
        XCTAssertEqual(out["size"] as? Int, points[3]!.count)
        XCTAssertEqual(out["readOnly"] as? Bool, true)
        XCTAssertEqual(out["pastEnd"] as? Int, 22, "EINVAL")
        XCTAssertEqual(out["write"] as? Int, 1, "EPERM")
        XCTAssertEqual(out["read"] as? Int, 0)
        XCTAssertEqual(out["data"] as? String, points[3]![12345..<(12345 + 5000)].map { String(format: "%02x", $0) }.joined())
        XCTAssertEqual(out["unknownExport"] as? String, "closed")
        XCTAssertEqual(out["garbage"] as? String, "closed")
        // The server still serves.
        XCTAssertEqual(runTool("/usr/bin/env", ["nbdcopy", uri(socket, "2"), "\(dir)/after.img"]), 0)
        XCTAssertEqual(try contents("\(dir)/after.img"), points[2])
    }

    func testBadInputGetsOneLineAndItsExitCode() throws {
        let (chain, _) = try makeChain()
        _ = FileManager.default.createFile(atPath: "\(dir)/taken", contents: Data())
        let taken = try strata("serve", chain, "--socket", "\(dir)/taken")
        XCTAssertEqual(taken.status, 73)
        XCTAssertTrue(taken.stderr.hasPrefix("strata: error: "), taken.stderr)
        XCTAssertEqual(taken.stderr.split(separator: "\n").count, 1, taken.stderr)
        XCTAssertEqual(try strata("serve", chain, "--socket", "\(dir)/s", "--point", "9").status, 64)
        XCTAssertEqual(try strata("serve", "\(dir)/nothing", "--socket", "\(dir)/s").status, 65)
        XCTAssertEqual(try strata("serve", chain).status, 64, "one of --socket or --port is needed")
        XCTAssertEqual(try strata("serve", chain, "--socket", "\(dir)/s", "--port", "10809").status, 64)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/s"))
    }
}
