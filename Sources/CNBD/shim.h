#include <libnbd.h>
#include <poll.h>
#include <sys/eventfd.h>
/* A non-blocking eventfd: what wakes a thread waiting on a connection another thread drives. */
static inline int strata_nbd_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }
