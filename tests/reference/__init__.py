"""Float64 references of every op (and the naive float32 / bfloat16 yardsticks
that set the error bounds), one module per op family. Tests import them from
here; no test module imports another.

Each reference takes a ``dtype``: float64 is the reference, float32 the naive
computation whose own error (times a small factor) bounds ours
(conftest.assert_error_bound)."""
