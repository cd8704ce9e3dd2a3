// The commit an executable was built from, written into the built binary by Tools/stamp-commit (called by
// Tools/build-release), so that `strata --version` names it without rebuilding for each commit.
#ifndef CBUILDSTAMP_H
#define CBUILDSTAMP_H

/// "STRATA-COMMIT-STAMP:" followed by the stamp Tools/stamp-commit wrote (a NUL-terminated line such as
/// "96ea8bf1c0de 2026-12-07"), or by nothing in a binary it has not stamped.
const char *strata_build_stamp(void);

#endif
