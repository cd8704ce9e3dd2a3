// The secret of an encrypted chain on the command line (`--key-file`, or STRATA_PASSPHRASE from the environment:
// never an argument, which `ps` shows), `strata keygen`, and `strata key change`.
import ArgumentParser
import StrataChain

/// `--key-file`, shared by every command that reads or writes an encrypted chain's data.
struct KeyOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "The key file of an encrypted chain (strata keygen makes one). Or set STRATA_PASSPHRASE for a chain made with a passphrase.",
        valueName: "file"))
    var keyFile: String?

    /// The secret given, if any: the key file's bytes, else the passphrase in STRATA_PASSPHRASE.
    func secret() throws -> UserSecret? {
        do { return try Self.secret(keyFile: keyFile, passphraseVariable: "STRATA_PASSPHRASE") } catch { throw Output.fail(error) }
    }

    static func secret(keyFile: String?, passphraseVariable: String) throws -> UserSecret? {
        if let keyFile { return try ChainSecrets.readKeyFile(keyFile, warn: Output.notice) }
        if let p = Machine.environment(passphraseVariable) {
            guard !p.isEmpty else { throw ChainError.invalidOption("\(passphraseVariable) is set but empty") }
            return .passphrase(p)
        }
        return nil
    }
}

struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Make a key file for encrypted chains: 32 random bytes, mode 0600.",
        discussion: """
            Refuses to replace an existing file. Keep a copy of the key somewhere safe and apart from the chain: \
            without it (or the passphrase), an encrypted chain cannot be read by anyone, strata included.

              strata keygen /root/strata.key
              strata capture /dev/sdb /backup/sdb --encrypt --key-file /root/strata.key
            """)

    @Argument(help: "The key file to make.") var file: String

    func run() throws {
        do { try ChainSecrets.generate(keyFile: file) } catch { throw Output.fail(error) }
    }
}

struct KeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "Manage an encrypted chain's key.", subcommands: [KeyChangeCommand.self])
}

struct KeyChangeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "change",
        abstract: "Re-wrap an encrypted chain's key under a new key file or passphrase; no image is rewritten.",
        usage: "strata key change [<options>] <chain>",
        discussion: """
            The old secret is --key-file or STRATA_PASSPHRASE; the new one --new-key-file or STRATA_NEW_PASSPHRASE. \
            The chain's key file (chain.key) is replaced in one rename: the old secret opens the chain until then, \
            the new one after.

              strata key change /backup/sdb --key-file old.key --new-key-file new.key
            """)

    @Argument(help: "The chain directory.") var chain: String
    @OptionGroup var key: KeyOptions
    @Option(help: ArgumentHelp("The new key file (or set STRATA_NEW_PASSPHRASE).", valueName: "file")) var newKeyFile: String?

    @OptionGroup var store: StoreArguments

    func run() throws {
        do {
            guard let old = try KeyOptions.secret(keyFile: key.keyFile, passphraseVariable: "STRATA_PASSPHRASE") else {
                throw ChainError.keyNeeded(path: chain)
            }
            guard let new = try KeyOptions.secret(keyFile: newKeyFile, passphraseVariable: "STRATA_NEW_PASSPHRASE") else {
                throw ChainError.invalidOption("give the new secret: --new-key-file FILE, or STRATA_NEW_PASSPHRASE")
            }
            try ChainSecrets.change(chain: chain, old: old, new: new, store: store.value)
        } catch { throw Output.fail(error) }
    }
}
