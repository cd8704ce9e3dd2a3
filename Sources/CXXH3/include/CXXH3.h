// XXH3 (xxHash's header-only build, from libxxhash-dev) with its long-input loop chosen once at start-up for
// this CPU: AVX2 where the CPU has it, else the build's default (SSE2 on x86-64, NEON on arm64). Values are
// XXH3's, bit for bit, whichever runs. Debian's libxxhash.a is built for SSE2 only, and its dispatching entry
// points exist only in the shared library: measured here, AVX2 hashes 1 MiB frames at 24 GB/s instead of 17,
// 4 KiB blocks (XXH3-128) at 17.6 GB/s instead of 12.5.
#ifndef STRATA_CXXH3_H
#define STRATA_CXXH3_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t low64;
    uint64_t high64;
} strata_xxh128;

uint64_t strata_xxh3_64(const void *data, size_t length);
strata_xxh128 strata_xxh3_128(const void *data, size_t length);
/// XXH3-128 with a secret (at least 136 bytes): the keyed block hashes of encrypted chains.
strata_xxh128 strata_xxh3_128_secret(const void *data, size_t length, const void *secret, size_t secretLength);

// Each variant, for tests. Call the avx2 ones only where strata_xxh3_has_avx2() is non-zero: on an x86-64 CPU
// without AVX2 they trap (elsewhere they are the default loop).
uint64_t strata_xxh3_64_default(const void *data, size_t length);
strata_xxh128 strata_xxh3_128_default(const void *data, size_t length);
strata_xxh128 strata_xxh3_128_secret_default(const void *data, size_t length, const void *secret, size_t secretLength);
uint64_t strata_xxh3_64_avx2(const void *data, size_t length);
strata_xxh128 strata_xxh3_128_avx2(const void *data, size_t length);
strata_xxh128 strata_xxh3_128_secret_avx2(const void *data, size_t length, const void *secret, size_t secretLength);
int strata_xxh3_has_avx2(void);

#endif
