// `strata serve`: the points of a chain as read-only NBD exports (the NBD project's proto.md: fixed newstyle
// handshake; options EXPORT_NAME, LIST, INFO, GO, STRUCTURED_REPLY, LIST/SET_META_CONTEXT with base:allocation,
// ABORT; commands READ, BLOCK_STATUS, FLUSH, DISC, and every write refused with EPERM). An export is named by
// its point number, "" for the newest. Each client has a thread; points are read through one PointReader each,
// shared by the clients, and one ServedChain (its images opened once, one frame cache, one read-ahead pool). A client that sends garbage or disconnects ends its own connection only; a request
// outside the export gets EINVAL. NBD has no authentication: listen on loopback or a Unix socket.
import StrataFormat
import StrataIO

public final class NBDServer: @unchecked Sendable {  // the points opened are guarded by `lock`; each connection is its session thread's
    public let chain: String
    private let defaultPoint: UInt32?
    private let served: ServedChain
    private let lock = Condition()
    /// Points served, kept open for the server's life (the served chain holds its readers only while used).
    private var opened: [UInt32: PointReader] = [:]
    private let log: (String) -> Void

    enum Magic {
        static let nbd: UInt64 = 0x4e42_444d_4147_4943  // "NBDMAGIC"
        static let option: UInt64 = 0x4948_4156_454F_5054  // "IHAVEOPT"
        static let reply: UInt64 = 0x3_e889_0455_65a9
        static let request: UInt32 = 0x2560_9513
        static let simple: UInt32 = 0x6744_6698
        static let structured: UInt32 = 0x668e_33ef
    }
    enum Option: UInt32 { case exportName = 1, abort = 2, list = 3, info = 6, go = 7, structuredReply = 8, listMetaContext = 9, setMetaContext = 10 }
    enum Reply: UInt32 {
        case ack = 1, server = 2, info = 3, metaContext = 4
        case errUnsup = 0x8000_0001, errPolicy = 0x8000_0002, errInvalid = 0x8000_0003, errUnknown = 0x8000_0006
    }
    static let transmissionFlags: UInt16 = 1 | 2 | 4 | 256  // HAS_FLAGS, READ_ONLY, SEND_FLUSH, CAN_MULTI_CONN
    static let maxRequest = 32 << 20
    /// The request size NBD_INFO_BLOCK_SIZE calls preferred: a frame's span (frames hold up to 1 MiB of blocks, and
    /// a frame is decoded whole for a sequential reader). nbdcopy makes its requests this large (at its 256 KiB
    /// default, 4 times the requests and replies, each a wake-up on both sides).
    static let preferredBlockSize = Int(ImageHeader.maxBlockSize)
    static let allocationContext: UInt32 = 1

    /// Serves `chain`; `point` is the export "" names (nil: the newest point when the client connects).
    public init(chain: String, point: UInt32?, cacheBytes: Int = 64 << 20, secret: UserSecret? = nil, log: @escaping (String) -> Void) throws {
        self.chain = chain
        defaultPoint = point
        self.log = log
        served = try ServedChain(chain: chain, cacheBytes: cacheBytes, secret: secret)
        // Fail now, not at the first client, when the point cannot be opened.
        let r = try served.reader(point: point)
        opened[r.point] = r
    }

    /// The reader of the point an export name names, or nil when it names none.
    func reader(forExport name: String) throws -> PointReader? {
        let point: UInt32?
        if name.isEmpty {
            point = defaultPoint
        } else {
            guard let p = UInt32(name) else { return nil }
            point = p
        }
        do {
            let r = try served.reader(point: point)
            lock.withLock { opened[r.point] = r }
            return r
        } catch ChainError.noSuchPoint { return nil }
    }

    /// Accepts clients until the listener is closed, each on a thread of its own.
    public func serve(_ listener: Listener) {
        var n = 0
        while let c = listener.accept() {
            n += 1
            let id = n
            Threads.spawn("strata-nbd-\(id)") { self.session(c, id: id) }
        }
    }

    // MARK: One client

    private func session(_ c: Connection, id: Int) {
        var w = BigEndianWriter()
        w.u64(Magic.nbd)
        w.u64(Magic.option)
        w.u16(1 | 2)  // FIXED_NEWSTYLE, NO_ZEROES
        guard c.write(w.bytes), let flags = c.read(4) else { return }
        var clientFlags = BigEndianReader(flags)
        let noZeroes = clientFlags.u32() & 2 != 0
        var structured = false
        var allocation = false
        var export: PointReader?
        // Option haggling.
        while export == nil {
            guard let head = c.read(16) else { return }
            var r = BigEndianReader(head)
            let magic = r.u64(), option = r.u32(), length = r.u32()
            guard magic == Magic.option, length <= 1 << 16, let data = c.read(Int(length)) else {
                log("nbd client \(id): bad option header; closing")
                return
            }
            func reply(_ type: Reply, _ payload: [UInt8] = []) -> Bool {
                var w = BigEndianWriter()
                w.u64(Magic.reply)
                w.u32(option)
                w.u32(type.rawValue)
                w.u32(UInt32(payload.count))
                return c.write(w.bytes + payload)
            }
            switch Option(rawValue: option) {
            case .exportName:
                guard let name = String(validating: data, as: UTF8.self), let reader = try? reader(forExport: name) else {
                    log("nbd client \(id): no export named \"\(String(decoding: data, as: UTF8.self))\"; closing")
                    return
                }
                var w = BigEndianWriter()
                w.u64(reader.size)
                w.u16(Self.transmissionFlags)
                if !noZeroes { w.bytes += [UInt8](repeating: 0, count: 124) }
                guard c.write(w.bytes) else { return }
                export = reader
            case .abort:
                _ = reply(.ack)
                return
            case .list:
                guard data.isEmpty else { if !reply(.errInvalid) { return }; continue }
                let names = (try? Chain(location: chain, access: .read).manifest?.points.map { String($0) }) ?? []
                for name in [""] + names {
                    var w = BigEndianWriter()
                    w.u32(UInt32(name.utf8.count))
                    w.bytes += Array(name.utf8)
                    guard reply(.server, w.bytes) else { return }
                }
                guard reply(.ack) else { return }
            case .info, .go:
                var r = BigEndianReader(data)
                let nameLength = Int(r.u32())
                guard r.remaining >= nameLength + 2 else { if !reply(.errInvalid) { return }; continue }
                let name = String(decoding: r.raw(nameLength), as: UTF8.self)
                guard let reader = try? reader(forExport: name) else { if !reply(.errUnknown) { return }; continue }
                var info = BigEndianWriter()
                info.u16(0)  // NBD_INFO_EXPORT
                info.u64(reader.size)
                info.u16(Self.transmissionFlags)
                var sizes = BigEndianWriter()
                sizes.u16(3)  // NBD_INFO_BLOCK_SIZE
                sizes.u32(1)
                sizes.u32(UInt32(Self.preferredBlockSize))
                sizes.u32(UInt32(Self.maxRequest))
                guard reply(.info, info.bytes), reply(.info, sizes.bytes), reply(.ack) else { return }
                if option == Option.go.rawValue { export = reader }
            case .structuredReply:
                guard data.isEmpty else { if !reply(.errInvalid) { return }; continue }
                structured = true
                guard reply(.ack) else { return }
            case .listMetaContext, .setMetaContext:
                var r = BigEndianReader(data)
                let nameLength = Int(r.u32())
                guard r.remaining >= nameLength + 4 else { if !reply(.errInvalid) { return }; continue }
                _ = r.raw(nameLength)
                let set = option == Option.setMetaContext.rawValue
                if set && !structured { if !reply(.errInvalid) { return }; continue }
                var queries: [String] = []
                for _ in 0..<r.u32() {
                    let n = Int(r.u32())
                    guard r.remaining >= n else { break }
                    queries.append(String(decoding: r.raw(n), as: UTF8.self))
                }
                let wanted = queries.isEmpty ? !set : queries.contains { $0 == "base:allocation" || $0 == "base:" }
                if set { allocation = wanted }
                if wanted {
                    var w = BigEndianWriter()
                    w.u32(Self.allocationContext)
                    w.bytes += Array("base:allocation".utf8)
                    guard reply(.metaContext, w.bytes) else { return }
                }
                guard reply(.ack) else { return }
            case nil:
                guard reply(.errUnsup) else { return }
            }
        }
        transmission(c, id: id, export!, structured: structured, allocation: allocation)
    }

    private func transmission(_ c: Connection, id: Int, _ reader: PointReader, structured: Bool, allocation: Bool) {
        let buffer = AlignedSlab(slotSize: Self.maxRequest, slotCount: 1, alignment: 4096)
        while let head = c.read(28) {
            var r = BigEndianReader(head)
            let magic = r.u32()
            let commandFlags = r.u16()
            let type = r.u16(), cookie = r.u64(), offset = r.u64(), length = r.u32()
            guard magic == Magic.request else {
                log("nbd client \(id): bad request magic; closing")
                return
            }
            func fail(_ code: UInt32) -> Bool { errorReply(c, cookie, structured, code: code) }
            let inRange = offset <= reader.size && UInt64(length) <= reader.size - offset
            switch type {
            case 0:  // READ
                guard inRange, Int(length) <= Self.maxRequest else { if !fail(22) { return }; continue }
                var w = BigEndianWriter()
                w.reply(structured: structured, type: 1, cookie: cookie, length: 8 + length)  // NBD_REPLY_TYPE_OFFSET_DATA
                if structured { w.u64(offset) }
                let sent: Bool
                do {
                    // Sent from where the bytes lie (the cache's decoded frames, zeros), checked first.
                    sent = try reader.withBytes(count: Int(length), at: offset, scratch: buffer.base) { c.write(w.bytes, then: $0) }
                } catch {
                    log("nbd client \(id): read of \(length) bytes at \(offset) failed: \(PointReader.describe(error))")
                    if !fail(5) { return }  // EIO
                    continue
                }
                guard sent else { return }
            case 2:  // DISC
                return
            case 3:  // FLUSH: nothing to flush
                var w = BigEndianWriter()
                w.reply(structured: structured, type: 0, cookie: cookie, length: 0)  // NBD_REPLY_TYPE_NONE
                guard c.write(w.bytes) else { return }
            case 7:  // BLOCK_STATUS
                // A status request may reach past the end (qemu asks for whole clusters): it is answered to the end.
                guard structured, allocation, offset < reader.size, length > 0 else { if !fail(22) { return }; continue }
                let end = min(offset + UInt64(length), reader.size)
                let zeros: [Range<UInt64>]
                do { zeros = try reader.zeroRanges(in: offset..<end) } catch {
                    if !fail(5) { return }  // EIO
                    continue
                }
                var descriptors: [(UInt32, UInt32)] = []
                var at = offset
                for z in zeros where descriptors.count < 4096 {
                    if z.lowerBound > at { descriptors.append((UInt32(z.lowerBound - at), 0)) }
                    descriptors.append((UInt32(z.upperBound - z.lowerBound), 3))  // HOLE | ZERO
                    at = z.upperBound
                }
                if at < end && descriptors.count < 4096 { descriptors.append((UInt32(end - at), 0)) }
                if commandFlags & 8 != 0 { descriptors = Array(descriptors.prefix(1)) }  // NBD_CMD_FLAG_REQ_ONE
                var w = BigEndianWriter()
                w.reply(structured: true, type: 5, cookie: cookie, length: 4 + 8 * UInt32(descriptors.count))  // BLOCK_STATUS
                w.u32(Self.allocationContext)
                for d in descriptors {
                    w.u32(d.0)
                    w.u32(d.1)
                }
                guard c.write(w.bytes) else { return }
            case 1, 4, 6:  // WRITE, TRIM, WRITE_ZEROES: read-only (a write's payload is read and dropped)
                if type == 1 {
                    var left = Int(length)
                    while left > 0 {
                        let n = min(left, Self.maxRequest)
                        guard c.read(into: buffer.base, count: n) else { return }
                        left -= n
                    }
                }
                if !fail(1) { return }  // EPERM
            default:
                if !fail(22) { return }
            }
        }
    }

    /// Answers a request with an error (an errno value NBD knows: EPERM, EIO, EINVAL).
    private func errorReply(_ c: Connection, _ cookie: UInt64, _ structured: Bool, code: UInt32) -> Bool {
        var w = BigEndianWriter()
        w.reply(structured: structured, type: 0x8001, cookie: cookie, length: 6, error: code)  // NBD_REPLY_TYPE_ERROR
        if structured {
            w.u32(code)
            w.u16(0)  // no message
        }
        return c.write(w.bytes)
    }
}

/// Big-endian fields, as NBD sends them.
struct BigEndianWriter {
    var bytes: [UInt8] = []

    /// A reply's header: once structured replies are agreed, the one (last) chunk of a reply, of `type` with
    /// `length` bytes of payload to follow; otherwise a simple reply, with `error` in it (a structured error goes
    /// in the payload).
    mutating func reply(structured: Bool, type: UInt16, cookie: UInt64, length: UInt32, error: UInt32 = 0) {
        if structured {
            u32(NBDServer.Magic.structured)
            u16(1)  // NBD_REPLY_FLAG_DONE
            u16(type)
            u64(cookie)
            u32(length)
        } else {
            u32(NBDServer.Magic.simple)
            u32(error)
            u64(cookie)
        }
    }

    mutating func u16(_ v: UInt16) { for i in (0..<2).reversed() { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt16(i)))) } }
    mutating func u32(_ v: UInt32) { for i in (0..<4).reversed() { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    mutating func u64(_ v: UInt64) { for i in (0..<8).reversed() { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
}

struct BigEndianReader {
    private let bytes: [UInt8]
    private var at = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var remaining: Int { bytes.count - at }
    /// Zero past the end (callers check `remaining` where a short message matters).
    mutating func u16() -> UInt16 { UInt16(truncatingIfNeeded: take(2)) }
    mutating func u32() -> UInt32 { UInt32(truncatingIfNeeded: take(4)) }
    mutating func u64() -> UInt64 { take(8) }
    mutating func raw(_ n: Int) -> [UInt8] {
        let k = max(0, min(n, remaining))
        defer { at += k }
        return Array(bytes[at..<(at + k)])
    }
    private mutating func take(_ n: Int) -> UInt64 {
        var v: UInt64 = 0
        for _ in 0..<n {
            v = v << 8 | UInt64(at < bytes.count ? bytes[at] : 0)
            at += 1
        }
        return v
    }
}

/// Where `strata serve` listens: a Unix socket or a TCP address.
public enum NBDAddress: Sendable, Equatable {
    case unixSocket(String)
    case tcp(host: String, port: UInt16)
}

extension NBDServer {
    /// Listens at `address` and serves clients until SIGINT or SIGTERM ends the process (status 0, a socket file
    /// removed first); `listening` gets the address as clients name it once it is bound. Throws
    /// `targetUnavailable` where the socket cannot be made (a path in use, an address taken).
    public func serve(at address: NBDAddress, listening: (String) -> Void) throws {
        let listener: Listener
        do {
            switch address {
            case .unixSocket(let path): listener = try Listener(unixPath: path)
            case .tcp(let host, let port): listener = try Listener(host: host, port: port)
            }
        } catch let e as IOError {
            throw ChainError.targetUnavailable(path: e.path, reason: e.reason)
        }
        listener.exitOnTerminationSignals()
        listening(listener.address)
        serve(listener)
    }
}
