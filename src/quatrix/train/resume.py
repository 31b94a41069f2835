"""Resume: crash-safe training checkpoints and exact continuation (docs/design.md §4): OUT/checkpoint/ holds the
weights, config, tokenizer, trainer state (optimizers, step, data position, RNG streams,
arguments) and a manifest, written last, that seals it; a new checkpoint is swapped in by
two renames, so a kill at any instant leaves a loadable one."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from quatrix.model import QuatrixLM
from quatrix.io import WriteError, atomic_path, atomic_write_json, fsync_dir, is_full_disk, sha256_file
from quatrix.precision import resolve_precision
from quatrix.train.distributed import Dist

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "trainer_state.pt"
MANIFEST_NAME = "manifest.json"  # written last: seals a complete checkpoint


def save_checkpoint(out: Path, model, tokenizer, optimizers, step: int, loader_state: dict, args: dict) -> Path:
    """OUT/checkpoint/: model.safetensors + config.json + tokenizer + trainer_state.pt
    (optimizers, step, loader position, RNG states, arguments) + manifest.json.

    Crash-safe at every instant: the new checkpoint is written whole into OUT/.checkpoint.tmp
    and sealed by its manifest (written last), then swapped in by two renames
    (checkpoint -> .checkpoint.old, .checkpoint.tmp -> checkpoint). A kill between the two
    leaves a sealed .checkpoint.tmp (or .checkpoint.old), which `recover_checkpoint` puts
    back. A failed write (e.g. a full disk) removes the partial folder and leaves the last
    checkpoint untouched."""
    final, tmp, old = _checkpoint_paths(out)
    recover_checkpoint(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
        with atomic_path(tmp / STATE_NAME) as path:
            torch.save(trainer_state(optimizers, step, loader_state, args), path)
        atomic_write_json(tmp / MANIFEST_NAME, _manifest(tmp, step, args.get("compute_precision")))
        fsync_dir(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            reason = "no space left on the device" if is_full_disk(e) else (e.strerror or str(e))
            last = f"the last checkpoint, {final}, is unchanged" if final.is_dir() else "there is no earlier checkpoint"
            raise WriteError(e.errno, f"could not write the step-{step} checkpoint ({reason}); {last}") from None
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_dir(out)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoint_paths(out: Path) -> tuple[Path, Path, Path]:
    out = Path(out)
    return out / CHECKPOINT_DIR, out / f".{CHECKPOINT_DIR}.tmp", out / f".{CHECKPOINT_DIR}.old"


def _sealed(directory: Path) -> bool:
    return (directory / MANIFEST_NAME).is_file()


def recover_checkpoint(out: Path) -> Path | None:
    """Bring OUT/checkpoint back from whatever state a kill left it in, and return it (None
    when there is no checkpoint at all). Prefers the newest sealed folder: checkpoint/
    itself, else a sealed .checkpoint.tmp (killed between the two renames), else
    .checkpoint.old. Unsealed leftovers are deleted."""
    final, tmp, old = _checkpoint_paths(out)
    if not final.exists():
        for candidate in (tmp, old):
            if _sealed(candidate):
                candidate.rename(final)
                fsync_dir(out)
                break
    for leftover in (tmp, old):
        if leftover.exists() and (final.exists() or not _sealed(leftover)):
            shutil.rmtree(leftover, ignore_errors=True)
    return final if final.is_dir() else None


def trainer_state(optimizers, step: int, loader_state: dict, args: dict) -> dict[str, Any]:
    """Everything besides the weights that an exact resume needs, in types that
    `torch.load(weights_only=True)` accepts (no pickled objects)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    rng = {"python": random.getstate(),
           "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    plain_args = {k: v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v) for k, v in args.items()}
    return {"step": step, "optimizers": [opt.state_dict() for opt in optimizers], "loader": loader_state,
            "rng": rng, "args": plain_args}


def _manifest(directory: Path, step: int, precision: str | None) -> dict[str, Any]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST_NAME)
    return {"step": step, "threads": torch.get_num_threads(), "precision": precision,
            "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}}


def checkpoint_numerics(directory: Path | None) -> dict[str, Any]:
    """The CPU thread count and precision a checkpoint's run trained with ({} if unknown):
    a resumed run needs both to continue bit for bit."""
    path = Path(directory) / MANIFEST_NAME if directory else None
    if path is None or not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
        return {k: manifest[k] for k in ("threads", "precision") if manifest.get(k)}
    except (json.JSONDecodeError, TypeError, AttributeError):
        return {}  # verify_checkpoint names the damage


def resume_precision(requested: str, device: str, saved: str | None) -> str:
    """The precision of a (resumed) run: "auto" keeps the one the run began with, so a run
    resumed on other hardware does not switch precision halfway; an explicit choice wins."""
    if saved and requested == "auto":
        return saved
    resolved = resolve_precision(requested, device)
    if saved and resolved != saved:
        print(f"resume: the run trained in {saved} until now and goes on in {resolved} (--precision); its "
              f"losses will no longer match an uninterrupted run bit for bit", file=sys.stderr)
    return resolved


def verify_checkpoint(directory: Path) -> None:
    """Check every file against the manifest (size and SHA-256), naming the first that is
    missing, truncated or altered. Checkpoints from before manifests pass unchecked."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{path} is corrupt; the checkpoint cannot be trusted") from None
    for name, want in files.items():
        f = directory / name
        if not f.is_file():
            raise ValueError(f"checkpoint {directory} is damaged: {name} is missing")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise ValueError(f"checkpoint {directory} is damaged: {name} has {size} bytes, "
                             f"the manifest says {want['bytes']} (truncated?)")
        if sha256_file(f) != want["sha256"]:
            raise ValueError(f"checkpoint {directory} is damaged: {name} does not match its checksum")


def load_checkpoint_state(directory: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint, loaded without executing code (weights_only)."""
    path = Path(directory) / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint to resume from: {path} is missing")
    verify_checkpoint(Path(directory))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated, foreign or code-carrying file
        raise ValueError(f"{path} is corrupt or not a Quatrix trainer state: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or not {"step", "optimizers", "loader", "rng"} <= set(state):
        raise ValueError(f"{path} is not a Quatrix trainer state (keys: {sorted(state) if isinstance(state, dict) else type(state).__name__})")
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fresh(value):
    """A deep copy whose tensors live in new allocations of torch's own allocator: MKL may
    order a sum differently for differently aligned inputs (Intel's reproducibility
    conditions), so deserialized state is never used in place."""
    if isinstance(value, Tensor):
        return value.clone(memory_format=torch.contiguous_format)
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value


def _tuples(value):
    """random.setstate wants the nested tuples back (a checkpoint may hold lists)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def restore(checkpoint: Path, model: torch.nn.Module, optimizers, loader, config) -> int:
    """Load a checkpoint's weights, optimizer and data state and RNG into this run; returns
    the step it was taken at. Refuses a checkpoint of another model configuration."""
    state = load_checkpoint_state(checkpoint)  # checks every file against the manifest first
    saved = QuatrixLM.from_pretrained(checkpoint)
    if saved.config != config:
        changed = sorted(k for k, v in saved.config.to_dict().items() if config.to_dict()[k] != v)
        raise ValueError(f"--resume: the checkpoint's model differs from this run's flags in {', '.join(changed)}")
    model.load_state_dict(saved.state_dict())
    if len(state["optimizers"]) != len(optimizers):
        raise ValueError(f"--resume: the checkpoint has {len(state['optimizers'])} optimizer(s), this run "
                         f"{len(optimizers)}; resume with the same --optimizer")
    for opt, opt_state in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(_fresh(opt_state))
    loader.load_state_dict(state["loader"])
    restore_rng(state["rng"])
    return int(state["step"])


def resume_point(out: Path, d: Dist, stage: str) -> Path | None:
    """The checkpoint a --resume run continues from (after repairing a swap a kill
    interrupted), or None: a run killed before its first checkpoint restarts from step 0, as
    the same run (the seed makes its first steps identical)."""
    if d.is_main:
        recover_checkpoint(out)
    d.barrier()
    checkpoint = out / CHECKPOINT_DIR
    if checkpoint.is_dir():
        return checkpoint
    if d.is_main:
        print(f"{stage}: --resume: {out} holds no checkpoint yet; starting from step 0", file=sys.stderr)
    return None
