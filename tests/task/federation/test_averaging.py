"""The server's moving average of the global model over rounds."""

from __future__ import annotations

import numpy as np
import pytest

from task.federation import averaging


def test_first_round_starts_at_the_aggregate_then_decays_with_warm_up() -> None:
    first = {"w": np.array([1.0, 2.0], dtype=np.float32), "n": np.array(3, dtype=np.int64)}
    avg = averaging.update(None, first, 0.7, 1)
    assert avg["w"].dtype == np.float64
    np.testing.assert_array_equal(avg["w"], [1.0, 2.0])
    second = {"w": np.array([3.0, 6.0], dtype=np.float32), "n": np.array(7, dtype=np.int64)}
    avg = averaging.update(avg, second, 0.7, 2)
    d = 3 / 12  # warm-up (1 + r) / (10 + r) is below 0.7 at round 2
    np.testing.assert_allclose(avg["w"], [d * 1 + (1 - d) * 3, d * 2 + (1 - d) * 6])
    # integer buffers (BatchNorm's batch counter) take the latest aggregate's value
    assert avg["n"].dtype == np.int64 and int(avg["n"]) == 7


def test_decay_is_capped_by_the_configured_value() -> None:
    assert averaging.decay_at(0.7, 1) == pytest.approx(2 / 11)
    assert averaging.decay_at(0.7, 20) == pytest.approx(0.7)
    assert averaging.decay_at(0.7, 100) == 0.7
    assert averaging.decay_at(0.99, 100) == pytest.approx(101 / 110)


def test_the_state_does_not_alias_the_aggregate() -> None:
    arrays = {"w": np.ones(3, dtype=np.float64), "n": np.array(1)}
    avg = averaging.update(None, arrays, 0.5, 1)
    arrays["w"][:] = 5.0
    arrays["n"][...] = 9
    np.testing.assert_array_equal(avg["w"], np.ones(3))
    assert int(avg["n"]) == 1


def test_in_dtypes_casts_back_to_the_model() -> None:
    avg = {"w": np.array([0.5], dtype=np.float64), "n": np.array(2, dtype=np.int64)}
    out = averaging.in_dtypes(avg, {"w": np.dtype(np.float32)})
    assert out["w"].dtype == np.float32 and out["n"].dtype == np.int64


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, True, "0.7"])
def test_a_bad_decay_is_refused_by_name(bad) -> None:
    with pytest.raises(ValueError, match=r"federation\.ema_decay="):
        averaging.check_decay(bad)


def test_none_means_no_average() -> None:
    assert averaging.check_decay(None) is None
    assert averaging.check_decay(0.7) == 0.7


def test_zero_dimensional_float_arrays_stay_arrays() -> None:
    # NumPy arithmetic on 0-d arrays gives scalars, which torch.from_numpy refuses.
    avg = averaging.update(None, {"c": np.array(1.0, dtype=np.float32)}, 0.7, 1)
    avg = averaging.update(avg, {"c": np.array(0.0, dtype=np.float32)}, 0.7, 2)
    out = averaging.in_dtypes(avg, {"c": np.dtype(np.float32)})
    assert isinstance(out["c"], np.ndarray) and out["c"].shape == () and 0 < out["c"] < 1
