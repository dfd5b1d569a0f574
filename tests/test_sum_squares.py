"""sum_squares (the gradient-norm reduction) against a float64 reference on every
backend (each CPU ISA, the emulated device, CUDA); bad arguments."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from conftest import assert_error_bound, same_on_thread_counts
from reference.sum_squares import naive32

# 16,384-element blocks: one, a partial second, and enough of them to run threaded.
SIZES = [0, 1, 3, 17, 33, 127, 16_384, 16_385, 100_003]


@pytest.mark.parametrize("n", SIZES)
def test_sum_squares_against_float64(backend, rng, n):
    x = (rng.standard_normal(n) * rng.uniform(0.1, 10)).astype(np.float32)
    ref = float(np.sum(x.astype(np.float64) ** 2))
    got = ops.sum_squares(backend.put(x))
    assert isinstance(got, float) and got == ops.sum_squares(backend.put(x))
    assert_error_bound(np.array([got]), np.array([ref]), np.array([naive32(x)]), name=f"sum_squares n={n}")
    if backend.gpu:  # the CUDA reduction sums in float64
        np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_sum_squares_any_shape_and_thread_count(rng):
    x = rng.standard_normal((333, 301)).astype(np.float32)
    assert ops.sum_squares(x) == ops.sum_squares(x.reshape(-1))
    assert same_on_thread_counts(lambda: np.array([ops.sum_squares(x)]))
    x[7, 9] = np.nan
    assert np.isnan(ops.sum_squares(x))


@pytest.mark.parametrize("bad, err, match", [
    (np.zeros(4), TypeError, "sum_squares: x must have dtype float32"),
    (np.zeros((4, 4), np.float32)[:, 1], ValueError, "sum_squares: x must be C-contiguous"),
    ([1.0, 2.0], TypeError, "sum_squares: x must be a numpy.ndarray")])
def test_sum_squares_bad_arguments(bad, err, match):
    with pytest.raises(err, match=match):
        ops.sum_squares(bad)
