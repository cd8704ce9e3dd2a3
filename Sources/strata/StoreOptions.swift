import ArgumentParser
import StrataChain

/// What the commands that change a chain accept about its store.
struct StoreArguments: ParsableArguments {
    @Flag(help: ArgumentHelp(
        "Write to a bucket whose store ignores conditional writes (If-None-Match, If-Match).",
        discussion: "Strata refuses such a store (exit 77): without conditional writes two writers at once could both commit, and one's point would be lost. Pass this only where one writer at a time is certain."))
    var allowUnconditionalWrites = false

    /// The library's value.
    var value: StrataChain.StoreOptions { StrataChain.StoreOptions(allowUnconditionalWrites: allowUnconditionalWrites) }
}
