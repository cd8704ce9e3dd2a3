// The cryptography of encrypted chains (docs/ENCRYPTION.md), from two well-kept libraries and nothing written by
// hand: OpenSSL's libcrypto for the bulk AEAD (AES-256-GCM: 5.5 GB/s a core here, against 2.4 for libsodium's
// and 1.6 for its XChaCha20-Poly1305), libsodium for everything about keys (random bytes, Argon2id, key wrapping
// with XChaCha20-Poly1305, subkeys and MACs with keyed BLAKE2b). Swift calls these few functions only.
#ifndef STRATA_CSEAL_H
#define STRATA_CSEAL_H

#include <stddef.h>
#include <stdint.h>

/// 0 when the libraries are ready (call once; idempotent).
int strata_seal_init(void);

void strata_random(void *out, size_t length);

/// Seals `length` bytes at `text` in place with AES-256-GCM under a key used once: keyed BLAKE2b-256 of `salt`
/// (24 bytes) under `key` (32 bytes); the nonce is 12 zero bytes. Writes the 16-byte tag. 0 on success. (`salt`
/// and `tag` must not overlap `text`.)
int strata_seal(const uint8_t *key, const uint8_t *salt, const uint8_t *ad, size_t adLength, uint8_t *text, size_t length, uint8_t *tag);

/// Opens what `strata_seal` sealed, in place; 0 when the tag verifies (else `text` holds garbage).
int strata_open(const uint8_t *key, const uint8_t *salt, const uint8_t *ad, size_t adLength, uint8_t *text, size_t length, const uint8_t *tag);

/// Keyed BLAKE2b of `length` bytes into `out` (16 to 64 bytes) under a 32-byte key.
void strata_mac(uint8_t *out, size_t outLength, const uint8_t *key, const void *data, size_t length);

/// Subkey `id` of a 32-byte master key (libsodium's crypto_kdf: BLAKE2b), context "strata__", `length` 16 to 64.
void strata_subkey(uint8_t *out, size_t length, uint64_t id, const uint8_t *master);

/// Argon2id13 of a passphrase into a 32-byte key; 0 on success (-1: out of memory).
int strata_passphrase_key(uint8_t *key, const char *passphrase, size_t length, const uint8_t *salt16, uint64_t opsLimit, size_t memLimit);
uint64_t strata_passphrase_ops_default(void);
size_t strata_passphrase_mem_default(void);

/// XChaCha20-Poly1305 (key wrapping): `out` gets length + 16 bytes; open returns 0 when the tag verifies.
void strata_wrap(uint8_t *out, const uint8_t *plain, size_t length, const uint8_t *ad, size_t adLength, const uint8_t *nonce24, const uint8_t *key);
int strata_unwrap(uint8_t *out, const uint8_t *sealed, size_t sealedLength, const uint8_t *ad, size_t adLength, const uint8_t *nonce24, const uint8_t *key);

/// SHA-256 of `length` bytes into `out` (32 bytes), and HMAC-SHA-256 under `key`: AWS Signature V4's primitives,
/// from OpenSSL's libcrypto (the S3 client signs its requests with them).
void strata_sha256(uint8_t *out, const void *data, size_t length);
void strata_hmac_sha256(uint8_t *out, const void *key, size_t keyLength, const void *data, size_t length);

/// Overwrites memory that held a secret (not optimised away).
void strata_wipe(void *p, size_t length);

#endif
