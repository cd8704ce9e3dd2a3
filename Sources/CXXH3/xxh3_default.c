// XXH3 built for the target's baseline vector unit (SSE2 on x86-64).
#include "CXXH3.h"
#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t strata_xxh3_64_default(const void *data, size_t length) { return XXH3_64bits(data, length); }

strata_xxh128 strata_xxh3_128_default(const void *data, size_t length) {
    XXH128_hash_t h = XXH3_128bits(data, length);
    return (strata_xxh128){h.low64, h.high64};
}

strata_xxh128 strata_xxh3_128_secret_default(const void *data, size_t length, const void *secret, size_t secretLength) {
    XXH128_hash_t h = XXH3_128bits_withSecret(data, length, secret, secretLength);
    return (strata_xxh128){h.low64, h.high64};
}
