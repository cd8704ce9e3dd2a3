// The strata command: a thin shell over StrataChain. Each subcommand parses, calls the library, and prints.
import ArgumentParser
import StrataChain
import StrataIO

// In a run that names a bucket, buffers of 4 MiB and more (an upload's 8 and 16 MiB parts) come from mmap and go
// back when freed: a capture into a bucket, whose part buffers are freed on the threads that sent them, peaked at
// 407 MB without this, 156 MB with it. Only there: glibc's own sliding threshold is what the rest wants (with the
// threshold fixed at 1 MiB for every command, each 1 MiB request libfuse took was a fresh mapping, and `dd` of a
// mounted point ran at 0.45-0.60x a restore instead of 0.67-0.70x).
if CommandLine.arguments.contains(where: { !ChainStores.isLocal($0) }) { Sys.mapLargeAllocations(from: 4 << 20) }

StrataCommand.main()
