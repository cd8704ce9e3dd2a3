#include <libnbd.h>
#include <poll.h>
