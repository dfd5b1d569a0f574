"""What the CUDA side of the build promises on every machine, GPU or not:
build_info reports it, cuda_available() is an honest bool, and asking for the
GPU without one fails with a clear RuntimeError (never a crash). Routing host
and device arrays into one op is a ValueError everywhere."""
from __future__ import annotations

import re

import numpy as np
import pytest

import fastlm
from fastlm import _C, ops
from fastlm import cuda as fcuda

no_gpu = pytest.mark.skipif(fastlm.cuda_available(), reason="a GPU is present")


class FakeDeviceArray:
    """Exports __cuda_array_interface__ for a made-up pointer: ops must refuse it
    (no GPU, or a mix with host arrays) before anything reads the memory."""

    def __init__(self, shape, typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr,
                                         "data": (0xDEAD0000, False), "version": 3,
                                         "strides": None}


def test_exports():
    for name in ("cuda_available", "DeviceArray", "to_device"):
        assert name in fastlm.__all__ and hasattr(fastlm, name)
    assert fastlm.DeviceArray is _C.DeviceArray is fcuda.DeviceArray


def test_cuda_available_is_bool():
    assert isinstance(fastlm.cuda_available(), bool)
    if not fastlm.build_info()["cuda"]:
        assert fastlm.cuda_available() is False
    if not fastlm.cuda_available():
        reason = _C.cuda_unavailable_reason()
        assert isinstance(reason, str) and reason


def test_build_info_reports_cuda():
    info = fastlm.build_info()
    assert isinstance(info["cuda"], bool)
    archs = info["cuda_archs"]
    assert isinstance(archs, list)
    if info["cuda"]:
        assert archs and all(re.fullmatch(r"\d+[a-z]?(-real|-virtual)?", a) for a in archs), archs
    else:
        assert archs == []
    # _C's own dict agrees with the public one.
    assert _C.build_info()["cuda"] == info["cuda"]


@no_gpu
def test_to_device_without_gpu_raises():
    with pytest.raises(RuntimeError, match="CUDA is not available|without CUDA"):
        fastlm.to_device(np.zeros(3, np.float32))


@no_gpu
def test_device_array_without_gpu_raises():
    with pytest.raises(RuntimeError, match="CUDA is not available|without CUDA"):
        fastlm.DeviceArray((2, 3))
    with pytest.raises(RuntimeError, match="CUDA is not available|without CUDA"):
        fastlm.DeviceArray((0,))


@no_gpu
@pytest.mark.parametrize("call", [
    lambda x: ops.gelu(x),
    lambda x: ops.softmax(x),
    lambda x: ops.matmul(x, x, trans_b=True),
    lambda x: ops.layernorm(x, FakeDeviceArray((4,)), FakeDeviceArray((4,))),
    lambda x: ops.adamw_step(x, x, x, x, lr=1e-3, step=1),
    lambda x: ops.sum_squares(x),
])
def test_ops_on_device_arrays_without_gpu_raise(call):
    with pytest.raises(RuntimeError, match="CUDA is not available|without CUDA"):
        call(FakeDeviceArray((3, 4)))


def test_mixing_host_and_device_is_value_error():
    dev = FakeDeviceArray((3, 4))
    host = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"matmul: a is on the GPU but b is on the host"):
        ops.matmul(dev, host, trans_b=True)
    with pytest.raises(ValueError, match=r"bias is on the host"):
        ops.matmul(dev, dev, trans_b=True, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"dy is on the GPU but x is on the host"):
        ops.gelu_backward(dev, host)
    with pytest.raises(ValueError, match=r"targets is on the host"):
        ops.cross_entropy(dev, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"param, m are on the GPU but grad, v are on the host"):
        ops.adamw_step(dev, host, dev, host, lr=1e-3, step=1)


def test_is_device_array():
    assert not fcuda.is_device_array(np.zeros(3))
    assert not fcuda.is_device_array(None)
    assert not fcuda.is_device_array([1.0, 2.0])
    assert fcuda.is_device_array(FakeDeviceArray((3,)))


def test_torch_cpu_tensors_are_host_arrays():
    torch = pytest.importorskip("torch")
    assert not fcuda.is_device_array(torch.zeros(3))


def test_host_ops_unaffected():
    # The NumPy path still works (and still rejects what it rejected).
    x = np.linspace(-3, 3, 7, dtype=np.float32)
    assert ops.gelu(x).shape == (7,)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        ops.gelu(x.astype(np.float64))


def test_matmul_precision_argument():
    a = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(ops.matmul(a, a, trans_b=True, precision="tf32"),
                                  ops.matmul(a, a, trans_b=True))
    with pytest.raises(ValueError, match="precision"):
        ops.matmul(a, a, trans_b=True, precision="fp8")


GOOD = {"shape": (2, 3), "typestr": "<f4", "data": (0xDEAD0000, False), "version": 3, "strides": None}


@pytest.mark.parametrize("change, exc, match", [
    (None, TypeError, "__cuda_array_interface__ must be a dict"),
    ({"shape": None}, ValueError, "'shape' must be a tuple"),
    ({"shape": (-1, 4)}, ValueError, "a dimension of 'shape' must be an integer in"),
    ({"shape": (2**33, 2**31)}, ValueError, "is too large"),
    ({"shape": (2.0, 3)}, ValueError, "a dimension of 'shape'"),
    ({"typestr": "zz"}, TypeError, "typestr 'zz'"),
    ({"typestr": ["<f4"]}, TypeError, "typestr"),
    ({"data": (0,)}, ValueError, "'data' must be \\(pointer, readonly\\)"),
    ({"data": (0, False)}, ValueError, "null data pointer"),
    ({"data": (-5, False)}, ValueError, "the data pointer"),
    ({"stream": 0}, ValueError, "'stream'"),
    ({"stream": -5}, ValueError, "'stream'"),
    ({"strides": (4,)}, ValueError, "'strides' must be None or one int per dimension"),
    ({"strides": (4, 8)}, ValueError, "must be C-contiguous"),
    ({"mask": object()}, ValueError, "has a mask"),
])
def test_cuda_array_interface_is_checked_before_use(change, exc, match):
    """Every field of a foreign device array is checked before its pointer is
    handed to the core (here without a GPU, the parser alone)."""
    cai = None if change is None else dict(GOOD, **change)
    with pytest.raises(exc, match=f"^matmul: a.*{match}"):
        fcuda._parse_interface(cai, "matmul: a")


def test_cuda_array_interface_missing_fields():
    for key in ("shape", "typestr", "data"):
        cai = dict(GOOD)
        del cai[key]
        with pytest.raises(ValueError, match=f"matmul: a: __cuda_array_interface__ has no '{key}'"):
            fcuda._parse_interface(cai, "matmul: a")
    assert fcuda._parse_interface(GOOD, "x") == ((2, 3), "float32", 0xDEAD0000, False, None)


@pytest.mark.skipif(not fastlm.build_info()["cuda"], reason="no CUDA in this build: DeviceArray is a stub")
@pytest.mark.parametrize("args, exc, match", [
    (((2.5,),), TypeError, "shape must hold ints, got float"),
    ((("a",),), TypeError, "shape must hold ints, got str"),
    (((True,),), TypeError, "shape must hold ints, got bool"),
    (("ab",), TypeError, "shape must be an int or a tuple of ints, got str"),
    (((-1, 4),), ValueError, "dimensions must be >= 0, got -1"),
    (((2**70,),), ValueError, "does not fit int64"),
    (((2**33, 2**31),), ValueError, "too many elements"),
    (((2,), None), TypeError, "dtype must be float32, bfloat16, int32 or int64, got float64"),
    (((2,), "float64"), TypeError, "dtype must be float32, bfloat16, int32 or int64, got float64"),
])
def test_device_array_arguments_are_checked_first(args, exc, match):
    """Bad shapes and dtypes get a clear error before the GPU is even asked for."""
    for make in (fastlm.DeviceArray, fastlm.DeviceArray.empty):
        with pytest.raises(exc, match=match):
            make(*args)


@pytest.mark.parametrize("shape, size, want", [
    ((2, 3), -1, (2, 3)),
    (5, -1, (5,)),
    ((0, 4), -1, (0, 4)),
    ((np.int64(3), 2), -1, (3, 2)),
    ((10, -1), 100, (10, 10)),
    ((-1,), 7, (7,)),
    (-1, 7, (7,)),
    ((-1, 1, 3), 6, (2, 1, 3)),
    ((2, -1, 0), 0, None),
    ((0, -1), 0, None),
    ((3, -1), 0, (3, 0)),
    ((4, -1), 10, None),
    ((-1, -1), 4, None),
    ((3, 3), 10, None),
    ((), 1, ()),
])
def test_device_shape_logic_matches_numpy(shape, size, want):
    """DeviceArray's shape parsing and reshape, checked without a GPU. A reshape
    (size >= 0) takes one -1 as numpy does; numpy's own reshape is the judge."""
    if size >= 0:
        try:
            expect = np.zeros(size).reshape(shape).shape
        except ValueError:
            expect = None
        assert expect == want
    if want is None:
        with pytest.raises(ValueError, match="reshape|dimensions must be >= 0"):
            _C._device_shape(shape, size)
    else:
        assert _C._device_shape(shape, size) == want


def test_device_shape_refuses_minus_one_outside_reshape():
    with pytest.raises(ValueError, match="dimensions must be >= 0, got -1"):
        _C._device_shape((-1, 4))
    with pytest.raises(ValueError, match="one unknown dimension"):
        _C._device_shape((-1, -1), 4)
    with pytest.raises(ValueError, match=r"cannot reshape an array of size 10 into shape \(4, -1\)"):
        _C._device_shape((4, -1), 10)
    with pytest.raises(TypeError, match="shape must hold ints, got float"):
        _C._device_shape((2.0, -1), 4)
    # numpy takes any negative number for the unknown dimension; -1 is the documented one.
    with pytest.raises(ValueError, match=r"dimensions must be >= 0 \(or one -1\), got -2"):
        _C._device_shape((-2, 5), 10)
