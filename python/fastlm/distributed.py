"""Data-parallel jobs on MPI (``mpi4py``), with NCCL for GPU buffers.

Started the usual way, ``mpirun -n N python train.py`` (or ``mpiexec``,
``srun``), every process is one *rank* of the job; without a launcher the
process is a job of one rank and nothing here needs ``mpi4py``::

    from fastlm import distributed as dist
    dist.rank(), dist.world_size(), dist.local_rank()
    dist.all_reduce(grads)            # in place: the mean over the ranks
    dist.broadcast(params, root=0)    # in place: rank 0's values everywhere
    dist.barrier()

:func:`fastlm.train.fit` uses this module itself: under ``mpirun`` it trains
data-parallel with no change to the script (see docs/distributed.md).

Failures end the job rather than hang it. Once MPI is in use by a job of
several ranks, an exception that escapes on one rank prints that rank's
traceback and calls ``MPI_Abort``, which ends every rank (``mpi4py``'s
``python -m mpi4py`` does the same); the exit status is non-zero. An error
every rank raised alike (bad arguments, checked by ``fit`` on every rank
and agreed on, see :meth:`World.agree`) is reported once, by rank 0, and each
rank exits normally with status 1.

Buffers: host buffers are C-contiguous NumPy arrays (float32 or float64 for
:func:`all_reduce`; any dtype for :func:`broadcast`) reduced by MPI; device
buffers (``fastlm.DeviceArray``, CUDA tensors, anything with
``__cuda_array_interface__``) of float32 go through NCCL
(:mod:`fastlm._nccl`), loaded at run time from the ``nvidia-nccl-cu12``
wheel or the system's ``libnccl.so.2``.
"""
from __future__ import annotations

import functools
import itertools
import os
import sys
import time
import traceback
import zlib
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["World", "CollectiveError", "world", "collective", "launched_by_mpi", "rank", "world_size", "local_rank",
           "all_reduce", "broadcast", "barrier", "mpi_runtime", "raised_alike", "is_collective", "should_report",
           "settle", "per_rank_batch"]

# What launchers set in each process they start: MPICH/Hydra and Intel MPI
# (PMI_*), Open MPI (OMPI_*), PMIx, MVAPICH, Slurm's srun with PMI.
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")

_INSTALL_HINT = "pip install 'fastlm[mpi]' (mpi4py and the mpich wheel)"


def _env_int(names: Sequence[str]) -> Optional[int]:
    for name in names:
        v = os.environ.get(name, "").strip()
        if v.isdigit():
            return int(v)
    return None


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (``mpirun``, ``mpiexec``, ``srun``) started this
    process as part of a job of more than one rank, judged from the
    environment variables launchers set; imports nothing."""
    size = _env_int(_SIZE_VARS)
    return (size or 0) > 1 or (size is None and _env_int(_RANK_VARS) is not None)


def _env_rank() -> int:
    """This process's rank as the launcher says (0 without one); needs no MPI."""
    return _env_int(_RANK_VARS) or 0


class CollectiveError(RuntimeError):
    """An error another rank raised, reported on this rank's behalf (see
    :meth:`World.agree`)."""


def raised_alike(e: BaseException) -> BaseException:
    """Mark ``e`` (returned) as raised alike on every rank, from values every
    rank shares: it is reported once, by rank 0, and ends no job."""
    try:
        e._fastlm_collective = True  # type: ignore[attr-defined]
    except AttributeError:  # exceptions without a __dict__ are reported per rank
        pass
    return e


def is_collective(e: BaseException) -> bool:
    """Whether every rank of the job raised ``e`` (or its counterpart) alike."""
    return bool(getattr(e, "_fastlm_collective", False))


def should_report(e: BaseException) -> bool:
    """Whether this rank prints ``e``: rank 0 for errors every rank raised alike
    (so they are printed once), every rank for its own. Needs no MPI, so that
    a missing mpi4py is reported once too."""
    return _env_rank() == 0 or not is_collective(e)


class World:
    """The ranks of this job: ``rank``, ``size``, ``local_rank``,
    ``local_size``. A process not started by an MPI launcher is a world of one
    rank, where every collective is a no-op and MPI is never imported."""

    def __init__(self) -> None:
        self.comm: Any = None
        self.rank, self.size = 0, 1
        self.local_rank, self.local_size = 0, 1
        self._nccl: Any = None
        self.fit_started = False  # a fit has agreed on its start and not yet ended (see collective)
        self.fit_done = False  # a fit has ended on every rank
        if not launched_by_mpi():
            return
        _install_excepthook(self)
        try:
            from mpi4py import MPI
        except ImportError as e:
            size = _env_int(_SIZE_VARS)
            raise raised_alike(RuntimeError(
                f"this process was started by an MPI launcher (a job of {size if size else 'several'} ranks), "
                f"but mpi4py cannot be imported ({e}); {_INSTALL_HINT}")) from None
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        try:
            node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
        except (AttributeError, NotImplementedError):  # an MPI without MPI-3 shared splits
            self.local_rank = _env_int(_LOCAL_RANK_VARS) or 0
            self.local_size = _env_int(_LOCAL_SIZE_VARS) or 1

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # -- collectives on host buffers

    def all_reduce(self, buf: Any, op: str = "mean") -> Any:
        """Reduce ``buf`` over the ranks in place (``op`` ``"mean"`` or ``"sum"``)
        and return it. ``buf``: a C-contiguous, writable float32 or float64
        NumPy array, or a device array of float32 (NCCL)."""
        if op not in ("mean", "sum"):
            raise ValueError(f"all_reduce: op must be 'mean' or 'sum', got {op!r}")
        from .cuda import is_device_array
        if is_device_array(buf):
            if self.size > 1:
                self._nccl_comm().all_reduce(buf, op)
            return buf
        arr = _host_buffer(buf, "all_reduce", (np.float32, np.float64))
        if self.size > 1:
            self.comm.Allreduce(self._MPI.IN_PLACE, arr, op=self._MPI.SUM)
            if op == "mean":
                arr *= arr.dtype.type(1.0 / self.size)
        return buf

    def broadcast(self, buf: Any, root: int = 0) -> Any:
        """Overwrite ``buf`` (a C-contiguous, writable NumPy array, the same shape
        and dtype on every rank) with rank ``root``'s values; returns it."""
        root = self._root(root)
        arr = _host_buffer(buf, "broadcast", None)
        if self.size > 1:
            self.comm.Bcast(arr.view(np.uint8).reshape(-1), root=root)
        return buf

    # Blocks: rank r's block of a flat buffer is the counts[r] elements after
    # sum(counts[:r]), as ZeRO-1 (fastlm.zero) shards the parameter vector.

    def reduce_scatter(self, send: np.ndarray, recv: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """Sum ``send`` over the ranks and write this rank's block of the sum
        into ``recv`` (returned): ``send`` float32 or float64 of ``sum(counts)``
        elements, ``recv`` of the same dtype and ``counts[rank]`` elements."""
        _host_buffer(send, "reduce_scatter", (np.float32, np.float64))
        _host_buffer(recv, "reduce_scatter", (send.dtype.type,))
        lo, hi = self._block(send, counts, "reduce_scatter")
        if recv.size != hi - lo:
            raise ValueError(f"reduce_scatter: recv has {recv.size} elements, this rank's block {hi - lo}")
        if self.size == 1:
            recv[...] = send.reshape(-1)
        else:
            self.comm.Reduce_scatter(send, recv, recvcounts=list(counts), op=self._MPI.SUM)
        return recv

    def reduce_scatter_in_place(self, buf: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """:meth:`reduce_scatter` without a second buffer: this rank's block of
        the sum over the ranks of ``buf`` (float32 or float64, ``sum(counts)``
        elements) is written to its own place in ``buf``, which is returned;
        the other blocks of ``buf`` are left holding unspecified values."""
        _host_buffer(buf, "reduce_scatter_in_place", (np.float32, np.float64))
        lo, hi = self._block(buf, counts, "reduce_scatter_in_place")
        if self.size > 1:
            flat = buf.reshape(-1)
            self.comm.Reduce_scatter(self._MPI.IN_PLACE, flat, recvcounts=[int(c) for c in counts], op=self._MPI.SUM)
            if lo:  # MPI leaves the block at the front
                np.copyto(flat[lo:hi], flat[:hi - lo])
        return buf

    def all_gather(self, buf: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """In place: every rank's block of ``buf`` (a C-contiguous NumPy array
        of ``sum(counts)`` elements, the same dtype on every rank) onto every
        rank; returns ``buf``."""
        _host_buffer(buf, "all_gather", None)
        self._block(buf, counts, "all_gather")
        if self.size > 1:
            flat = buf.reshape(-1)
            self.comm.Allgatherv(self._MPI.IN_PLACE, [flat, (list(counts), _displacements(counts))])
        return buf

    def gather(self, buf: np.ndarray, counts: Sequence[int], root: int = 0) -> np.ndarray:
        """As :meth:`all_gather`, onto rank ``root`` alone; the others' ``buf``
        is left as it is."""
        root = self._root(root)
        _host_buffer(buf, "gather", None)
        lo, hi = self._block(buf, counts, "gather")
        if self.size > 1:
            flat = buf.reshape(-1)
            if self.rank == root:
                self.comm.Gatherv(self._MPI.IN_PLACE, [flat, (list(counts), _displacements(counts))], root=root)
            else:
                self.comm.Gatherv(flat[lo:hi], None, root=root)
        return buf

    def gather_blocks(self, mine: np.ndarray, full: Optional[np.ndarray], counts: Sequence[int],
                      root: int = 0) -> Optional[np.ndarray]:
        """Every rank's block ``mine`` (``counts[rank]`` elements) into rank
        ``root``'s ``full`` (``sum(counts)`` elements of the same dtype; ignored,
        may be None, elsewhere), which is returned: :meth:`gather` for ranks that
        hold their block alone."""
        root = self._root(root)
        _host_buffer(mine, "gather_blocks", None)
        counts = self._counts(counts, mine, "gather_blocks")
        if self.rank != root:
            if self.size > 1:
                self.comm.Gatherv(mine.reshape(-1), None, root=root)
            return full
        _host_buffer(full, "gather_blocks", (mine.dtype.type,))
        self._block(full, counts, "gather_blocks")
        if self.size == 1:
            full.reshape(-1)[...] = mine.reshape(-1)
        else:
            self.comm.Gatherv(mine.reshape(-1), [full.reshape(-1), (counts, _displacements(counts))], root=root)
        return full

    def scatter(self, full: Optional[np.ndarray], mine: np.ndarray, counts: Sequence[int],
                root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``full`` (``sum(counts)`` elements; ignored, may be
        None, elsewhere) cut into blocks: block r into rank r's ``mine``
        (``counts[r]`` elements of the same dtype), which is returned."""
        root = self._root(root)
        _host_buffer(mine, "scatter", None)
        counts = self._counts(counts, mine, "scatter")
        if self.rank == root:
            _host_buffer(full, "scatter", (mine.dtype.type,))
            self._block(full, counts, "scatter")
            if self.size == 1:
                mine.reshape(-1)[...] = full.reshape(-1)
                return mine
            self.comm.Scatterv([full.reshape(-1), (counts, _displacements(counts))], mine.reshape(-1), root=root)
        elif self.size > 1:
            self.comm.Scatterv(None, mine.reshape(-1), root=root)
        return mine

    def _counts(self, counts: Sequence[int], mine: np.ndarray, who: str) -> List[int]:
        """``counts`` checked as block sizes, ``mine`` as this rank's block."""
        counts = [int(c) for c in counts]
        if len(counts) != self.size or min(counts) < 0:
            raise ValueError(f"{who}: counts must be {self.size} non-negative block sizes, got {counts[:8]}")
        if mine.size != counts[self.rank]:
            raise ValueError(f"{who}: this rank's block has {mine.size} elements, counts say {counts[self.rank]}")
        return counts

    def _block(self, buf: np.ndarray, counts: Sequence[int], who: str) -> tuple:
        """This rank's [lo, hi) of ``buf`` blocked by ``counts``, checked."""
        counts = [int(c) for c in counts]
        if len(counts) != self.size or min(counts) < 0 or sum(counts) != buf.size:
            raise ValueError(f"{who}: counts must be {self.size} non-negative block sizes summing to the "
                             f"buffer's {buf.size} elements, got {counts[:8]}")
        lo = sum(counts[:self.rank])
        return lo, lo + counts[self.rank]

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``obj`` (any picklable object) on every rank."""
        root = self._root(root)
        return self.comm.bcast(obj, root=root) if self.size > 1 else obj

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order."""
        return self.comm.allgather(obj) if self.size > 1 else [obj]

    def barrier(self) -> None:
        """Wait until every rank has reached this call."""
        if self.size > 1:
            self.comm.Barrier()

    def _root(self, root: Any) -> int:
        from ._checks import check_int
        return check_int(root, "root", 0, self.size - 1)

    # -- agreement and faults

    def agree(self, what: str, error: Optional[BaseException], facts: Dict[str, Any]) -> None:
        """One step every rank takes together: each brings the error its setup
        raised (or None) and the ``facts`` that must be equal on every rank
        (configuration, seeds, data sizes). If any rank failed or the facts
        differ, every rank raises: its own error, or a :class:`CollectiveError`
        naming the rank that failed or the first fact that differs, the
        same on every rank and marked to be reported once."""
        if self.size == 1:
            if error is not None:
                raise error
            return
        msg = None if error is None else f"{type(error).__name__}: {error}"
        reports = self.comm.allgather((msg, None if error is not None else facts))
        failed = [(r, m) for r, (m, _) in enumerate(reports) if m is not None]
        if failed:
            if error is not None:
                raise raised_alike(error)
            r, m = failed[0]
            raise raised_alike(CollectiveError(f"{what} failed on rank {r} of {self.size}: {m}"))
        ref = reports[0][1]
        for r, (_, theirs) in enumerate(reports[1:], 1):
            for key in ref:
                if theirs.get(key) != ref[key]:
                    raise raised_alike(ValueError(
                        f"{what}: the ranks disagree on {key}: rank 0 has {ref[key]!r}, rank {r} has "
                        f"{theirs.get(key)!r}; every rank must run the same configuration on the same data"))
        self.fit_started = True

    def start(self, what: str, facts: Dict[str, Any], shared: Sequence[np.ndarray]) -> None:
        """Begin a data-parallel run: give each rank its share of the machine's
        cores (:func:`default_threads`), :meth:`agree` on ``facts``, then
        broadcast rank 0's ``shared`` buffers (weights, optimizer moments)."""
        from . import _C
        threads = default_threads(self, _C.get_num_threads())
        if threads is not None:
            _C.set_num_threads(threads)
        self.agree(what, None, facts)
        for buf in shared:
            self.broadcast(buf)

    def abort(self, e: BaseException, code: int = 1) -> None:
        """Print ``e`` with its traceback and this rank's number, then end
        every rank of the job (``MPI_Abort``); in a world of one rank, does
        nothing (the caller raises)."""
        if self.size == 1:
            return
        _print_failure(self, type(e), e, e.__traceback__)
        self.comm.Abort(code)

    # -- NCCL

    def _nccl_comm(self) -> Any:
        if self._nccl is None:
            from ._nccl import NcclCommunicator
            self._nccl = NcclCommunicator(self)
        return self._nccl


def _host_buffer(buf: Any, who: str, dtypes: Optional[tuple]) -> np.ndarray:
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{who}: buf must be a NumPy array (or a device array), got {type(buf).__name__}")
    if dtypes is not None and buf.dtype.type not in dtypes:
        raise TypeError(f"{who}: buf must be float32 or float64, got dtype {buf.dtype}")
    if not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError(f"{who}: buf must be C-contiguous and writable (it is reduced in place)")
    return buf


def _displacements(counts: Sequence[int]) -> List[int]:
    return list(itertools.accumulate((int(c) for c in counts[:-1]), initial=0))


def _print_failure(w: World, etype: Any, value: BaseException, tb: Any) -> None:
    lines = traceback.format_exception(etype, value, tb)
    sys.stderr.write(f"fastlm: rank {w.rank} of {w.size} failed; ending the job\n" + "".join(lines))
    sys.stderr.flush()
    # MPI_Abort kills the launcher's I/O forwarding with the ranks: give it a
    # moment to pass the message on, or a loaded machine loses it.
    time.sleep(1.0)


def _install_excepthook(w: World) -> None:
    """An exception escaping on one rank would leave the others waiting in a
    collective, and MPI_Finalize at exit waits for them: so end the job. Set
    before MPI is imported, so that a missing mpi4py is reported once too."""
    previous = sys.excepthook

    def hook(etype: Any, value: BaseException, tb: Any) -> None:
        if is_collective(value):  # raised alike on every rank: report once, exit normally
            if _env_rank() == 0:
                previous(etype, value, tb)
            return
        if w.comm is None or w.size == 1:
            previous(etype, value, tb)
            return
        if issubclass(etype, KeyboardInterrupt):
            sys.stderr.write(f"fastlm: rank {w.rank} interrupted\n")
        else:
            _print_failure(w, etype, value, tb)
        w.comm.Abort(130 if issubclass(etype, KeyboardInterrupt) else 1)

    sys.excepthook = hook


_WORLD: Optional[World] = None


def world() -> World:
    """The :class:`World` of this process (made on first use; under an MPI
    launcher this initialises MPI). Raises ``RuntimeError`` when started by a
    launcher and mpi4py is missing."""
    global _WORLD
    if _WORLD is None:
        _WORLD = World()
    return _WORLD


def collective(what: str) -> Any:
    """Decorator for a function every rank calls together (``fit``). Until
    the function calls :meth:`World.agree` with ``error=None``, an exception on
    one rank is agreed on (every rank raises it, reported once); after,
    the ranks are in lockstep collectives, so an exception on one rank
    that is not marked as raised alike ends the job (:meth:`World.abort`)."""
    def deco(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            w = world()
            if w.size == 1:
                return fn(*args, **kwargs)
            w.fit_started = False
            try:
                return fn(*args, **kwargs)
            except BaseException as e:
                if is_collective(e):
                    raise
                if not w.fit_started:
                    w.agree(what, e, {})
                w.abort(e)
                raise
            finally:
                w.fit_started = False
        return wrapper
    return deco


def rank() -> int:
    """This process's rank in the job (0 without MPI)."""
    return world().rank


def world_size() -> int:
    """Number of ranks in the job (1 without MPI)."""
    return world().size


def local_rank() -> int:
    """This process's rank among the ranks on its machine (for choosing a GPU)."""
    return world().local_rank


def all_reduce(buf: Any, op: str = "mean") -> Any:
    """:meth:`World.all_reduce` on the job's world."""
    return world().all_reduce(buf, op)


def broadcast(buf: Any, root: int = 0) -> Any:
    """:meth:`World.broadcast` on the job's world."""
    return world().broadcast(buf, root)


def barrier() -> None:
    """:meth:`World.barrier` on the job's world."""
    world().barrier()


def per_rank_batch(global_batch: int, nranks: int, what: str) -> int:
    """``global_batch`` split evenly over ``nranks`` ranks; ``ValueError``
    (saying what ``what`` is) when it cannot be."""
    if nranks > global_batch:
        raise ValueError(f"{what} is {global_batch} rows, fewer than the {nranks} ranks of this job: "
                         "every rank needs at least one row")
    if global_batch % nranks:
        raise ValueError(f"{what} is {global_batch} rows, which {nranks} ranks cannot share evenly")
    return global_batch // nranks


def settle(e: BaseException, what: str) -> BaseException:
    """The error to report for ``e``, raised on this rank outside any
    collective call (a command line's checks before training): in a job of
    several ranks that has not begun training, the ranks agree on it
    (:meth:`World.agree`; the others meet this in ``fit``'s agreement), so
    that it is reported once and no rank waits for one that has given up."""
    w = _WORLD
    if w is None or w.size == 1 or is_collective(e) or w.fit_started or w.fit_done:
        return e
    try:
        w.agree(what, e, {})
    except BaseException as agreed:  # always: e is an error
        return agreed
    return e


def state_rows(state: Any, rows: slice, batch: int) -> Any:
    """This rank's ``rows`` of a recurrent state ``(h, c)`` (each (layers,
    ``batch``, hidden), c may be None) that holds the streams of every rank;
    a state of another batch is returned as it is."""
    if state is None or state[0].shape[1] != batch:
        return state
    return tuple(None if s is None else np.ascontiguousarray(s[:, rows]) for s in state)


def gather_state(w: World, state: Any) -> Any:
    """Every rank's recurrent state ``(h, c)`` joined along the batch axis in
    rank order (on every rank); None when no rank has one yet."""
    states = w.all_gather_object(state)
    if any(s is None for s in states):
        return None
    return tuple(None if states[0][i] is None else np.concatenate([s[i] for s in states], axis=1)
                 for i in range(2))


def data_fingerprint(tokens: Any) -> Optional[tuple]:
    """(length, CRC-32 of the first and last 64 Ki ids): cheap, and enough to
    tell ranks that were handed different corpora apart."""
    if tokens is None:
        return None
    n = int(tokens.shape[0])
    edge = 1 << 16
    head = np.ascontiguousarray(tokens[:edge], dtype=np.int64)
    tail = np.ascontiguousarray(tokens[max(0, n - edge):], dtype=np.int64)
    return n, zlib.crc32(tail.tobytes(), zlib.crc32(head.tobytes()))


def default_threads(w: World, current: int) -> Optional[int]:
    """The kernel threads a rank should use when the user chose none (the
    ``current`` count is OpenMP's default, every core): the machine's cores
    shared among the ranks on it, rather than each rank using them all.
    None: leave the count as it is."""
    if w.local_size <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // w.local_size) if current == cores else None


def mpi_runtime() -> str:
    """One line on the MPI runtime: mpi4py's version and the MPI library's,
    and this process's place in a job; MPI is not initialised for it."""
    try:
        import mpi4py
    except ImportError:
        return f"not installed ({_INSTALL_HINT})"
    try:
        if not launched_by_mpi():
            mpi4py.rc.initialize = False  # the library's version needs no MPI_Init
        from mpi4py import MPI
        lib = MPI.Get_library_version().strip().splitlines()[0].strip()
    except Exception as e:  # a broken MPI installation: say so, info still prints
        return f"mpi4py {mpi4py.__version__}, MPI library unusable ({type(e).__name__}: {e})"
    where = "not started by an MPI launcher (1 rank)"
    if launched_by_mpi():
        w = world()
        where = f"rank {w.rank} of {w.size}, local rank {w.local_rank} of {w.local_size}"
    return f"mpi4py {mpi4py.__version__}, {' '.join(lib.split())}; {where}"
