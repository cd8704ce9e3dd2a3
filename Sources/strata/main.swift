// The strata command: a thin shell over StrataChain. Each subcommand parses, calls the library, and prints.
import ArgumentParser

StrataCommand.main()
