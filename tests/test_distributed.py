"""fastlm.distributed and data-parallel fit.

The one-process tests run everywhere. The job tests start ``mpirun -n N``
on tests/mpi_worker.py (or on ``python -m fastlm``) and need mpi4py and an
``mpirun`` (``pip install 'fastlm[mpi]'``); they skip without them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastlm
from fastlm import distributed as dist
from fastlm import _nccl, zero

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mpi_worker  # noqa: E402

try:
    import mpi4py  # noqa: F401
    HAVE_MPI = shutil.which("mpirun") is not None
except ImportError:
    HAVE_MPI = False
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpirun (pip install 'fastlm[mpi]')")

LAUNCH_VARS = [v for group in (dist._RANK_VARS, dist._SIZE_VARS, dist._LOCAL_RANK_VARS, dist._LOCAL_SIZE_VARS)
               for v in group]


@pytest.fixture
def no_launcher(monkeypatch):
    for v in LAUNCH_VARS:
        monkeypatch.delenv(v, raising=False)


# ------------------------------------------------------------------ one process

def test_one_rank_without_launcher(no_launcher):
    w = dist.World()
    assert (w.rank, w.size, w.local_rank, w.comm) == (0, 1, 0, None)
    x = np.arange(4, dtype=np.float32)
    assert w.all_reduce(x) is x and np.array_equal(x, np.arange(4))
    w.broadcast(x)
    w.barrier()
    assert w.all_gather_object("a") == ["a"] and w.broadcast_object(7) == 7


@pytest.mark.parametrize("env, launched", [({}, False), ({"PMI_RANK": "0", "PMI_SIZE": "2"}, True),
                                           ({"PMI_RANK": "0", "PMI_SIZE": "1"}, False),
                                           ({"OMPI_COMM_WORLD_SIZE": "4"}, True), ({"PMIX_RANK": "3"}, True)])
def test_launcher_detection(no_launcher, monkeypatch, env, launched):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert dist.launched_by_mpi() is launched


def test_mpi4py_missing_under_launcher(no_launcher, monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with pytest.raises(RuntimeError, match=r"mpi4py.*fastlm\[mpi\]") as e:
        dist.World()
    assert dist.is_collective(e.value)
    assert not dist.should_report(e.value)  # rank 1: rank 0 reports it


@pytest.mark.parametrize("buf, err", [([1.0, 2.0], TypeError), (np.arange(3), TypeError),
                                      (np.zeros((4, 4), np.float32)[:, 1], ValueError)])
def test_all_reduce_bad_buffers(no_launcher, buf, err):
    with pytest.raises(err, match="all_reduce: buf"):
        dist.World().all_reduce(buf)


def test_bad_op_and_root(no_launcher):
    w = dist.World()
    with pytest.raises(ValueError, match="op must be"):
        w.all_reduce(np.zeros(2), "max")
    with pytest.raises(ValueError, match="root"):
        w.broadcast(np.zeros(2), root=1)
    with pytest.raises(TypeError, match="broadcast: buf"):
        w.broadcast([0.0])


def test_per_rank_batch():
    assert dist.per_rank_batch(12, 4, "b") == 3
    with pytest.raises(ValueError, match="fewer than the 5 ranks"):
        dist.per_rank_batch(4, 5, "b")
    with pytest.raises(ValueError, match="cannot share evenly"):
        dist.per_rank_batch(8, 3, "b")


def test_data_fingerprint_tells_corpora_apart():
    a = np.arange(200_000) % 50
    b = a.copy()
    b[-1] += 1
    assert dist.data_fingerprint(a) == dist.data_fingerprint(a.copy())
    assert dist.data_fingerprint(a) != dist.data_fingerprint(b)
    assert dist.data_fingerprint(None) is None


def test_default_threads(no_launcher):
    w = dist.World()
    assert dist.default_threads(w, 8) is None  # one rank per machine: its own choice
    w.local_size = 2
    cores = len(os.sched_getaffinity(0))
    if "OMP_NUM_THREADS" not in os.environ:
        assert dist.default_threads(w, cores) == max(1, cores // 2)
        assert dist.default_threads(w, cores + 1) is None  # set by the user: kept


def test_nccl_missing_library():
    with pytest.raises(RuntimeError, match="no libnccl could be loaded.*nvidia-nccl-cu12.*/nonexistent/libnccl"):
        _nccl.load_library(["/nonexistent/libnccl.so.2"])
    assert _nccl.library_candidates()[-1] == "libnccl.so.2"


class _FakeDeviceArray:
    __cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "data": (1 << 20, False), "version": 3}


def test_device_all_reduce_needs_gpu(no_launcher):
    w = dist.World()
    buf = _FakeDeviceArray()
    assert w.all_reduce(buf) is buf  # one rank: nothing to reduce
    if fastlm.cuda_available():
        pytest.skip("a GPU is present: the error this checks does not arise")
    w.size = 2  # as a rank of a job would see it
    with pytest.raises(RuntimeError, match="needs a GPU"):
        w.all_reduce(buf)


def test_nccl_all_reduce_in_one_process(no_launcher):
    """NCCL's first contact on a GPU, in one process: the library, a unique id,
    a communicator of one rank and an all-reduce of a float32 device buffer
    through ctypes, whose sum and mean over one rank leave it as it was."""
    if not fastlm.cuda_available():
        pytest.skip("needs an NVIDIA GPU")
    try:
        _nccl.load_library()
    except RuntimeError as e:
        pytest.skip(str(e))
    comm = _nccl.NcclCommunicator(dist.World())
    x = np.arange(1001, dtype=np.float32) - 500.25
    buf = fastlm.to_device(x)
    for op in ("sum", "mean"):
        comm.all_reduce(buf, op)
        np.testing.assert_array_equal(buf.numpy(), x)
    with pytest.raises(TypeError, match="float32"):
        comm.all_reduce(fastlm.to_device(x.astype(np.int32)), "sum")


# ------------------------------------------------------------------------ jobs

def _env(**extra):
    env = dict(os.environ)
    for v in LAUNCH_VARS:
        env.pop(v, None)
    python_dir = os.path.dirname(os.path.dirname(fastlm.__file__))
    env["PYTHONPATH"] = os.pathsep.join([python_dir, HERE] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def mpirun(n, args, *, timeout=120, **env):
    """Run ``mpirun -n n python ARGS``; returns (returncode, stderr, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run(["mpirun", "-n", str(n), sys.executable] + list(args), capture_output=True, text=True,
                       timeout=timeout, env=_env(**env))
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


def worker(n, *args, **kw):
    return mpirun(n, [os.path.join(HERE, "mpi_worker.py")] + [str(a) for a in args], **kw)


def one_process(kind, batch_size, steps, ckpt=None, resume=False, stop_at=None):
    model = mpi_worker.make(kind)
    extra = {} if ckpt is None else {"checkpoint_dir": ckpt, "checkpoint_interval": 2, "resume": resume}
    if stop_at is not None:
        extra["callback"] = lambda step, m: step < stop_at
    hist = model.fit(**mpi_worker.fit_args(batch_size, steps, kind), **extra)
    return model._g.flat_params().copy(), hist


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@needs_mpi
def test_collectives(tmp_path):
    rc, out, _ = worker(2, "collectives", tmp_path)
    assert rc == 0, out
    for r in range(2):
        got = np.load(tmp_path / f"collectives{r}.npy")
        np.testing.assert_allclose(got[:5], 1.5)  # mean of 1 and 2
        np.testing.assert_allclose(got[5:8], np.arange(3.0) * 3)  # sum of 1x and 2x
        np.testing.assert_array_equal(got[8:12], 1)  # rank 1's
        assert list(got[12:]) == [2, r, 2]


@needs_mpi
@pytest.mark.parametrize("kind", ["transformer", "lstm", "lstm-stateful"])
def test_two_ranks_equal_one_process_at_twice_the_batch(tmp_path, kind):
    rc, out, _ = worker(2, "train", tmp_path, kind, 4, 5)
    assert rc == 0, out
    ref, hist = one_process(kind, 8, 5)
    assert rel(np.load(tmp_path / "params.npy"), ref) <= 1e-5
    losses = np.load(tmp_path / "losses.npy")
    np.testing.assert_allclose(losses[:, 0], hist.losses, rtol=1e-5)
    np.testing.assert_allclose(losses[:, 1], [e["val_loss"] or 0 for e in hist], rtol=1e-5)
    # Rank 0 alone saved, at steps 2, 4 and the end.
    assert (tmp_path / "saves.txt").read_text().split() == ["0", "0", "0"]


@needs_mpi
@pytest.mark.parametrize("kind", ["transformer", "lstm-stateful"])
def test_resume_with_another_number_of_ranks(tmp_path, kind):
    ref, _ = one_process(kind, 8, 5)
    # Two ranks stopped at step 3 (saved there), then one process on: the global batch (8) is kept.
    rc, out, _ = worker(2, "train", tmp_path, kind, 4, 5, 3)
    assert rc == 0, out
    assert (tmp_path / "saves.txt").read_text().split() == ["0", "0"]  # steps 2 and 3
    got, hist = one_process(kind, 8, 5, ckpt=str(tmp_path / "ckpt"), resume=True)
    assert [e["step"] for e in hist] == [1, 2, 3, 4, 5]
    assert rel(got, ref) <= 1e-5
    # One process stopped at step 2, then two ranks on.
    one = tmp_path / "one"
    one.mkdir()
    one_process(kind, 8, 5, ckpt=str(one / "ckpt"), stop_at=2)
    rc, out, _ = worker(2, "train", one, kind, 4, 5, "resume")
    assert rc == 0, out
    assert rel(np.load(one / "params.npy"), ref) <= 1e-5


@needs_mpi
@pytest.mark.parametrize("how", ["raise", "exit", "kill"])
def test_a_failing_rank_ends_the_job(tmp_path, how):
    rc, out, secs = worker(2, "fail", tmp_path, how, timeout=60)
    assert rc != 0
    assert secs < 30
    if how == "raise":
        assert "rank 1 of 2 failed" in out and "injected failure on rank 1" in out
    elif how == "exit":
        assert "rank 1 of 2 failed" in out and "SystemExit: 3" in out
    # The checkpoint of step 2, made before the failure, is whole; step 4 never completed.
    model = fastlm.LanguageModel.load(tmp_path / "ckpt")
    assert model.optimizer_step == 2


@needs_mpi
def test_an_uncaught_exception_outside_fit_ends_the_job(tmp_path):
    rc, out, secs = worker(2, "raise-outside-fit", tmp_path, timeout=60)
    assert rc != 0 and secs < 30
    assert "rank 1 of 2 failed" in out and "raised outside fit on rank 1" in out


@needs_mpi
def test_ranks_that_disagree_are_refused_once(tmp_path):
    rc, out, secs = worker(2, "seeds", tmp_path, timeout=60)
    assert rc != 0 and secs < 30
    assert out.count("the ranks disagree on model") == 1, out


@needs_mpi
def test_bad_argument_reported_once(tmp_path):
    rc, out, _ = worker(2, "bad-batch", tmp_path, timeout=60)
    assert rc != 0
    assert out.count("batch_size must be") == 1, out


@needs_mpi
def test_bad_argument_on_one_rank_reported_once(tmp_path):
    rc, out, secs = worker(2, "bad-batch-rank1", tmp_path, timeout=60)
    assert rc != 0 and secs < 30
    assert out.count("batch_size must be") == 1 and "fit failed on rank 1 of 2" in out, out


def _cli(n, tmp_path, *args, **env):
    return mpirun(n, ["-m", "fastlm", "train", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "out"),
                      "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8",
                      "--eval-interval", "2", "--no-progress"] + list(args), **env)


@needs_mpi
def test_cli_train_under_mpirun(tmp_path):
    (tmp_path / "corpus.txt").write_text("to be or not to be, that is the question. " * 40)
    rc, out, _ = _cli(2, tmp_path, "--steps", "3", "--batch-size", "2")
    assert rc == 0, out
    assert out.count("saved checkpoint") == 1 and "on 2 ranks" in out
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 3
    # Resumed on 3 ranks, the global batch of 4 cannot be shared: one clear error.
    rc, out, _ = _cli(3, tmp_path, "--steps", "5", "--resume", timeout=60)
    assert rc == 2 and out.count("cannot share evenly") == 1, out
    rc, out, _ = _cli(4, tmp_path, "--steps", "5", "--resume")  # one row per rank
    assert rc == 0, out
    assert fastlm.LanguageModel.load(tmp_path / "out").optimizer_step == 5


@needs_mpi
def test_cli_without_mpi4py_under_mpirun(tmp_path):
    fake = tmp_path / "fake" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('mpi4py hidden for this test')\n")
    (tmp_path / "corpus.txt").write_text("abc " * 100)
    rc, out, _ = _cli(2, tmp_path, "--steps", "2", PYTHONPATH=os.pathsep.join(
        [str(tmp_path / "fake"), os.path.dirname(os.path.dirname(fastlm.__file__))]), timeout=60)
    assert rc != 0
    assert out.count("mpi4py cannot be imported") == 1, out


@needs_mpi
def test_info_shows_mpi(tmp_path):
    rc, out, _ = mpirun(2, ["-m", "fastlm", "info"])
    assert rc == 0, out
    assert "rank 0 of 2" in out and "rank 1 of 2" in out and "mpi4py" in out


# ---------------------------------------------------------------------- ZeRO-1

def test_shard_counts():
    assert zero.shard_counts(7, 3) == [3, 2, 2] and zero.shard_counts(2, 3) == [1, 1, 0]


def test_blocks_on_one_rank(no_launcher):
    w = dist.World()
    x = np.arange(5, dtype=np.float32)
    mine = np.empty(5, np.float32)
    assert w.reduce_scatter(x, mine, [5]) is mine and np.array_equal(mine, x)
    assert w.all_gather(x, [5]) is x and w.gather(x, [5]) is x
    with pytest.raises(ValueError, match="counts must be 1 non-negative block sizes summing to the buffer's 5"):
        w.all_gather(x, [4])
    with pytest.raises(ValueError, match="recv has 4 elements, this rank's block 5"):
        w.reduce_scatter(x, np.empty(4, np.float32), [5])
    with pytest.raises(TypeError, match="reduce_scatter: buf must be float32"):
        w.reduce_scatter(x, np.empty(5), [5])
    y = x.copy()
    assert w.reduce_scatter_in_place(y, [5]) is y and np.array_equal(y, x)
    mine = np.empty(5, np.float32)
    assert w.scatter(x, mine, [5]) is mine and np.array_equal(mine, x)
    full = np.empty(5, np.float32)
    assert w.gather_blocks(mine * 2, full, [5]) is full and np.array_equal(full, 2 * x)
    with pytest.raises(ValueError, match="scatter: this rank's block has 4 elements, counts say 5"):
        w.scatter(x, np.empty(4, np.float32), [5])
    with pytest.raises(ValueError, match="gather_blocks: counts must be 1 non-negative block sizes"):
        w.gather_blocks(mine, full, [5, 0])


@pytest.mark.parametrize("kind", ["transformer-odd", "lstm"])
def test_zero1_in_one_process_is_the_unsharded_step(kind, model_device, request):
    """With one rank ZeRO-1 runs its own path (the store's ranged step over the
    whole vector, its norm; host copies of a device model's buffers) and must
    give the unsharded run bit for bit where both step with the CPU kernels."""
    out = []
    for z in (0, 1):
        model = mpi_worker.make(kind, device=model_device)
        hist = model.fit(**mpi_worker.fit_args(4, 4, kind), grad_clip=0.05, optimizer="adamw", weight_decay=0.1,
                         zero=z)
        assert max(e["grad_norm"] for e in hist) > 0.05  # the clipping is exercised
        out.append([np.array(model._tensors.flat(w)) for w in ("params", "adam_m", "adam_v")] + [model.optimizer_step])
    for a, b in zip(*out):
        if request.node.callspec.params["model_device"] == "cuda":  # the GPU's AdamW kernel against the CPU's
            assert rel(np.asarray(a, np.float64), np.asarray(b, np.float64)) <= 1e-5
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value, err, match", [
    (2, ValueError, r"zero \(0: off, 1: ZeRO-1\) must be <= 1, got 2"), (-1, ValueError, "must be >= 0"),
    ("1", TypeError, "zero .* must be an int, got str"), (True, TypeError, "must be an int, got bool"),
    (1.0, TypeError, "must be an int, got float")])
def test_zero_bad_values(value, err, match):
    model = mpi_worker.make("transformer-odd")
    with pytest.raises(err, match=match):
        model.fit(**mpi_worker.fit_args(2, 2), zero=value)
    with pytest.raises(ValueError, match="zero=1 shards the Adam.W. moments; optimizer='sgd' cannot use it"):
        model.fit(**mpi_worker.fit_args(2, 2), zero=1, optimizer="sgd")
    assert model.optimizer_step == 0


def test_cli_zero_flag(tmp_path, capsys):
    from fastlm.cli import main
    (tmp_path / "corpus.txt").write_text("to be or not to be " * 30)
    args = ["train", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "out"), "--n-layer", "1", "--n-head", "1",
            "--n-embd", "8", "--block-size", "8", "--steps", "2", "--batch-size", "2", "--no-progress"]
    assert main(args + ["--zero", "2"]) == 2
    assert "argument --zero: invalid choice: 2" in capsys.readouterr().err
    assert main(args + ["--zero", "1"]) == 0
    model = fastlm.LanguageModel.load(tmp_path / "out")
    assert model.optimizer_step == 2 and model._train_state["fit"]["zero"] == 1


def _rel_close(a, b, tol):
    assert rel(a, b) <= tol, rel(a, b)


@needs_mpi
@pytest.mark.parametrize("n, kind, clip", [(2, "transformer-odd", 0.05), (3, "transformer-odd", 0.0),
                                           (3, "lstm", 0.05), (2, "lstm", 0.0)])
def test_zero1_equals_data_parallel(tmp_path, n, kind, clip):
    rc, out, _ = worker(n, "zero", tmp_path, kind, clip)
    assert rc == 0, out
    plain, sharded = (np.load(tmp_path / f"run{z}.npz") for z in (0, 1))
    for i in range(3):  # parameters, both moments
        if clip == 0 and n == 2:  # the same float32 arithmetic on every element, a + b in either reduction
            np.testing.assert_array_equal(sharded[f"arr_{i}"], plain[f"arr_{i}"])
        # Clipping scales by the norm, whose float32 block sums the ranges cut differently.
        _rel_close(sharded[f"arr_{i}"], plain[f"arr_{i}"], 1e-6)
    norms = plain["arr_3"]
    np.testing.assert_allclose(sharded["arr_3"], norms, rtol=1e-6)  # grad norms, then the step count
    assert norms[-1] == 10
    if clip:
        assert norms[:-1].max() > clip  # the clipping is exercised
    # Every rank ends with the same full parameters and moments (all-gathered).
    ranks = [np.load(tmp_path / f"zero{r}.npy") for r in range(n)]
    for r in range(1, n):
        np.testing.assert_array_equal(ranks[r], ranks[0])
    # What each rank's model held at every forward/backward, then after fit: [bytes, lo, hi] of its moments.
    size = plain["arr_0"].size
    counts = zero.shard_counts(size, n)
    for r in range(n):
        held = np.load(tmp_path / f"held{r}.npy")  # (plain, ZeRO-1), steps x grad_accum + 1, 3
        lo = sum(counts[:r])
        mine = [8 * counts[r], lo, lo + counts[r]]
        steps = held.shape[1] - 1
        np.testing.assert_array_equal(held[0, -2], [8 * size, 0, size])  # plain: every moment, every rank
        # ZeRO-1: its shard alone, from the start (allocated at the first step) to the end.
        assert (held[1, :steps, 1:] == mine[1:]).all() and set(held[1, :steps, 0]) <= {0, mine[0]}
        np.testing.assert_array_equal(held[1, steps - 1], mine)
        assert (held[:, -1] == [8 * size, 0, size]).all()  # when fit returns, the full moments everywhere


@needs_mpi
def test_zero1_on_one_rank_only_is_refused_once(tmp_path):
    rc, out, secs = worker(2, "zero-on-rank1", tmp_path, timeout=60)
    assert rc != 0 and secs < 30
    assert out.count("the ranks disagree on settings") == 1 and "'zero': 1" in out, out


@needs_mpi
def test_zero1_blocks_on_three_ranks(tmp_path):
    rc, out, _ = worker(3, "blocks", tmp_path)
    assert rc == 0, out
    total = np.arange(5, dtype=np.float32) * 6  # 1 + 2 + 3 times each element
    gathered = np.array([0, 1, 2, 20, 21], np.float32)
    mine = {0: total[:3], 1: total[3:3], 2: total[3:]}
    for r in range(3):
        got = np.load(tmp_path / f"blocks{r}.npy")
        k = len(mine[r])
        np.testing.assert_array_equal(got[:k], mine[r])
        np.testing.assert_array_equal(got[k:k + 5], gathered)
        if r == 2:  # the gather's root
            np.testing.assert_array_equal(got[k + 5:k + 10], gathered)
        scattered = np.arange(5, dtype=np.float32)[{0: slice(0, 3), 1: slice(3, 3), 2: slice(3, 5)}[r]] + 100
        np.testing.assert_array_equal(got[k + 10:2 * k + 10], scattered)
        in_place = got[2 * k + 10:2 * k + 15]  # reduce_scatter_in_place: this rank's block, in its place
        np.testing.assert_array_equal(in_place[{0: slice(0, 3), 1: slice(3, 3), 2: slice(3, 5)}[r]], mine[r])
        if r == 2:  # gather_blocks' root
            np.testing.assert_array_equal(got[2 * k + 15:], (np.arange(5, dtype=np.float32) + 100) * 2)
        else:
            assert got.size == 2 * k + 15


@needs_mpi
def test_zero1_checkpoints_resume_either_way(tmp_path):
    kind = "transformer-odd"
    ref, _ = one_process(kind, 6, 8)
    # ZeRO-1 on 3 ranks stopped at step 5, resumed by one plain process.
    rc, out, _ = worker(3, "train", tmp_path, kind, 2, 8, 5, "zero")
    assert rc == 0, out
    assert (tmp_path / "saves.txt").read_text().split() == ["0", "0", "0"]  # steps 2, 4 and 5
    one = tmp_path / "one"
    one.mkdir()
    one_process(kind, 6, 8, ckpt=str(one / "ckpt"), stop_at=5)
    written = [fastlm.LanguageModel.load(d / "ckpt") for d in (tmp_path, one)]
    assert [m.optimizer_step for m in written] == [5, 5]
    for w in ("params", "adam_m", "adam_v"):  # the sharded run's checkpoint holds the full moments
        _rel_close(written[0]._tensors.flat(w), written[1]._tensors.flat(w), 1e-5)
    got, hist = one_process(kind, 6, 8, ckpt=str(tmp_path / "ckpt"), resume=True)
    assert [e["step"] for e in hist] == list(range(1, 9))
    _rel_close(got, ref, 1e-5)
    # The plain checkpoint of step 5 resumed by ZeRO-1 on 2 ranks.
    rc, out, _ = worker(2, "train", one, kind, 3, 8, "resume", "zero")
    assert rc == 0, out
    _rel_close(np.load(one / "params.npy"), ref, 1e-5)
