"""Processes, threads and seeds: joining the process group torchrun describes, pinning the
CPU thread count for bit-exact runs, seeding, and wrapping a model for DDP."""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value = value / self.world_size
        return value


def setup_distributed(device: str) -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    return Dist(dist.get_rank(), world_size, local_rank)


def teardown_distributed(d: Dist) -> None:
    if d.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def pin_threads(threads: int | None = None) -> int:
    """Fix the CPU thread count for the whole run and stop MKL from changing it per call.

    Bitwise-reproducible CPU training needs every matmul and reduction split the same way:
    MKL and ATen sum in a thread-count-dependent order (1 thread against 2 moves this
    project's tiny run by one float32 ulp at step 17, then further), and with its default
    MKL_DYNAMIC=TRUE, MKL may choose fewer threads than asked on its own (see Intel's
    "Reproducibility Conditions"). So the count is set explicitly, recorded in every
    checkpoint, and a resumed run takes the count the run started with. MKL's reductions are
    made deterministic too (MKL_CBWR=AUTO, Intel's conditional numerical reproducibility)."""
    if threads and threads != torch.get_num_threads():
        print(f"using {threads} CPU threads, as the run did until now (not {torch.get_num_threads()}), so that it "
              f"continues bit for bit", file=sys.stderr)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    _mkl_set_dynamic(False)
    # MKL's conditional numerical reproducibility (one of Intel's conditions for equal results
    # run to run). It did not stop the one-ulp drift seen with two threads on a loaded machine
    # (docs/results.md, "A drift under load"), whose cause is open. MKL reads it once, at its
    # first computation, so it is set before the run's first matmul; a user's own MKL_CBWR wins.
    os.environ.setdefault("MKL_CBWR", "AUTO")
    return threads


def _mkl_set_dynamic(enabled: bool) -> None:
    """MKL's C entry point MKL_Set_Dynamic (by value; the lower-case `mkl_set_dynamic`
    symbol is the Fortran one, by reference) in the MKL inside torch's CPU library."""
    import ctypes

    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        ctypes.CDLL(str(library)).MKL_Set_Dynamic(ctypes.c_int(int(enabled)))
    except (OSError, AttributeError):  # another platform, or a build without MKL
        pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_device(device: str, d: Dist) -> str:
    """This process's device: its own GPU under torchrun, else the one asked for."""
    return f"cuda:{d.local_rank}" if device.startswith("cuda") and d.world_size > 1 else device


def wrap_model(model: torch.nn.Module, compile: bool, d: Dist, device: str, find_unused: bool = False):
    """torch.compile and DistributedDataParallel as asked. `find_unused` (see
    `uneven_plugins`) costs a graph traversal per step, so only when needed."""
    if compile:
        model = torch.compile(model)
    if d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[d.local_rank] if "cuda" in device else None,
                                        find_unused_parameters=find_unused)
    return model
