// The strata command: a thin shell over StrataChain. Each subcommand parses, calls the library, and prints.
import ArgumentParser
import StrataChain

Machine.prepare(arguments: CommandLine.arguments)
StrataCommand.main()
