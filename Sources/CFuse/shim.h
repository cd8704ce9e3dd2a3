// libfuse 3 (Debian's libfuse3-dev), its high-level API: `strata mount` serves a chain's points as files.
// fuse_new and fuse_loop_mt are macros choosing a versioned symbol; Swift calls these wrappers instead. The
// version must be 3.12 or later: the loop's config comes from fuse_loop_cfg_create (3.12), and an older version's
// fuse_loop_mt reads it as the old two-field struct (at 35: no threads kept idle, a thread started and ended for
// every request).
#define FUSE_USE_VERSION 312
#include <fuse.h>
#include <fuse_lowlevel.h>

static inline struct fuse *strata_fuse_new(struct fuse_args *args, const struct fuse_operations *ops, void *data) {
    return fuse_new(args, ops, sizeof(*ops), data);
}

/// Serves requests on up to `max_threads` threads (`idle` of them kept waiting) until the file system is
/// unmounted or the session exits.
static inline int strata_fuse_loop_mt(struct fuse *f, unsigned idle, unsigned max_threads) {
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    if (!config) return -1;
    fuse_loop_cfg_set_idle_threads(config, idle);
    fuse_loop_cfg_set_max_threads(config, max_threads);
    int r = fuse_loop_mt(f, config);
    fuse_loop_cfg_destroy(config);
    return r;
}
