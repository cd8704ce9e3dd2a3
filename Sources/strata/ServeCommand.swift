import ArgumentParser
import StrataChain

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the points of a chain, read-only, over NBD.",
        usage: "strata serve [<options>] <chain> (--socket <path> | --port <port>)",
        discussion: """
            Each point is an NBD export named by its number; the empty name is --point, or the newest point when \
            a client connects. Clients read the point in place: nothing is restored first, every block handed out \
            is checked against its stored hash, and a damaged frame fails the reads that need it with EIO (one \
            line on stderr names the image and frame). Zero blocks are reported through NBD_CMD_BLOCK_STATUS \
            (base:allocation), so qemu-img and nbdcopy skip them. Writes are refused (EPERM). Captures, merges \
            and prunes may run on the chain meanwhile: a point being served keeps the images it opened.

            NBD has no authentication: anyone who can reach the socket reads every point. --port listens on \
            127.0.0.1 unless --bind says otherwise. Runs until SIGINT or SIGTERM; a --socket file is removed then.

            Exit status 0 when stopped by a signal; 64 for bad options or a point that does not exist, 65 for a \
            damaged chain, 73 when the socket cannot be made (a path in use, an address taken).

            EXAMPLES
              strata serve /backup/sdb --socket /run/strata.sock
              qemu-img convert -O qcow2 'nbd+unix:///3?socket=/run/strata.sock' tue.qcow2
              nbdcopy 'nbd+unix:///?socket=/run/strata.sock' /dev/sdc
              strata serve /backup/sdb --port 10809 --point 5
            """)

    @Argument(help: "Chain directory.") var chain: String
    @Option(help: "The point the empty export name serves (default: the newest).") var point: UInt32?
    @Option(help: "Listen on this Unix socket.") var socket: String?
    @Option(help: "Listen on this TCP port.") var port: UInt16?
    @Option(help: "The address --port listens on (default 127.0.0.1).") var bind: String = "127.0.0.1"
    @Option(help: "Bytes of decoded frames to cache (default 64 MiB).") var cacheSize: Int = 64 << 20
    @OptionGroup var key: KeyOptions

    func validate() throws {
        guard (socket == nil) != (port == nil) else { throw ValidationError("give one of --socket PATH or --port P") }
        guard cacheSize >= 1 else { throw ValidationError("--cache-size must be at least 1") }
    }

    func run() throws {
        Output.warnIfExposed(chain)
        do {
            let server = try NBDServer(chain: chain, point: point, cacheBytes: cacheSize, secret: key.secret()) { Output.notice($0) }
            let address = socket.map { NBDAddress.unixSocket($0) } ?? .tcp(host: bind, port: port!)
            try server.serve(at: address) { listening in
                Output.notice("serving \(chain) over NBD on \(listening) (exports: point numbers; \"\" = \(point.map { "point \($0)" } ?? "the newest"))")
            }
        } catch {
            throw Output.fail(error)
        }
    }
}
