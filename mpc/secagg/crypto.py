"""The cryptographic primitives of secure aggregation, all from well-kept libraries.

* Key agreement: X25519 (``cryptography``), the shared secret stretched by HKDF-SHA256 with
  a context string, so every key is bound to one run, round and purpose.
* Authenticated encryption: AES-256-GCM with a random 96-bit nonce; the associated data
  names the protocol, run, round, sender and recipient, so a ciphertext moved to another
  round or recipient fails authentication.
* Identity signatures: each site signs its round keys with its long-term key (Ed25519 or
  ECDSA P-384 in OpenSSH format, the format of Flower's SuperNode keys); every site checks
  the signatures against the federation's roster, so the server cannot substitute keys.
* Masks: the ChaCha20 key stream of an HKDF-derived key (a CSPRNG expansion of a secret
  seed), read as ``uint64``.
* Secret sharing: Shamir's scheme from ``pycryptodome`` (GF(2^128), so a 32-byte secret is
  shared as two 16-byte halves).
"""

from __future__ import annotations

import secrets

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_BYTES = 32
NONCE_BYTES = 12
_HALF = 16

IdentityPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
IdentityPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def random_seed() -> bytes:
    """A fresh secret seed from the operating system's CSPRNG."""
    return secrets.token_bytes(SEED_BYTES)


# -- key agreement -------------------------------------------------------------------------
def x25519_keypair() -> tuple[bytes, bytes]:
    """``(private, public)`` raw 32-byte X25519 keys."""
    private = x25519.X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    return (
        private.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
        private.public_key().public_bytes(raw, serialization.PublicFormat.Raw),
    )


def derive(secret: bytes, info: bytes, length: int = SEED_BYTES) -> bytes:
    """HKDF-SHA256 of ``secret`` bound to ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def agree(private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key shared by the two holders of an X25519 pair, bound to ``info``."""
    shared = x25519.X25519PrivateKey.from_private_bytes(private).exchange(
        x25519.X25519PublicKey.from_public_bytes(peer_public)
    )
    return derive(shared, info)


# -- authenticated encryption --------------------------------------------------------------
def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``nonce || AES-GCM(plaintext)``, authenticated together with ``aad``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Decrypt :func:`seal`'s output; raises ``cryptography.exceptions.InvalidTag``."""
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


# -- identity signatures -------------------------------------------------------------------
def load_identity(data: bytes) -> IdentityPrivateKey:
    """A site's long-term private key from OpenSSH or PEM bytes."""
    if data.lstrip().startswith(b"-----BEGIN OPENSSH"):
        key = serialization.load_ssh_private_key(data, password=None)
    else:
        key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"identity key of type {type(key).__name__} is not Ed25519 or ECDSA")
    return key


def load_identity_public(line: str) -> IdentityPublicKey:
    """A site's public key from one OpenSSH line (``ssh-ed25519 ...`` or ``ecdsa-...``)."""
    key = serialization.load_ssh_public_key(line.strip().encode())
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"public key {line[:30]!r}... is not Ed25519 or ECDSA")
    return key


def sign(key: IdentityPrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA384()))


def verify(key: IdentityPublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


# -- masks ---------------------------------------------------------------------------------
def mask(seed: bytes, length: int, info: bytes) -> np.ndarray:
    """``length`` pseudo-random ``uint64`` from ``seed`` (ChaCha20 of an HKDF key)."""
    key = derive(seed, info)
    # The key is used for this one stream only, so a fixed nonce is safe.
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    return np.frombuffer(stream, dtype=np.uint64)


# -- Shamir secret sharing -----------------------------------------------------------------
def share(secret: bytes, threshold: int, n: int) -> dict[int, bytes]:
    """Shares ``1..n`` of a 32-byte secret; any ``threshold`` of them reconstruct it."""
    if len(secret) != SEED_BYTES:
        raise ValueError(f"secret of {len(secret)} bytes; only {SEED_BYTES}-byte secrets")
    if not 1 <= threshold <= n:
        raise ValueError(f"threshold {threshold} must be in [1, {n}]")
    halves = [Shamir.split(threshold, n, secret[i : i + _HALF]) for i in (0, _HALF)]
    return {idx: a + b for (idx, a), (_, b) in zip(*halves, strict=True)}


def reconstruct(shares: dict[int, bytes]) -> bytes:
    """The secret from ``threshold`` or more shares (fewer give an unrelated value)."""
    if not shares:
        raise ValueError("no shares to reconstruct from")
    out = b""
    for offset in (0, _HALF):
        out += Shamir.combine([(i, s[offset : offset + _HALF]) for i, s in shares.items()])
    return out
