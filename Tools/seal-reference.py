#!/usr/bin/env python3
"""An independent implementation of encrypted chains' construction (docs/FORMAT.md, "Encrypted chains"), from
Python's hashlib (BLAKE2b) and the cryptography package (AES-256-GCM, XChaCha20 absent: the key wrapping is
libsodium's alone), for the golden values of Tests/StrataCodecTests/SealingTests.swift. Prints one value a line:
the sealed frame, extent chunk and hash-map chunk, the authenticator, for the test's fixed key, chain id and salt.
"""
import hashlib
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

master = bytes(range(32))
chain = bytes(range(0x10, 0x20))
salt = bytes(range(0x40, 0x58))


def subkey(n):
    """libsodium's crypto_kdf_derive_from_key: BLAKE2b keyed by the master key, salt = id, personal = context."""
    return hashlib.blake2b(b"", digest_size=32, key=master, salt=n.to_bytes(8, "little") + bytes(8),
                           person=b"strata__" + bytes(8)).digest()


def seal(use, plain, associated):
    key = hashlib.blake2b(salt, digest_size=32, key=subkey(use)).digest()  # a key used once
    sealed = AESGCM(key).encrypt(bytes(12), plain, associated)            # ciphertext, then the 16-byte tag
    return sealed[:-16] + salt + sealed[-16:]                              # stored: ciphertext, salt, tag


print(seal(1, b"strata golden frame", chain).hex())
print(seal(2, b"chunk", chain + bytes([7])).hex())
print(seal(3, b"chunk", chain + bytes([7])).hex())
parts = chain + (3).to_bytes(8, "little") + bytes([1, 2, 3])
print(hashlib.blake2b(parts, digest_size=32, key=subkey(4)).hexdigest())
