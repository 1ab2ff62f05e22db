import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from mpc.secagg import crypto


def test_key_agreement_is_symmetric_and_bound_to_context():
    a_sk, a_pk = crypto.x25519_keypair()
    b_sk, b_pk = crypto.x25519_keypair()
    assert crypto.agree(a_sk, b_pk, b"r1") == crypto.agree(b_sk, a_pk, b"r1")
    assert crypto.agree(a_sk, b_pk, b"r1") != crypto.agree(a_sk, b_pk, b"r2")


def test_sealed_box_rejects_tampering_and_other_associated_data():
    key = crypto.random_seed()
    blob = crypto.seal(key, b"share", b"aad")
    assert crypto.open_sealed(key, blob, b"aad") == b"share"
    with pytest.raises(InvalidTag):
        crypto.open_sealed(key, blob, b"other round")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(InvalidTag):
        crypto.open_sealed(key, tampered, b"aad")


@pytest.mark.parametrize(
    "make", [ed25519.Ed25519PrivateKey.generate, lambda: ec.generate_private_key(ec.SECP384R1())]
)
def test_signatures_verify_only_the_signed_bytes(make):
    key = make()
    sig = crypto.sign(key, b"keys")
    assert crypto.verify(key.public_key(), sig, b"keys")
    assert not crypto.verify(key.public_key(), sig, b"other keys")


def test_mask_is_deterministic_per_seed_and_info():
    seed = crypto.random_seed()
    m = crypto.mask(seed, 1000, b"a")
    assert m.dtype == np.uint64 and m.shape == (1000,)
    assert np.array_equal(m, crypto.mask(seed, 1000, b"a"))
    assert not np.array_equal(m, crypto.mask(seed, 1000, b"b"))


def test_shamir_needs_threshold_shares():
    secret = crypto.random_seed()
    shares = crypto.share(secret, 3, 5)
    assert crypto.reconstruct({i: shares[i] for i in (1, 4, 5)}) == secret
    assert crypto.reconstruct(shares) == secret
    assert crypto.reconstruct({i: shares[i] for i in (2, 3)}) != secret
    with pytest.raises(ValueError, match="threshold 6"):
        crypto.share(secret, 6, 5)
