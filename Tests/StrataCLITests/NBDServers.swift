// qemu-nbd as the NBD tests start it: on a unix socket, returned once the socket is there; and stopping the
// servers a test started.
import Foundation
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// qemu-nbd serving `image` with `options` on the unix socket `socket`, started and waited for (until the socket
/// appears); its URI is `nbd+unix:///?socket=SOCKET`.
func startQemuNBD(_ image: String, socket: String, _ options: [String]) throws -> ChildProcess {
    let server = try ChildProcess("/usr/bin/env", ["qemu-nbd", "-k", socket] + options + [image], quiet: true)
    for _ in 0..<200 where !FileManager.default.fileExists(atPath: socket) { usleep(20_000) }
    return server
}

/// Stops the servers still running (SIGTERM, each waited for) and forgets them all.
func terminate(_ servers: inout [ChildProcess]) {
    for c in servers where c.isRunning {
        kill(c.pid, SIGTERM)
        _ = c.finish()
    }
    servers = []
}
