"""The token shard format, the one way text reaches training and evaluation.

A folder of `{split}_{k:05d}.bin` files of token ids (uint16 for vocabularies up to 65,536,
else uint32) and `manifest.json`, written last, that records each shard's split, token count
and SHA-256 with the tokenizer's fingerprint. `quatrix data prepare` writes it for corpora of
any size (quatrix.data.prepare); the token cache writes it for named corpora and small files
(quatrix.data.text); pretraining and evaluation read either through ShardedTokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import numpy as np

from quatrix.io import atomic_path, atomic_write_json, sha256_file

MANIFEST, PROGRESS = "manifest.json", "progress.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def tokenizer_id(tokenizer) -> str:
    probe = tokenizer.encode("The quick brown fox, 1234 <think> ünïcödé")
    return f"{tokenizer.kind}:{tokenizer.vocab_size}:{probe}"


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's identity (kind, size, a probe's ids), hashed short."""
    return hashlib.sha256(tokenizer_id(tokenizer).encode()).hexdigest()[:16]


class ShardWriter:
    """One split's shards. Units of tokens are appended to the open shard's temporary file as
    they come (nothing buffered); a closed shard is renamed into place, so a shard file is
    always whole, and a failure removes the open one. `last_unit` is the last unit whose
    tokens are all in closed shards: a resumed writer skips units up to it."""

    def __init__(self, out: Path, split: str, shards: list[dict] = (), last_unit: int = -1):
        self.out, self.split, self.last_unit = Path(out), split, last_unit
        self.shards = [s for s in shards if s["split"] == split]
        self._open: contextlib.ExitStack | None = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *failure) -> None:
        if self._open is not None:
            self._open.__exit__(*failure)
            self._open = None

    def add(self, index: int, tokens: np.ndarray, shard_tokens: int) -> bool:
        """Append unit `index`'s tokens; True when that closed a shard."""
        if index <= self.last_unit:
            return False
        if self._open is None:
            if not len(tokens):
                self.last_unit = index
                return False
            self._path = self.out / f"{self.split}_{len(self.shards):05d}.bin"
            self._open = contextlib.ExitStack()
            self._file = self._open.enter_context(open(self._open.enter_context(atomic_path(self._path)), "wb"))
            self._tokens, self._hash = 0, hashlib.sha256()
        data = tokens.tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._tokens += len(tokens)
        self._pending = index
        if self._tokens >= shard_tokens:
            self.close()
            return True
        return False

    def close(self) -> None:
        """Close the open shard (if any): renamed into place and recorded."""
        if self._open is None:
            return
        self._open.close()  # closes the file, then renames it into place
        self._open = None
        self.last_unit = self._pending
        self.shards.append({"file": self._path.name, "split": self.split, "tokens": self._tokens,
                            "sha256": self._hash.hexdigest()})


def write_tokens(out: Path, split: str, tokens: np.ndarray) -> list[dict]:
    """A whole split as one shard; its manifest entries."""
    with ShardWriter(out, split) as writer:
        writer.add(0, tokens, len(tokens))
        writer.close()
    return writer.shards


def shard_problem(directory: Path, shards: list[dict], itemsize: int, checksums: bool = True) -> str | None:
    """Why the recorded shards are not on disk as recorded, or None."""
    for shard in shards:
        path = directory / shard["file"]
        if not path.is_file():
            return f"{path.name} is missing"
        if path.stat().st_size != shard["tokens"] * itemsize:
            return f"{path.name} has {path.stat().st_size} bytes, not the {shard['tokens']} tokens recorded"
        if checksums and sha256_file(path) != shard["sha256"]:
            return f"{path.name} does not match its checksum"
    return None


def write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_json(Path(directory) / MANIFEST, manifest)


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        hint = " (a prepare was interrupted: run it again to finish)" if (Path(directory) / PROGRESS).exists() else ""
        raise FileNotFoundError(f"{path} not found: {directory} is not a prepared folder{hint}")
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest["shards"], list):
            raise KeyError("shards")
        return manifest
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{path} is damaged; prepare the folder again") from None


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file() or (Path(path) / PROGRESS).is_file()


class ShardedTokens:
    """A split of a shard folder as one sequence of token ids: the shards, memory-mapped in
    order, sliced across shard boundaries (what TokenLoader and evaluation index)."""

    def __init__(self, directory: str | Path, split: str, vocab_size: int):
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest.get("vocab_size") != vocab_size:
            named = f" ({manifest['tokenizer']})" if manifest.get("tokenizer") else ""
            raise ValueError(f"{directory} was prepared with a {manifest.get('vocab_size')}-token vocabulary{named}; "
                             f"this model's tokenizer has {vocab_size}")
        dtype = np.dtype(manifest["dtype"])
        shards = [s for s in manifest["shards"] if s["split"] == split]
        problem = shard_problem(directory, shards, dtype.itemsize, checksums=False)
        if problem:
            raise ValueError(f"{directory}: {problem}; prepare the folder again")
        self.shards = [np.memmap(directory / s["file"], dtype=dtype, mode="r") for s in shards if s["tokens"]]
        if not self.shards:
            raise ValueError(f"{directory} has no {split} tokens (prepared with --val-fraction "
                             f"{manifest.get('val_fraction')}); prepare it with a larger corpus or fraction")
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.dtype = dtype
        top = self.max()  # checked once here, so training can skip per-step value checks
        if top >= vocab_size:
            raise ValueError(f"{directory} holds token id {top}, outside the vocabulary [0, {vocab_size}); "
                             f"it was built with another tokenizer, or is damaged")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("ShardedTokens takes contiguous slices")
        start, stop, _ = index.indices(len(self))
        parts, at = [], start
        while at < stop:
            k = int(np.searchsorted(self.starts, at, side="right")) - 1
            end = min(stop, int(self.starts[k + 1]))
            parts.append(self.shards[k][at - self.starts[k] : end - self.starts[k]])
            at = end
        return np.concatenate(parts) if len(parts) != 1 else np.asarray(parts[0])

    def max(self) -> int:
        return max(int(s.max()) for s in self.shards)
