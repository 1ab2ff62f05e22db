import numpy as np
import pytest

from mpc.secagg.fixedpoint import bound, decode, encode
from mpc.secagg.reference import plaintext_sum


def test_round_trip_within_half_a_unit():
    x = np.random.default_rng(0).normal(scale=50, size=10_000)
    err = np.abs(decode(encode(x, 20), 20) - x).max()
    assert err <= 2.0**-21


def test_sum_of_signed_values_wraps_back_to_the_true_sum():
    rng = np.random.default_rng(1)
    xs = [rng.normal(scale=1000, size=500) for _ in range(7)]
    total = decode(plaintext_sum({str(i): encode(x) for i, x in enumerate(xs)}))
    np.testing.assert_allclose(total, np.sum(xs, axis=0), atol=7 * 2.0**-33)


def test_values_beyond_the_bound_are_refused_with_their_name():
    limit = bound(32, 10)
    with pytest.raises(OverflowError, match=r"layer\.weight has magnitude"):
        encode(np.array([0.0, -limit]), 32, max_parties=10, name="layer.weight")
    encode(np.array([limit * 0.99]), 32, max_parties=10)


def test_nan_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        encode(np.array([1.0, np.nan]), name="loss")
