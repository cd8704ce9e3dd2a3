// libnbd's binding: loaded (dlopen) the first time an NBD source is opened, not linked. A start of strata that
// reads no NBD export maps none of it (libnbd brings GnuTLS, libxml2 and ICU along: 15 more shared libraries
// at every cold start), and a machine without libnbd runs everything else (an NBD source then says what to
// install, exit 69). The functions
// are the C ones, looked up by name with the header's signatures.
#if canImport(Glibc)
import Glibc
#endif
internal import CNBD

struct LibNBD: @unchecked Sendable {  // function pointers and nothing else; libnbd's calls are thread-safe
    typealias Handle = OpaquePointer

    let create: @convention(c) () -> Handle?
    let close: @convention(c) (Handle?) -> Void
    let getError: @convention(c) () -> UnsafePointer<CChar>?
    let getErrno: @convention(c) () -> Int32
    let setURIAllowLocalFile: @convention(c) (Handle?, Bool) -> Int32
    let addMetaContext: @convention(c) (Handle?, UnsafePointer<CChar>?) -> Int32
    let connectURI: @convention(c) (Handle?, UnsafePointer<CChar>?) -> Int32
    let getSize: @convention(c) (Handle?) -> Int64
    let getBlockSize: @convention(c) (Handle?, Int32) -> Int64
    let canMultiConn: @convention(c) (Handle?) -> Int32
    let canMetaContext: @convention(c) (Handle?, UnsafePointer<CChar>?) -> Int32
    let blockStatus: @convention(c) (Handle?, UInt64, UInt64, nbd_extent_callback, UInt32) -> Int32
    let pread: @convention(c) (Handle?, UnsafeMutableRawPointer?, Int, UInt64, UInt32) -> Int32
    let aioPread: @convention(c) (Handle?, UnsafeMutableRawPointer?, Int, UInt64, nbd_completion_callback, UInt32) -> Int64
    let aioPwrite: @convention(c) (Handle?, UnsafeRawPointer?, Int, UInt64, nbd_completion_callback, UInt32) -> Int64
    let pwrite: @convention(c) (Handle?, UnsafeRawPointer?, Int, UInt64, UInt32) -> Int32
    let zero: @convention(c) (Handle?, UInt64, UInt64, UInt32) -> Int32
    let trim: @convention(c) (Handle?, UInt64, UInt64, UInt32) -> Int32
    let flush: @convention(c) (Handle?, UInt32) -> Int32
    let isReadOnly: @convention(c) (Handle?) -> Int32
    let canZero: @convention(c) (Handle?) -> Int32
    let canTrim: @convention(c) (Handle?) -> Int32
    let canFlush: @convention(c) (Handle?) -> Int32
    let aioCommandCompleted: @convention(c) (Handle?, UInt64) -> Int32
    let aioIsDead: @convention(c) (Handle?) -> Int32
    let aioIsClosed: @convention(c) (Handle?) -> Int32
    let aioGetFd: @convention(c) (Handle?) -> Int32
    let aioGetDirection: @convention(c) (Handle?) -> UInt32
    let aioNotifyRead: @convention(c) (Handle?) -> Int32
    let aioNotifyWrite: @convention(c) (Handle?) -> Int32

    static let sizeMinimum = Int32(LIBNBD_SIZE_MINIMUM)
    static let directionRead = UInt32(LIBNBD_AIO_DIRECTION_READ)
    static let directionWrite = UInt32(LIBNBD_AIO_DIRECTION_WRITE)
    static let soname = "libnbd.so.0"

    /// libnbd, or why it cannot be had here (loaded once a process).
    static let shared: Result<LibNBD, NBDError> = load()

    static func get(for uri: String) throws -> LibNBD {
        switch shared {
        case .success(let lib): return lib
        case .failure(var e):
            e.uri = uri
            throw e
        }
    }

    private static func load() -> Result<LibNBD, NBDError> {
        guard let library = dlopen(soname, RTLD_NOW | RTLD_LOCAL) else {
            let why = dlerror().map { String(cString: $0) } ?? "not found"
            return .failure(NBDError(loading: "\(soname) cannot be loaded (\(why)): NBD sources need libnbd (Debian and Ubuntu: apt install libnbd0)"))
        }
        var missing: [String] = []
        func symbol<T>(_ name: String, as type: T.Type) -> T {
            guard let p = dlsym(library, name) else {
                missing.append(name)
                return unsafeBitCast(UnsafeMutableRawPointer(bitPattern: 1)!, to: type)  // never called: the load fails
            }
            return unsafeBitCast(p, to: type)
        }
        let lib = LibNBD(
            create: symbol("nbd_create", as: (@convention(c) () -> Handle?).self),
            close: symbol("nbd_close", as: (@convention(c) (Handle?) -> Void).self),
            getError: symbol("nbd_get_error", as: (@convention(c) () -> UnsafePointer<CChar>?).self),
            getErrno: symbol("nbd_get_errno", as: (@convention(c) () -> Int32).self),
            setURIAllowLocalFile: symbol("nbd_set_uri_allow_local_file", as: (@convention(c) (Handle?, Bool) -> Int32).self),
            addMetaContext: symbol("nbd_add_meta_context", as: (@convention(c) (Handle?, UnsafePointer<CChar>?) -> Int32).self),
            connectURI: symbol("nbd_connect_uri", as: (@convention(c) (Handle?, UnsafePointer<CChar>?) -> Int32).self),
            getSize: symbol("nbd_get_size", as: (@convention(c) (Handle?) -> Int64).self),
            getBlockSize: symbol("nbd_get_block_size", as: (@convention(c) (Handle?, Int32) -> Int64).self),
            canMultiConn: symbol("nbd_can_multi_conn", as: (@convention(c) (Handle?) -> Int32).self),
            canMetaContext: symbol("nbd_can_meta_context", as: (@convention(c) (Handle?, UnsafePointer<CChar>?) -> Int32).self),
            blockStatus: symbol("nbd_block_status", as: (@convention(c) (Handle?, UInt64, UInt64, nbd_extent_callback, UInt32) -> Int32).self),
            pread: symbol("nbd_pread", as: (@convention(c) (Handle?, UnsafeMutableRawPointer?, Int, UInt64, UInt32) -> Int32).self),
            aioPread: symbol("nbd_aio_pread", as: (@convention(c) (Handle?, UnsafeMutableRawPointer?, Int, UInt64, nbd_completion_callback, UInt32) -> Int64).self),
            aioPwrite: symbol("nbd_aio_pwrite", as: (@convention(c) (Handle?, UnsafeRawPointer?, Int, UInt64, nbd_completion_callback, UInt32) -> Int64).self),
            pwrite: symbol("nbd_pwrite", as: (@convention(c) (Handle?, UnsafeRawPointer?, Int, UInt64, UInt32) -> Int32).self),
            zero: symbol("nbd_zero", as: (@convention(c) (Handle?, UInt64, UInt64, UInt32) -> Int32).self),
            trim: symbol("nbd_trim", as: (@convention(c) (Handle?, UInt64, UInt64, UInt32) -> Int32).self),
            flush: symbol("nbd_flush", as: (@convention(c) (Handle?, UInt32) -> Int32).self),
            isReadOnly: symbol("nbd_is_read_only", as: (@convention(c) (Handle?) -> Int32).self),
            canZero: symbol("nbd_can_zero", as: (@convention(c) (Handle?) -> Int32).self),
            canTrim: symbol("nbd_can_trim", as: (@convention(c) (Handle?) -> Int32).self),
            canFlush: symbol("nbd_can_flush", as: (@convention(c) (Handle?) -> Int32).self),
            aioCommandCompleted: symbol("nbd_aio_command_completed", as: (@convention(c) (Handle?, UInt64) -> Int32).self),
            aioIsDead: symbol("nbd_aio_is_dead", as: (@convention(c) (Handle?) -> Int32).self),
            aioIsClosed: symbol("nbd_aio_is_closed", as: (@convention(c) (Handle?) -> Int32).self),
            aioGetFd: symbol("nbd_aio_get_fd", as: (@convention(c) (Handle?) -> Int32).self),
            aioGetDirection: symbol("nbd_aio_get_direction", as: (@convention(c) (Handle?) -> UInt32).self),
            aioNotifyRead: symbol("nbd_aio_notify_read", as: (@convention(c) (Handle?) -> Int32).self),
            aioNotifyWrite: symbol("nbd_aio_notify_write", as: (@convention(c) (Handle?) -> Int32).self))
        guard missing.isEmpty else {
            return .failure(NBDError(loading: "\(soname) lacks \(missing.joined(separator: ", ")): NBD sources need libnbd 1.14 or later"))
        }
        return .success(lib)
    }

    /// libnbd's last error, in its words.
    var lastError: String { getError().map { String(cString: $0) } ?? "unknown error" }

    static var noCompletion: nbd_completion_callback { nbd_completion_callback(callback: nil, user_data: nil, free: nil) }

    /// A completion that wakes whoever waits on the eventfd `fd` (the command stays for its owner to retire):
    /// another thread driving the same connection may be the one that reads the reply.
    static func waking(_ fd: Int32) -> nbd_completion_callback {
        let cb: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<Int32>?) -> Int32 = { user, _ in
            var one: UInt64 = 1
            _ = Glibc.write(Int32(Int(bitPattern: user)), &one, 8)
            return 0
        }
        return nbd_completion_callback(callback: cb, user_data: UnsafeMutableRawPointer(bitPattern: Int(fd)), free: nil)
    }
}
