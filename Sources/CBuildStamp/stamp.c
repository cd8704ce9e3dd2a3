#include "CBuildStamp.h"

// A writable, externally visible array, so that no compiler folds its contents into the code that reads it: the
// bytes after the marker are what Tools/stamp-commit writes into the binary (at most 107 and a NUL).
__attribute__((used)) char strata_build_stamp_bytes[128] = "STRATA-COMMIT-STAMP:";

const char *strata_build_stamp(void) {
    return strata_build_stamp_bytes;
}
