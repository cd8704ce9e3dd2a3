// The checks that stop a typo from destroying data, made before a byte is written: a restore target that is
// in use (mounted, swap, held), that is the chain itself (one of its files, a file inside its directory, a loop
// device over one of them), or an existing file the user did not ask to replace; a capture source that is the
// chain, or the disk holding the chain's filesystem (the capture would image its own writes). Files are
// compared by identity (device and inode), so no spelling of a path slips past. docs/RELIABILITY.md lists each
// promise with its test.
import StrataIO


public enum Safety {
    /// Refuses a restore target that is in use, part of the chain at `chain`, or (without `force`) an existing
    /// non-empty regular file. `force` never overrides a target in use.
    public static func checkRestoreTarget(_ target: String, chain: String, force: Bool) throws {
        let st = try? Sys.stat(target)
        if let part = chainPart(target, st, chain: chain) {
            throw ChainError.partOfChain(role: .target, path: target, chain: chain, detail: part)
        }
        guard let st else { return }  // a new file: nothing to protect
        switch st.kind {
        case .blockDevice:
            if let use = BlockDevices.uses(of: st.deviceNumber, path: target).first { throw ChainError.targetInUse(path: target, use: use) }
        case .regular:
            for loop in BlockDevices.loopDevices(backedBy: st.identity) {
                if let use = BlockDevices.uses(of: loop.rdev, path: loop.path).first {
                    throw ChainError.targetInUse(path: target, use: .backing(loop: loop.path, use: use))
                }
            }
            if st.size > 0 && !force { throw ChainError.targetExists(path: target) }
        default:
            return
        }
    }

    /// Refuses a capture source that is part of the chain at `chain`, or the disk that holds its filesystem.
    public static func checkCaptureSource(_ source: String, chain: String) throws {
        guard let st = try? Sys.stat(source) else { return }
        if let part = chainPart(source, st, chain: chain) {
            throw ChainError.partOfChain(role: .source, path: source, chain: chain, detail: part)
        }
        guard st.kind == .blockDevice, ChainStores.isLocal(chain) else { return }
        let holding = BlockDevices.devicesHolding(chain)
        if let member = BlockDevices.family(st.deviceNumber, path: source).first(where: { holding.devices.contains($0.rdev) }) {
            throw ChainError.sourceHoldsChain(path: source, device: member.name, chain: chain, mountPoint: holding.mountPoint ?? "?")
        }
    }

    /// How `path` (whose stat is `st`, nil when it does not exist) is part of the chain at `chain`: its directory,
    /// one of its files, inside it, or a loop device over one of those; nil when it is not.
    static func chainPart(_ path: String, _ st: FileStatus?, chain: String) -> String? {
        guard let chainID = FileIdentity(path: chain) else { return nil }
        if BlockDevices.isInside(path, directory: chainID, directoryPath: chain) { return relation(path, chain: chain, chainID: chainID) }
        if let st, st.kind == .blockDevice, let backing = BlockDevices.loopBackingFile(st.deviceNumber),
            BlockDevices.isInside(backing, directory: chainID, directoryPath: chain)
        {
            return "it is a loop device over \(backing)"
        }
        return nil
    }

    /// How `path`, found part of the chain, relates to it: the directory, one of its files, or inside it.
    static func relation(_ path: String, chain: String, chainID: FileIdentity) -> String {
        guard let id = FileIdentity(path: path) else { return "it is inside the chain's directory" }
        if id == chainID { return "it is the chain's directory" }
        for name in ((try? Sys.listDirectory(chain)) ?? []).sorted() where FileIdentity(path: "\(chain)/\(name)") == id {
            return "it is the chain's file \(name)"
        }
        return "it is inside the chain's directory"
    }

    /// One warning line when the chain at `chain` can be read by users other than its owner (its directory
    /// searchable by them and a file readable), with the command that makes it private; nil when it is private.
    public static func exposureWarning(chain: String) -> String? {
        guard let dir = try? Sys.stat(chain), dir.kind == .directory, dir.permissions & 0o011 != 0 else { return nil }
        var exposed = 0
        var widest: UInt32 = 0
        for name in (try? Sys.listDirectory(chain)) ?? [] {
            guard let st = try? Sys.lstat("\(chain)/\(name)"), st.kind == .regular, st.permissions & 0o044 != 0 else { continue }
            exposed += 1
            widest |= st.permissions & 0o777
        }
        guard exposed > 0 else { return nil }
        return "warning: chain \(chain) is readable by other users (directory \(modeString(dir.permissions & 0o777, directory: true)), "
            + "\(exposed) file\(exposed == 1 ? "" : "s") up to \(modeString(widest, directory: false))); make it private: chmod -R go= \(chain)"
    }

    /// `ls -l`'s rendering of permission bits.
    static func modeString(_ mode: UInt32, directory: Bool) -> String {
        var s = directory ? "d" : "-"
        for shift in [6, 3, 0] {
            let bits = (mode >> UInt32(shift)) & 7
            s += (bits & 4 != 0 ? "r" : "-") + (bits & 2 != 0 ? "w" : "-") + (bits & 1 != 0 ? "x" : "-")
        }
        return s
    }
}
