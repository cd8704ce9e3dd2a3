import ArgumentParser
import StrataChain

struct RepairCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repair",
        abstract: "Put a chain back in order: leftovers, the hash map, and (when asked) points that cannot be restored.",
        usage: "strata repair [<options>] <chain>",
        discussion: """
            Removes what interrupted runs left behind and rebuilds a missing or damaged hash map of the newest \
            point from its images (their hash tables, not their data). With --drop-damaged it first verifies the \
            whole chain and removes the points that cannot be restored: each run of them is merged into the whole \
            point after it (which restores exactly as before), and those after the last whole point are dropped \
            (that point becomes the newest). Every change is printed before it is made; --dry-run prints them and \
            changes nothing. Interrupted at any moment, the chain is as before or as after each change.

            Captures heal by themselves: a missing map is rebuilt, and blocks the newest point takes from frames \
            a verify found damaged are stored anew. repair is for the rest.

            --json prints one object: dryRun, actions (the changes, in order), removedPoints, points.

            EXAMPLES
              strata repair /backup/sdb --dry-run
              strata verify /backup/sdb; strata repair /backup/sdb --drop-damaged
            """)

    @Argument(help: "Chain directory.") var chain: String
    @Flag(help: "Print the changes repair would make and make none.") var dryRun = false
    @Flag(help: "Remove the points that cannot be restored (verifies the whole chain first).") var dropDamaged = false
    @Option(help: "Threads for the verify and the merges (default: one per core).") var threads: Int?
    @Flag(help: "Print one JSON object with the result on stdout.") var json = false
    @Flag(help: "No lines for the changes (errors still print).") var quiet = false
    @OptionGroup var key: KeyOptions

    @OptionGroup var store: StoreArguments

    func run() throws {
        Output.warnIfExposed(chain)
        var options = RepairOptions()
        options.dryRun = dryRun
        options.dropDamaged = dropDamaged
        options.threads = threads ?? Machine.onlineCores
        options.secret = try key.secret()
        options.store = store.value
        let verb = dryRun ? "would " : ""
        do {
            let r = try Repair.run(chain: chain, options: options) { action in
                if !quiet && !json { print("\(verb)\(action)") }
            }
            if json {
                Output.json(Report(dryRun: dryRun, actions: r.actions, removedPoints: r.removedPoints, points: r.points))
            } else if !quiet {
                print(r.actions.isEmpty ? "nothing to repair" : "\(dryRun ? "would leave" : "repaired:") points \(r.points.map(String.init).joined(separator: ", "))")
            }
        } catch {
            throw Output.fail(error)
        }
    }
}

extension RepairCommand {
    /// What --json prints.
    struct Report: Encodable {
        var dryRun: Bool, actions: [String], removedPoints, points: [UInt32]
    }
}
