// XXH3 with AVX2, compiled for AVX2 by attribute (no -mavx2 for the whole target), called only on CPUs that
// have it. XXH_VECTOR must be set by hand: the attribute does not define __AVX2__.
#include "CXXH3.h"
#if defined(__x86_64__)
#include <immintrin.h>
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#define XXH_INLINE_ALL
#define XXH_VECTOR 2 /* XXH_AVX2 */
#include <xxhash.h>

uint64_t strata_xxh3_64_avx2(const void *data, size_t length) { return XXH3_64bits(data, length); }

strata_xxh128 strata_xxh3_128_avx2(const void *data, size_t length) {
    XXH128_hash_t h = XXH3_128bits(data, length);
    return (strata_xxh128){h.low64, h.high64};
}
strata_xxh128 strata_xxh3_128_secret_avx2(const void *data, size_t length, const void *secret, size_t secretLength) {
    XXH128_hash_t h = XXH3_128bits_withSecret(data, length, secret, secretLength);
    return (strata_xxh128){h.low64, h.high64};
}
#pragma clang attribute pop
#else
// No AVX2 off x86-64: the names exist (tests refer to them) and are never chosen.
uint64_t strata_xxh3_64_avx2(const void *data, size_t length) { return strata_xxh3_64_default(data, length); }
strata_xxh128 strata_xxh3_128_avx2(const void *data, size_t length) { return strata_xxh3_128_default(data, length); }
strata_xxh128 strata_xxh3_128_secret_avx2(const void *data, size_t length, const void *secret, size_t secretLength) {
    return strata_xxh3_128_secret_default(data, length, secret, secretLength);
}
#endif
