// Captures from NBD servers this test starts itself: qemu-nbd serving a qcow2 whose nights of writes,
// write-zeroes and discards (qemu-io) are captured through dirty bitmaps rotated by Packaging/strata-qemu-capture;
// a qemu-storage-daemon disk written to during the capture (the point is the export's instant); a bitmap that
// misses writes, is missing or is not the one started at the newest point; hostile servers (Fixtures/hostile-nbd.py).
import Foundation
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class NBDSourceTests: XCTestCase {
    var dir = ""
    var children: [ChildProcess] = []
    static let rotation = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Packaging/strata-qemu-capture").path
    static let hostile = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/hostile-nbd.py").path

    override func setUpWithError() throws {
        for tool in ["qemu-img", "qemu-nbd", "qemu-io"] where toolOutput(["sh", "-c", "command -v \(tool)"]).isEmpty {
            throw XCTSkip("\(tool) is not installed (Tools/setup installs qemu-utils)")
        }
        dir = try scratchDirectory("strata-nbd")
    }

    override func tearDown() {
        for c in children where c.isRunning {
            kill(c.pid, SIGKILL)
            _ = c.finish()
        }
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func sh(_ script: String, file: StaticString = #filePath, line: UInt = #line) {
        let r = runProcess("/bin/sh", ["-c", script])
        XCTAssertEqual(r.status, 0, "\(script): \(r.stderr)", file: file, line: line)
    }

    /// Packaging/strata-qemu-capture with the strata under test; its status, stdout and stderr.
    private func rotate(_ args: [String]) -> ProcessResult {
        setenv("STRATA", strataBinary, 1)
        return runProcess("/usr/bin/python3", [Self.rotation] + args)
    }

    private func restores(_ chain: String, point: Int, to expected: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try strata("restore", chain, "\(dir)/out.img", "--point", String(point), "--force", "--quiet")
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        XCTAssertTrue(FileManager.default.contentsEqual(atPath: "\(dir)/out.img", andPath: expected), "point \(point) differs from \(expected)", file: file, line: line)
    }

    /// qemu-nbd serving `image` read-only on a unix socket (with the bitmaps given); returns the URI.
    private func serve(_ image: String, bitmaps: [String] = [], format: String = "qcow2") throws -> String {
        let sock = "\(dir)/nbd-\(UUID().uuidString.prefix(8)).sock"
        children.append(try startQemuNBD(image, socket: sock, ["-r", "-t", "-f", format] + bitmaps.flatMap { ["-B", $0] }))
        return "nbd+unix:///?socket=\(sock)"
    }

    func testNightsThroughQemuNBDWithTheBitmapRotation() throws {
        let image = "\(dir)/vm.qcow2", chain = "\(dir)/chain"
        sh("qemu-img create -q -f qcow2 \(image) 48M && qemu-io -f qcow2 -c 'write -P 0x21 0 20M' -c 'write -P 0x7e 30M 6M' \(image) >/dev/null")
        var rng = SystemRandomNumberGenerator()
        for night in 0..<6 {
            if night > 0 {
                // Random writes, write-zeroes and discards, 4 KiB aligned or not.
                var commands: [String] = []
                for _ in 0..<Int.random(in: 2...8, using: &rng) {
                    let offset = Int.random(in: 0..<(47 << 20), using: &rng) / 512 * 512
                    let length = Int.random(in: 1...64, using: &rng) * 512
                    switch Int.random(in: 0..<3, using: &rng) {
                    case 0: commands.append("write -P \(Int.random(in: 1...255, using: &rng)) \(offset) \(length)")
                    case 1: commands.append("write -z \(offset / 65536 * 65536) 65536")
                    default: commands.append("discard \(offset / 65536 * 65536) 65536")
                    }
                }
                sh("qemu-io -f qcow2 \(commands.map { "-c '\($0)'" }.joined(separator: " ")) \(image) >/dev/null")
            }
            let r = rotate(["--image", image, chain, "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let json = jsonObject(r.stdout)
            if night == 0 { XCTAssertEqual(json["changeSource"] as? String, "scan") }
            if night > 0 {
                XCTAssertTrue((json["changeSource"] as? String ?? "").hasPrefix("dirty-bitmap:strata-"), "night \(night): \(json)")
                XCTAssertLessThanOrEqual(json["bytesRead"] as? Int ?? .max, 8 * 65536 + 2 * 4096 * 8, "night \(night): only what the bitmap marks")
            }
            sh("qemu-img convert -O raw \(image) \(dir)/night-\(night + 1).raw")
        }
        for point in 1...6 { try restores(chain, point: point, to: "\(dir)/night-\(point).raw") }
        let bitmaps = toolOutput(["sh", "-c", "qemu-img info --output=json \(image) | python3 -c 'import json,sys; print(\" \".join(b[\"name\"] for b in json.load(sys.stdin)[\"format-specific\"][\"data\"].get(\"bitmaps\", [])))'"])
        XCTAssertEqual(bitmaps.split(separator: " ").count, 1, "the old bitmap is removed after each capture: \(bitmaps)")
        XCTAssertEqual(jsonObject(try strata("list", chain, "--json").stdout)["dirtyBitmap"] as? String, bitmaps)
    }

    func testABitmapThatMissesWritesIsCaughtAndOneMissingOrForeignIsNotTrusted() throws {
        let image = "\(dir)/vm.qcow2", chain = "\(dir)/chain"
        sh("qemu-img create -q -f qcow2 \(image) 16M && qemu-io -f qcow2 -c 'write -P 0x21 0 12M' \(image) >/dev/null")
        var uri = try serve(image)
        XCTAssertEqual(try strata("capture", uri, chain, "--next-dirty-bitmap", "b1", "--quiet").status, 0)
        terminate(&children)
        // A write before the bitmap started: b1 misses it (a workflow that lost the handshake).
        sh("qemu-io -f qcow2 -c 'write -P 0x55 9M 4k' \(image) >/dev/null && qemu-img bitmap --add -g 4096 \(image) b1 && qemu-io -f qcow2 -c 'write -P 0x66 1M 4k' \(image) >/dev/null")
        uri = try serve(image, bitmaps: ["b1"])
        var r = try strata("capture", uri, chain, "--dirty-bitmap", "b1", "--next-dirty-bitmap", "b2", "--check-unchanged", "100", "--json")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(jsonObject(r.stdout)["missedChangeAt"] as? Int, 9 << 20, r.stdout)
        XCTAssertEqual(jsonObject(r.stdout)["changeSource"] as? String, "scan-after-missed-writes")
        XCTAssertTrue(r.stderr.contains("called the block at byte 9437184 unchanged, and it changed: it missed writes; scanning the whole source"), r.stderr)
        sh("qemu-img convert -O raw \(image) \(dir)/now.raw")
        try restores(chain, point: 2, to: "\(dir)/now.raw")

        // b2 was recorded as started at point 2; a bitmap of another name, or none exported: notice, scan.
        r = try strata("capture", uri, chain, "--dirty-bitmap", "b1", "--json")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(jsonObject(r.stdout)["changeSource"] as? String, "scan")
        XCTAssertEqual(r.stderr, "strata: dirty bitmap b1 does not cover every write since point 2: the bitmap started at point 2 is b2: scanning the whole source\n")
        r = try strata("capture", uri, chain, "--dirty-bitmap", "b2", "--next-dirty-bitmap", "b3", "--json")
        XCTAssertEqual(jsonObject(r.stdout)["changeSource"] as? String, "scan")
        XCTAssertEqual(r.stderr, "strata: no dirty bitmap is recorded as started at point 3 (--next-dirty-bitmap names it): scanning the whole source\n")
        r = try strata("capture", uri, chain, "--dirty-bitmap", "b3", "--require-change-source")
        XCTAssertEqual(r.status, 69, r.stderr)
        XCTAssertEqual(r.stderr, "strata: error: cannot read only what changed: \(uri) exports no dirty bitmap b3 (missing, or inconsistent after a crash); with --require-change-source nothing was written: capture without it to scan the whole source\n")
        XCTAssertEqual(try strata("verify", chain, "--quiet").status, 0)
        // An export of another size than the chain's source is refused.
        terminate(&children)
        sh("qemu-img create -q -f qcow2 \(dir)/other.qcow2 8M")
        r = try strata("capture", try serve("\(dir)/other.qcow2"), chain)
        XCTAssertEqual(r.status, 65, r.stderr)
    }

    func testALiveDiskThroughQemuStorageDaemonIsCapturedAtOneInstant() throws {
        if toolOutput(["sh", "-c", "command -v qemu-storage-daemon"]).isEmpty { throw XCTSkip("qemu-storage-daemon is not installed (Tools/setup installs qemu-system-common)") }
        let image = "\(dir)/live.qcow2", chain = "\(dir)/chain", qmp = "\(dir)/qmp.sock", rw = "\(dir)/rw.sock"
        let blocks = 256
        sh("qemu-img create -q -f qcow2 \(image) 4M && qemu-io -f qcow2 -c 'write -P 1 0 1M' \(image) >/dev/null")
        children.append(try ChildProcess("/usr/bin/env", [
            "qemu-storage-daemon", "--blockdev", "driver=file,node-name=file0,filename=\(image)", "--blockdev", "driver=qcow2,node-name=disk0,file=file0",
            "--chardev", "socket,path=\(qmp),server=on,wait=off,id=qmp0", "--monitor", "chardev=qmp0",
            "--nbd-server", "addr.type=unix,addr.path=\(rw)", "--export", "type=nbd,id=rw,node-name=disk0,name=rw,writable=on",
        ], quiet: true))
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: qmp) || !FileManager.default.fileExists(atPath: rw) { usleep(20_000) }
        XCTAssertEqual(rotate(["--qmp", qmp, "--node", "disk0", "--nbd-socket", rw, chain, "--quiet"]).status, 0)
        // A writer sweeps the first 256 blocks again and again, each sweep with the next byte, a write every 2 ms:
        // a state of one instant has one place where the sweep is (blocks before it one byte ahead of those after).
        let sweeps = (0..<12).flatMap { s in (0..<blocks).map { b in "-c 'write -P \(2 + s) \(b * 4096) 4096' -c 'sleep 2'" } }
        let writer = try ChildProcess("/bin/sh", ["-c", "qemu-io -f raw \(sweeps.joined(separator: " ")) 'nbd+unix:///rw?socket=\(rw)' >/dev/null"], quiet: true)
        children.append(writer)
        usleep(600_000)
        let r = rotate(["--qmp", qmp, "--node", "disk0", "--nbd-socket", rw, chain, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(writer.isRunning, "the writer was still writing when the capture ended")
        XCTAssertTrue((jsonObject(r.stdout)["changeSource"] as? String ?? "").hasPrefix("dirty-bitmap:"), r.stdout)
        XCTAssertEqual(try strata("restore", chain, "\(dir)/instant.img", "--force", "--quiet").status, 0)
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/instant.img")))
        let marks = (0..<blocks).map { b in bytes[b * 4096] }
        XCTAssertTrue((0..<blocks).allSatisfy { b in bytes[(b * 4096)..<((b + 1) * 4096)].allSatisfy { $0 == marks[b] } }, "whole blocks")
        let drops = (1..<blocks).filter { marks[$0] != marks[$0 - 1] }
        XCTAssertLessThanOrEqual(drops.count, 1, "one instant: \(marks)")
        XCTAssertTrue(drops.allSatisfy { marks[$0] + 1 == marks[$0 - 1] }, "\(marks)")
        XCTAssertGreaterThan(marks[0], 1, "the writer had begun")
        // The writes after the instant land in the next point.
        _ = writer.finish()
        XCTAssertEqual(rotate(["--qmp", qmp, "--node", "disk0", "--nbd-socket", rw, chain, "--quiet"]).status, 0)
        sh("nbdcopy 'nbd+unix:///rw?socket=\(rw)' \(dir)/final.raw")
        try restores(chain, point: 3, to: "\(dir)/final.raw")
    }

    func testHostileAndBrokenServersGiveOneLineAndLeaveNoChain() throws {
        func run(_ mode: [String], _ status: Int32, _ message: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let sock = "\(dir)/hostile-\(mode[0]).sock", chain = "\(dir)/chain-\(mode[0])"
            let server = try ChildProcess("/usr/bin/python3", [Self.hostile, sock, String(8 << 20)] + mode, quiet: true)
            children.append(server)
            for _ in 0..<200 where !FileManager.default.fileExists(atPath: sock) { usleep(20_000) }
            let r = try strata("capture", "nbd+unix:///?socket=\(sock)", chain)
            XCTAssertEqual(r.status, status, r.stderr, file: file, line: line)
            XCTAssertTrue(r.stderr.hasPrefix("strata: error: ") && r.stderr.contains(message) && r.stderr.filter { $0 == "\n" }.count == 1, r.stderr, file: file, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(chain)/chain.manifest"), file: file, line: line)
        }
        try run(["garbage"], 66, "server did not send expected NBD magic")
        try run(["refuse"], 66, "has no export named")
        try run(["extents-past"], 66, "the server described more than was asked")
        try run(["extents-empty"], 66, "the server sent an empty extent at byte 0")
        try run(["drop-after", "3"], 74, "Transport endpoint is not connected")
        try run(["read-error"], 74, "Input/output error")
        // A server whose block status calls its data zeros: the share of its "zeros" read as a check finds data,
        // and the capture reads every block instead (the test reads all of them, so it must be caught).
        let liar = "\(dir)/liar.sock"
        children.append(try ChildProcess("/usr/bin/python3", [Self.hostile, liar, String(8 << 20), "zero-lie"], quiet: true))
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: liar) { usleep(20_000) }
        let lied = try strata("capture", "nbd+unix:///?socket=\(liar)", "\(dir)/lied", "--check-unchanged", "100", "--json")
        XCTAssertEqual(lied.status, 0, lied.stderr)
        XCTAssertEqual(lied.stderr, "strata: nbd+unix:///?socket=\(liar): the server called the bytes at 0 zeros (block status), and they are not; reading every block\n")
        XCTAssertEqual(jsonObject(lied.stdout)["bytesRead"] as? Int, 8 << 20)
        let pattern = Data((0..<(8 << 20)).map { UInt8($0 % 251) })
        try pattern.write(to: URL(fileURLWithPath: "\(dir)/pattern.raw"))
        try restores("\(dir)/lied", point: 1, to: "\(dir)/pattern.raw")
        let missing = try strata("capture", "nbd+unix:///?socket=\(dir)/nothing.sock", "\(dir)/c")
        XCTAssertEqual(missing.status, 66)
        XCTAssertEqual(missing.stderr, "strata: error: cannot read NBD export nbd+unix:///?socket=\(dir)/nothing.sock: nbd_connect_uri: connect: No such file or directory; the chain was not changed: check that the server runs and exports it to this host\n")
        let bitmapOnAFile = try strata("capture", "\(dir)/x.img", "\(dir)/c", "--dirty-bitmap", "b")
        XCTAssertEqual(bitmapOnAFile.status, 64, bitmapOnAFile.stderr)
    }

    /// nbds://: qemu-nbd with an X.509 certificate (a CA this test makes) on 127.0.0.1; the client trusts that CA
    /// (tls-certificates in the URI). Plain nbd:// to the same server is refused by it, and so is TLS to a server
    /// whose certificate no trusted CA signed.
    func testTLSExportsAreReadOverNBDS() throws {
        if toolOutput(["sh", "-c", "command -v openssl"]).isEmpty { throw XCTSkip("openssl is not installed (Tools/setup installs it)") }
        let tls = "\(dir)/tls", client = "\(dir)/client", stranger = "\(dir)/stranger"
        sh("""
            mkdir -p \(tls) \(client) \(stranger) && cd \(tls) && \
            openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem -days 2 -subj '/CN=strata test CA' 2>/dev/null && \
            openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj '/CN=localhost' 2>/dev/null && \
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && \
            openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -out server-cert.pem -days 2 -extfile ext.cnf 2>/dev/null && \
            cp ca-cert.pem \(client)/ && \
            openssl req -x509 -newkey rsa:2048 -nodes -keyout \(stranger)/key.pem -out \(stranger)/ca-cert.pem -days 2 -subj '/CN=another CA' 2>/dev/null
            """)
        let raw = "\(dir)/disk.raw"
        try makeDisk(raw, size: 8 << 20, seed: 6)
        let port = 20000 + Int(getpid() % 20000)
        children.append(try ChildProcess("/usr/bin/env", [
            "qemu-nbd", "-r", "-t", "-f", "raw", "--object", "tls-creds-x509,id=tls0,endpoint=server,dir=\(tls),verify-peer=no",
            "--tls-creds", "tls0", "-b", "127.0.0.1", "-p", String(port), raw,
        ], quiet: true))
        for _ in 0..<200 where runProcess("/bin/sh", ["-c", "nbdinfo --size 'nbds://localhost:\(port)/?tls-certificates=\(client)' >/dev/null 2>&1"]).status != 0 { usleep(20_000) }
        let r = try strata("capture", "nbds://localhost:\(port)/?tls-certificates=\(client)", "\(dir)/chain", "--json")
        XCTAssertEqual(r.status, 0, r.stderr)
        try restores("\(dir)/chain", point: 1, to: raw)
        let plain = try strata("capture", "nbd://localhost:\(port)/", "\(dir)/plain")
        XCTAssertEqual(plain.status, 66, plain.stderr)
        XCTAssertTrue(plain.stderr.contains("server requires TLS encryption first"), plain.stderr)
        let untrusted = try strata("capture", "nbds://localhost:\(port)/?tls-certificates=\(stranger)", "\(dir)/untrusted")
        XCTAssertEqual(untrusted.status, 66, untrusted.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/untrusted/chain.manifest"))
    }

    func testACaptureOfAnExportCostsAboutWhatAFileDoesAndMatchesIt() throws {
        // The same raw file through qemu-nbd and directly: the same image content, holes not read either way.
        let raw = "\(dir)/disk.raw"
        try makeDisk(raw, size: 24 << 20, seed: 4)
        sh("truncate -s 40M \(raw)")
        let direct = try strata("capture", raw, "\(dir)/direct", "--json")
        let nbd = try strata("capture", try serve(raw, format: "raw"), "\(dir)/nbd", "--json")
        XCTAssertEqual(nbd.status, 0, nbd.stderr)
        XCTAssertEqual(jsonObject(nbd.stdout)["engine"] as? String, "nbd")
        XCTAssertEqual(jsonObject(nbd.stdout)["bytesRead"] as? Int, jsonObject(direct.stdout)["bytesRead"] as? Int, "holes are not read through NBD either")
        try restores("\(dir)/nbd", point: 1, to: raw)
        // Every hole read as a check: an honest server's zeros are zeros (no notice), and the image is the same.
        let checked = try strata("capture", try serve(raw, format: "raw"), "\(dir)/checked", "--check-unchanged", "100", "--json")
        XCTAssertEqual(checked.status, 0, checked.stderr)
        XCTAssertEqual(checked.stderr, "")
        XCTAssertEqual(jsonObject(checked.stdout)["bytesRead"] as? Int, 40 << 20)
        try restores("\(dir)/checked", point: 1, to: raw)
    }
}
