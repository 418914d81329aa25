"""Data-parallel runs: torchrun detection, process groups, rank-0-only output, ``--nproc N``.

Two ways to run on N processes, both ending in the same environment (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``):

- ``torchrun --nproc_per_node=N -m spnas_dsl ...`` (or multi-node: ``--nnodes``, ``--node_rank``,
  ``--master_addr``); the processes find each other through the variables torchrun sets.
- ``spnasc ... --nproc N``: :func:`launch_local` re-runs the same command N times on this
  machine (``sys.executable -m spnas_dsl ARGS``, without ``--nproc``), with those variables
  set, waits for all, stops the others if one fails, and returns the worst exit status.

:func:`setup` then joins the group: backend ``gloo`` on CPU, ``nccl`` on CUDA (one GPU per
local rank). Only rank 0 writes files and prints (``DistInfo.is_main``); the other ranks
of a ``--nproc`` launch keep quiet on errors too (``SPNAS_QUIET_RANK``), so a user sees one message.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from spnas_dsl.errors import UsageError

QUIET_RANK_ENV = "SPNAS_QUIET_RANK"


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables, or None when not launched by one."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def resolve_device(name: str | None) -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N`` / None (CUDA when available, else CPU)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}' (use cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (torch was built without CUDA or no GPU)")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device '{name}' (use cpu or cuda)")
    return device


def setup(device: str | None = None, timeout_s: float = 1800) -> DistInfo:
    """Join the process group when launched by torchrun / ``--nproc``; a no-op otherwise.

    On CUDA each process takes GPU ``LOCAL_RANK`` and uses NCCL; on CPU, gloo.
    """
    dev = resolve_device(device)
    world = env_world()
    if world is None or world[1] == 1:
        return DistInfo(device=dev)
    rank, size, local = world
    if dev.type == "cuda":
        if torch.cuda.device_count() <= local:
            raise UsageError(f"local rank {local} needs GPU {local} but only {torch.cuda.device_count()} are visible")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        from datetime import timedelta

        dist.init_process_group(backend=backend, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=size, local_rank=local, device=dev)


def teardown() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all ranks (identity on one process)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a NaN loss)."""
    return all_reduce_sum([1.0 if flag else 0.0], info)[0] > 0


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(nproc: int, argv: list[str], module: str = "spnas_dsl") -> int:
    """Run ``python -m module *argv`` as ``nproc`` ranks on this machine; the worst exit status.

    Like ``torchrun --standalone --nproc_per_node=nproc``: each child gets ``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` (a free local port), and
    ``OMP_NUM_THREADS`` split over the processes unless already set. If a child fails, the
    others are terminated.
    """
    if nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {nproc}")
    if env_world() is not None:
        raise UsageError("--nproc cannot be used inside a torchrun launch (torchrun already starts the processes)")
    port = _free_port()
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=threads)
        if rank > 0:
            env[QUIET_RANK_ENV] = "1"
        procs.append(subprocess.Popen([sys.executable, "-m", module, *argv], env=env))
    codes: dict[int, int] = {}
    failed_at: float | None = None
    try:
        while len(codes) < nproc:
            for rank, p in enumerate(procs):
                if rank not in codes and p.poll() is not None:
                    codes[rank] = p.returncode
                    if p.returncode != 0 and failed_at is None:
                        failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > 10:
                for rank, p in enumerate(procs):  # the others are stuck in a collective: stop them
                    if rank not in codes:
                        p.terminate()
            time.sleep(0.05)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    failures = {r: c for r, c in codes.items() if c != 0}
    if not failures:
        return 0
    if codes.get(0, 0) <= 0:  # rank 0 printed nothing useful: say which rank failed
        rank, code = min(failures.items())
        print(f"spnasc: rank {rank} of {nproc} failed (exit status {code}); rerun with --nproc 1 to see its message",
              file=sys.stderr)
    return next((c for c in (codes.get(0), *failures.values()) if c and c > 0), 1)
