"""Each kind of bad update is refused with a reason naming the site, tensor and value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from task.federation.update_check import (
    UpdateRejected,
    check_metrics,
    check_range,
    check_update,
    check_weight,
    metric_key_outliers,
    update_norm,
    validate_max_norm,
)

GLOBAL = {
    "conv.weight": np.zeros((2, 3), dtype=np.float32),
    "fc.bias": np.zeros(2, dtype=np.float32),
    "bn.num_batches_tracked": np.array(7, dtype=np.int64),
}


def _update(**changes) -> dict[str, np.ndarray]:
    update = {
        "conv.weight": np.full((2, 3), 0.5, dtype=np.float32),
        "fc.bias": np.array([0.5, -0.5], dtype=np.float32),
        "bn.num_batches_tracked": np.array(9, dtype=np.int64),
    }
    update.update(changes)
    return {k: v for k, v in update.items() if v is not None}


def _rejected(update, max_norm=None) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as info:
        check_update(update, GLOBAL, site="site-2", max_norm=max_norm)
    assert info.value.site == "site-2"
    assert "site 'site-2'" in str(info.value)
    return info.value


def test_a_good_update_passes_and_its_norm_leaves_out_integer_counters() -> None:
    # 8 float values of magnitude 0.5: norm sqrt(8 * 0.25) = sqrt(2); the counter's +2
    # is not a weight and does not count.
    norm = check_update(_update(), GLOBAL, site="site-0", max_norm=1.5)
    assert norm == pytest.approx(math.sqrt(2))
    assert update_norm(_update(), GLOBAL) == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected_naming_tensor_value_and_position(bad) -> None:
    weights = np.full((2, 3), 0.5, dtype=np.float32)
    weights[1, 2] = bad
    err = _rejected(_update(**{"conv.weight": weights}))
    assert err.tensor == "conv.weight"
    assert f"1 non-finite value(s) (first: {bad} at index (1, 2))" in str(err)


def test_wrong_shape_is_rejected() -> None:
    err = _rejected(_update(**{"fc.bias": np.zeros(3, dtype=np.float32)}))
    assert err.tensor == "fc.bias"
    assert "shape (3,), expected (2,)" in str(err)


def test_wrong_dtype_is_rejected() -> None:
    err = _rejected(_update(**{"fc.bias": np.zeros(2, dtype=np.float64)}))
    assert err.tensor == "fc.bias"
    assert "dtype float64, expected float32" in str(err)


def test_extra_tensor_is_rejected_by_name() -> None:
    err = _rejected(_update(backdoor=np.zeros(1, dtype=np.float32)))
    assert "extra 'backdoor'" in str(err)
    assert "missing" not in str(err)


def test_missing_tensor_is_rejected_by_name() -> None:
    err = _rejected(_update(**{"fc.bias": None}))
    assert "missing 'fc.bias'" in str(err)
    assert "extra" not in str(err)


def test_update_beyond_the_norm_bound_is_rejected_with_norm_bound_and_largest_part() -> None:
    update = _update(**{"conv.weight": np.full((2, 3), 2.0, dtype=np.float32)})
    norm = math.sqrt(6 * 4 + 2 * 0.25)
    err = _rejected(update, max_norm=4.0)
    assert err.tensor == "conv.weight"
    assert f"update norm {norm:.6g} exceeds federation.max_update_norm=4" in str(err)
    # Just within the bound it passes; with no bound any finite update passes.
    assert check_update(update, GLOBAL, site="s", max_norm=norm + 1e-9) == pytest.approx(norm)
    assert check_update(update, GLOBAL, site="s", max_norm=None) == pytest.approx(norm)


@pytest.mark.parametrize("value", [0, -3, float("nan"), float("inf"), "12", True, None])
def test_example_count_must_be_a_positive_finite_number(value) -> None:
    with pytest.raises(UpdateRejected, match="num-examples"):
        check_weight(value, site="site-1")
    assert check_weight(12, site="site-1") == 12.0


def test_non_finite_metric_is_rejected() -> None:
    check_metrics({"loss": 0.3, "confusion": [1, 2, 3, 4]}, site="s")
    with pytest.raises(UpdateRejected, match="metric 'loss' holds 1 non-finite"):
        check_metrics({"loss": float("nan")}, site="s")


def test_range_check_refuses_values_the_encoding_cannot_hold() -> None:
    check_range("arrays/w", np.array([-9.9, 9.9]), 10.0, site="s")
    with pytest.raises(UpdateRejected, match=r"'arrays/w' reaches magnitude 10, outside"):
        check_range("arrays/w", np.array([1.0, -10.0]), 10.0, site="s")
    with pytest.raises(UpdateRejected, match="non-finite"):
        check_range("arrays/w", np.array([np.nan]), 10.0, site="s")


def test_metric_key_outliers_are_the_minority() -> None:
    usual = {"num-examples", "loss"}
    odd = metric_key_outliers([usual, usual | {"extra"}, usual, {"num-examples"}])
    assert set(odd) == {1, 3}
    assert "extra 'extra'" in odd[1] and "missing 'loss'" in odd[3]
    assert metric_key_outliers([usual, usual]) == {}


@pytest.mark.parametrize("value", [-1, 0, float("nan"), float("inf"), "big", True])
def test_a_bad_configured_bound_fails_naming_the_value(value) -> None:
    with pytest.raises(ValueError, match=rf"federation\.max_update_norm={value!r}"):
        validate_max_norm(value)


def test_a_good_configured_bound_is_a_float() -> None:
    assert validate_max_norm(None) is None
    assert validate_max_norm(3) == 3.0
