// The strata command: a thin shell over StrataChain. Each subcommand parses, calls the library, and prints.
import ArgumentParser
import StrataIO

// Buffers of a MiB and more (frames, an upload's 16 MiB parts) come from mmap and go back when freed: a capture
// into a bucket, whose part buffers are freed on the threads that sent them, peaked at 407 MB without this, 210
// MB with it.
Sys.mapLargeAllocations(from: 1 << 20)

StrataCommand.main()
