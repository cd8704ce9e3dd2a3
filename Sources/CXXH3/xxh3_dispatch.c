// Chooses the XXH3 loop once, before main: a branch on a constant flag per call after that.
#include "CXXH3.h"

static int use_avx2;

__attribute__((constructor)) static void strata_xxh3_choose(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2");
#endif
}

uint64_t strata_xxh3_64(const void *data, size_t length) {
#if defined(__x86_64__)
    if (use_avx2) return strata_xxh3_64_avx2(data, length);
#endif
    return strata_xxh3_64_default(data, length);
}

strata_xxh128 strata_xxh3_128(const void *data, size_t length) {
#if defined(__x86_64__)
    if (use_avx2) return strata_xxh3_128_avx2(data, length);
#endif
    return strata_xxh3_128_default(data, length);
}

strata_xxh128 strata_xxh3_128_secret(const void *data, size_t length, const void *secret, size_t secretLength) {
#if defined(__x86_64__)
    if (use_avx2) return strata_xxh3_128_secret_avx2(data, length, secret, secretLength);
#endif
    return strata_xxh3_128_secret_default(data, length, secret, secretLength);
}

int strata_xxh3_has_avx2(void) { return use_avx2; }
