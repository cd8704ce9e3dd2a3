#include "CSeal.h"
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <sodium.h>
#include <string.h>

int strata_seal_init(void) { return sodium_init() < 0 ? -1 : 0; }

void strata_random(void *out, size_t length) { randombytes_buf(out, length); }

// One cipher context a thread for each direction, made once: only the key changes from one seal to the next.
static __thread EVP_CIPHER_CTX *contexts[2];
static const uint8_t zeroNonce[12];

// AES-256-GCM in place under the key used once (keyed BLAKE2b-256 of the salt): `encrypt` 1 writes `tag`,
// 0 checks it. 0 on success.
static int gcm(int encrypt, const uint8_t *master, const uint8_t *salt, const uint8_t *ad, size_t adLength, uint8_t *text, size_t length, uint8_t *tag) {
    EVP_CIPHER_CTX **ctx = &contexts[encrypt];
    if (!*ctx) {
        *ctx = EVP_CIPHER_CTX_new();
        if (!*ctx || EVP_CipherInit_ex(*ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, encrypt) != 1) return -1;
    }
    uint8_t key[32];
    crypto_generichash(key, 32, salt, 24, master, 32);
    int n = 0, ok = EVP_CipherInit_ex(*ctx, NULL, NULL, key, zeroNonce, encrypt) == 1;
    sodium_memzero(key, sizeof key);
    ok = ok && (adLength == 0 || EVP_CipherUpdate(*ctx, NULL, &n, ad, (int)adLength) == 1);
    while (ok && length > 0) {
        int chunk = length > (1u << 30) ? (1 << 30) : (int)length;
        ok = EVP_CipherUpdate(*ctx, text, &n, text, chunk) == 1;
        text += chunk;
        length -= (size_t)chunk;
    }
    if (!encrypt) ok = ok && EVP_CIPHER_CTX_ctrl(*ctx, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1;
    ok = ok && EVP_CipherFinal_ex(*ctx, text, &n) == 1;
    if (encrypt) ok = ok && EVP_CIPHER_CTX_ctrl(*ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    return ok ? 0 : -1;
}

int strata_seal(const uint8_t *master, const uint8_t *salt, const uint8_t *ad, size_t adLength, uint8_t *text, size_t length, uint8_t *tag) {
    return gcm(1, master, salt, ad, adLength, text, length, tag);
}

int strata_open(const uint8_t *master, const uint8_t *salt, const uint8_t *ad, size_t adLength, uint8_t *text, size_t length, const uint8_t *tag) {
    return gcm(0, master, salt, ad, adLength, text, length, (uint8_t *)tag);
}

void strata_mac(uint8_t *out, size_t outLength, const uint8_t *key, const void *data, size_t length) {
    crypto_generichash(out, outLength, data, length, key, 32);
}

void strata_subkey(uint8_t *out, size_t length, uint64_t id, const uint8_t *master) {
    crypto_kdf_derive_from_key(out, length, id, "strata__", master);
}

int strata_passphrase_key(uint8_t *key, const char *passphrase, size_t length, const uint8_t *salt16, uint64_t opsLimit, size_t memLimit) {
    return crypto_pwhash(key, 32, passphrase, length, salt16, opsLimit, memLimit, crypto_pwhash_ALG_ARGON2ID13);
}

uint64_t strata_passphrase_ops_default(void) { return crypto_pwhash_OPSLIMIT_MODERATE; }
size_t strata_passphrase_mem_default(void) { return crypto_pwhash_MEMLIMIT_MODERATE; }

void strata_wrap(uint8_t *out, const uint8_t *plain, size_t length, const uint8_t *ad, size_t adLength, const uint8_t *nonce24, const uint8_t *key) {
    crypto_aead_xchacha20poly1305_ietf_encrypt(out, NULL, plain, length, ad, adLength, NULL, nonce24, key);
}

int strata_unwrap(uint8_t *out, const uint8_t *sealed, size_t sealedLength, const uint8_t *ad, size_t adLength, const uint8_t *nonce24, const uint8_t *key) {
    return crypto_aead_xchacha20poly1305_ietf_decrypt(out, NULL, NULL, sealed, sealedLength, ad, adLength, nonce24, key);
}

void strata_wipe(void *p, size_t length) { sodium_memzero(p, length); }

void strata_sha256(uint8_t *out, const void *data, size_t length) { SHA256(data, length, out); }

void strata_hmac_sha256(uint8_t *out, const void *key, size_t keyLength, const void *data, size_t length) {
    unsigned int n = 32;
    HMAC(EVP_sha256(), key, (int)keyLength, data, length, out, &n);
}
