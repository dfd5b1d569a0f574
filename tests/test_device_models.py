"""Every model on every device: the CPU, the emulated CUDA device
(FASTLM_EMULATE_CUDA=1: the device path over the CPU kernels, bit for bit the
CPU's results) and a real GPU when present (float32 within 1e-5 relative of
the CPU). The model_device fixture (conftest.py) runs each test on each."""
from __future__ import annotations

import numpy as np
import pytest

import fastlm
from fastlm import _C, LSTMLM, GRULM, LanguageModel, Transformer

V, BLOCK = 37, 24


def gpt(device="cpu", **kw):
    args = dict(block_size=BLOCK, n_layer=2, n_head=2, n_embd=16, seed=3)
    args.update(kw)
    return Transformer(V, device=device, **args)


def rnn(cls, device="cpu", **kw):
    return cls(V, embed_dim=8, hidden_size=12, num_layers=2, seed=5, device=device, **kw)


def batch(seed=0, b=3, t=11):
    r = np.random.default_rng(seed)
    return r.integers(0, V, (b, t)), r.integers(0, V, (b, t))


def exact(model) -> bool:
    """Whether the model's backend computes exactly the CPU's arithmetic."""
    return model._g.backend != "cuda"


def assert_same(ours, ref, model, rel=1e-5):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    if exact(model):
        np.testing.assert_array_equal(ours, ref)
    else:
        err = np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30)
        assert err <= rel, err


MAKERS = [pytest.param(gpt, id="gpt"), pytest.param(lambda d="cpu", **kw: rnn(LSTMLM, d, **kw), id="lstm"),
          pytest.param(lambda d="cpu", **kw: rnn(GRULM, d, **kw), id="gru")]


def test_backend_is_the_device(model_device):
    m = gpt(model_device)
    assert m.device == model_device and m._g.device == model_device
    emulated = model_device == "cuda" and _C.cuda_emulated()
    assert m._g.backend == ("cuda-emulated" if emulated else "cuda" if model_device == "cuda" else fastlm.cpu_isa())
    assert fastlm.cuda_available() == _C.cuda_available()  # emulation does not pretend a GPU


@pytest.mark.parametrize("make", MAKERS)
def test_forward_loss_and_gradients_equal_the_cpu(model_device, make):
    x, y = batch()
    ref, dev = make("cpu"), make(model_device)
    assert_same(dev.forward(x), ref.forward(x), dev)
    assert_same(dev.forward_backward(x, y), ref.forward_backward(x, y), dev)
    g_ref, g_dev = ref.gradients(), dev.gradients()
    for name in g_ref:
        assert_same(g_dev[name], g_ref[name], dev)
    assert_same(dev.grad_norm(), ref.grad_norm(), dev)


def test_dropout_equals_the_cpu(model_device):
    """Dropout masks (embedding, attention probabilities, residual branches) are
    the CPU's on every device."""
    x, y = batch()
    ref, dev = gpt("cpu", dropout=0.2), gpt(model_device, dropout=0.2)
    for _ in range(2):  # a second micro-batch draws new masks on both
        assert_same(dev.forward_backward(x, y), ref.forward_backward(x, y), dev)
    g_ref, g_dev = ref.gradients(), dev.gradients()
    for name in g_ref:
        assert_same(g_dev[name], g_ref[name], dev)


@pytest.mark.parametrize("make", MAKERS)
def test_ten_adamw_steps_equal_the_cpu(model_device, make):
    ref, dev = make("cpu"), make(model_device)
    for i in range(10):
        x, y = batch(i)
        for m in (ref, dev):
            m.zero_grad()
            m.forward_backward(x, y)
            m.step(1e-2, grad_scale=0.5)
    sd_ref, sd_dev = ref.state_dict(), dev.state_dict()
    for name in sd_ref:
        assert_same(sd_dev[name], sd_ref[name], dev)
    assert dev.optimizer_step == ref.optimizer_step == 10
    assert_same(dev._tensors.flat("adam_v"), ref._tensors.flat("adam_v"), dev)


def test_sgd_and_evaluate(model_device):
    ref, dev = gpt(), gpt(model_device)
    x, y = batch(1)
    for m in (ref, dev):
        m.forward_backward(x, y)
        m.step(0.1, optimizer="sgd", momentum=0.9)
    tokens = np.random.default_rng(2).integers(0, V, 500)
    assert_same(dev.evaluate(tokens, batch_size=4)["loss"], ref.evaluate(tokens, batch_size=4)["loss"], dev)


@pytest.mark.parametrize("make", MAKERS)
def test_generation_equals_the_cpu(model_device, make):
    ref, dev = make("cpu"), make(model_device)
    prompt = np.array([1, 5, 9, 2])
    np.testing.assert_array_equal(dev.generate(prompt, 12, do_sample=False),
                                  ref.generate(prompt, 12, do_sample=False))
    if exact(dev):  # sampled ids follow the logits bit for bit only on the emulated device
        np.testing.assert_array_equal(dev.generate(prompt, 12, seed=7, top_k=5),
                                      ref.generate(prompt, 12, seed=7, top_k=5))


def test_ragged_prompt_batch(model_device):
    ref, dev = gpt(), gpt(model_device)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    for a, b in zip(dev.generate(prompts, 6, do_sample=False), ref.generate(prompts, 6, do_sample=False)):
        np.testing.assert_array_equal(a, b)


def test_recurrent_state_round_trip(model_device):
    ref, dev = rnn(LSTMLM), rnn(LSTMLM, model_device)
    x, _ = batch(4, b=2, t=5)
    ref._g.forward(x, False), dev._g.forward(x, False)
    (h_ref, c_ref), (h_dev, c_dev) = ref._g.state(), dev._g.state()
    assert_same(h_dev, h_ref, dev)
    assert_same(c_dev, c_ref, dev)
    dev._g.set_state(h_ref * 0.5, c_ref * 0.5)
    ref._g.set_state(h_ref * 0.5, c_ref * 0.5)
    assert_same(dev._g.forward(x, True), ref._g.forward(x, True), dev)


def test_state_dict_is_a_copy_and_views_are_cpu_only(model_device):
    m = gpt(model_device)
    sd = m.state_dict()
    sd["transformer.wte.weight"][...] = 0
    assert np.abs(m.state_dict()["transformer.wte.weight"]).sum() > 0
    if model_device == "cuda":
        with pytest.raises(RuntimeError, match="views exist only of a CPU model"):
            m._g.tensors()
    else:
        assert m._g.tensors()["transformer.wte.weight"].base is not None


def test_load_state_dict_on_the_device(model_device):
    ref, dev = gpt(seed=1), gpt(model_device, seed=2)
    dev.load_state_dict(ref.state_dict())
    x, _ = batch(5)
    assert_same(dev.forward(x), ref.forward(x), dev)


@pytest.mark.parametrize("make", MAKERS)
def test_checkpoints_cross_devices_bit_exactly(model_device, make, tmp_path):
    dev = make(model_device)
    x, y = batch(6)
    dev.forward_backward(x, y)
    dev.step(1e-2)
    dev.save(tmp_path / "dev")
    on_cpu = LanguageModel.load(tmp_path / "dev", device="cpu")
    for name, value in dev.state_dict().items():
        np.testing.assert_array_equal(on_cpu.state_dict()[name], value)
    np.testing.assert_array_equal(on_cpu._tensors.flat("adam_m"), dev._tensors.flat("adam_m"))
    assert on_cpu.optimizer_step == 1
    on_cpu.save(tmp_path / "cpu")
    back = LanguageModel.load(tmp_path / "cpu", device=model_device)
    assert back.device == model_device
    for name, value in on_cpu.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], value)
    np.testing.assert_array_equal(back._tensors.flat("adam_v"), on_cpu._tensors.flat("adam_v"))


def test_to_moves_weights_and_optimizer_state(model_device):
    ref, m = gpt(), gpt()
    x, y = batch(7)
    for model in (ref, m):
        model.forward_backward(x, y)
        model.step(1e-2)
    assert m.to(model_device) is m and m.device == model_device
    for name, value in ref.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[name], value)
    np.testing.assert_array_equal(m._tensors.flat("adam_m"), ref._tensors.flat("adam_m"))
    for model in (ref, m):  # the next step continues from the same state
        model.zero_grad()
        model.forward_backward(x, y)
        model.step(1e-2)
    for name, value in ref.state_dict().items():
        assert_same(m.state_dict()[name], value, m)
    m.to("cpu")
    assert m.device == "cpu" and m.optimizer_step == 2


def test_fit_on_the_device(model_device):
    tokens = np.random.default_rng(8).integers(0, V, 2000)
    ref, dev = gpt(), gpt(model_device)
    kw = dict(steps=3, batch_size=4, block_size=16, lr=1e-2, seed=1, progress=False)
    h_ref, h_dev = ref.fit(tokens, **kw), dev.fit(tokens, **kw)
    assert_same([r["loss"] for r in h_dev], [r["loss"] for r in h_ref], dev)


def test_bf16_precision_on_the_device(model_device):
    on_gpu = model_device == "cuda" and not _C.cuda_emulated()
    if not on_gpu and fastlm.cpu_isa() != "avx512bf16":
        pytest.skip("bf16 on the CPU kernels needs AVX512_BF16")
    ref, dev = gpt(precision="fp32"), gpt(model_device, precision="bf16")
    x, y = batch(9)
    if model_device == "cuda" and _C.cuda_emulated():  # the emulated device is the CPU's bf16
        assert gpt(precision="bf16").forward_backward(x, y) == dev.forward_backward(x, y)
    for i in range(20):  # mixed precision tracks float32 over a short training run
        x, y = batch(9 + i, b=4, t=BLOCK)
        losses = []
        for m in (ref, dev):
            m.zero_grad()
            losses.append(m.forward_backward(x, y))
            m.step(3e-3)
        assert abs(losses[0] - losses[1]) < 2e-2, (i, losses)


def test_tf32_is_for_gpus(model_device):
    if model_device == "cpu":
        with pytest.raises(ValueError, match="tf32"):
            gpt(precision="tf32")
    else:
        m = gpt(model_device, precision="tf32")
        x, y = batch(10)
        assert abs(m.forward_backward(x, y) - gpt().forward_backward(x, y)) < 1e-2
        assert m.config["precision"] == "tf32"


def test_cuda_without_a_gpu_or_emulation_is_refused(monkeypatch):
    monkeypatch.delenv("FASTLM_EMULATE_CUDA", raising=False)
    if fastlm.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="cuda"):
        gpt("cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        gpt().to("cuda")


@pytest.mark.parametrize("device", ["cuda:1", "gpu", "tpu"])
def test_bad_device_names(device):
    with pytest.raises(ValueError, match="device"):
        gpt(device)


def test_out_of_memory_names_the_bytes_and_the_model_stays_usable(model_device):
    m = Transformer(50000, block_size=256, n_layer=1, n_head=1, n_embd=8, device=model_device)
    huge = np.zeros((1 << 14, 256), np.int64)  # logits alone: 2^22 x 50000 floats, 800 GB
    with pytest.raises(MemoryError, match=r"could not allocate \d+ bytes .*activations"):
        m._g.loss(huge, huge)
    x = np.zeros((2, 8), np.int64)
    assert m.forward(x).shape == (2, 8, 50000)


def test_emulated_memory_checks_the_boundary(monkeypatch):
    monkeypatch.setenv("FASTLM_EMULATE_CUDA", "1")
    m = gpt("cuda")
    with pytest.raises(ValueError, match="do not fit"):
        m._g.write("params", np.zeros(m.num_parameters() + 1, np.float32))
    with pytest.raises(ValueError, match="which"):
        m._g.read("weights")


@pytest.mark.skipif(not fastlm.cuda_available(), reason="needs a CUDA GPU")
def test_device_arrays_and_cuda_tensors_as_inputs(monkeypatch):
    monkeypatch.delenv("FASTLM_EMULATE_CUDA", raising=False)
    ref, dev = gpt(), gpt("cuda", seed=9)
    dev.load_state_dict({k: fastlm.to_device(v) for k, v in ref.state_dict().items()})
    x, y = batch(11)
    assert_same(dev.forward(fastlm.to_device(x)), ref.forward(x), dev)
    assert_same(dev.forward_backward(fastlm.to_device(x), fastlm.to_device(y)), ref.forward_backward(x, y), dev)


@pytest.mark.skipif(not fastlm.cuda_available(), reason="needs a CUDA GPU")
def test_gpu_memory_is_counted_and_given_back(monkeypatch):
    monkeypatch.delenv("FASTLM_EMULATE_CUDA", raising=False)
    before, _ = fastlm.cuda.memory_usage(reset_peak=True)
    m = gpt("cuda")
    held, _ = fastlm.cuda.memory_usage()
    assert held - before >= 4 * 4 * m.num_parameters()  # params, grads, two moments
    m.forward_backward(*batch(12))
    assert fastlm.cuda.memory_usage()[1] > held  # activations on top
    del m
    import gc
    gc.collect()
    assert fastlm.cuda.memory_usage()[0] == before
