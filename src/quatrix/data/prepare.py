"""`quatrix data prepare`: a corpus of any size, tokenized once into shards of token ids.

    quatrix data prepare --data fineweb/ --tokenizer gpt2 --out data/fineweb-gpt2 --workers 2

Reads `.txt`, `.jsonl`, `.jsonl.gz` and `.parquet` files (any text column) from files,
folders and globs, streaming: the reader holds one unit of text (about UNIT_CHARS
characters) per worker in flight, and each split's writer at most one shard of tokens, so
memory stays bounded whatever the input's size. Each document is followed by the
end-of-text token; a document goes to the held-out split when a hash of its opening text
falls under --val-fraction, so the split does not depend on the order or number of files.

Units of text are tokenized in worker processes and written in input order: the same inputs
give byte-identical shards for any --workers. A shard closes at the first unit boundary
after --shard-tokens tokens; `progress.json` records the finished shards after each one, so
a killed prepare resumes where its last shard ended, and `manifest.json`, written last,
marks the folder complete (shards, token counts, SHA-256, tokenizer fingerprint).

Written by hand rather than with `datasets.map`: it must run with no network and no
Hugging Face cache, and its shard format is the one `quatrix pretrain --data DIR` memory-maps.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import multiprocessing
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quatrix.data.text import tokenizer_id
from quatrix.io import atomic_path, atomic_write_json, sha256_file

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
UNIT_CHARS = 1 << 20  # characters of text per unit of work
TXT_BLOCK = 1 << 20  # a .txt file is read in blocks of this many bytes, cut at a newline
MANIFEST, PROGRESS = "manifest.json", "progress.json"


@dataclass(frozen=True)
class Piece:
    """Text of one document (or a block of a long .txt document); `last` ends the document."""
    text: str
    last: bool


def input_files(paths: list[str]) -> list[Path]:
    """Every readable input under `paths` (files, folders searched recursively, globs), sorted."""
    found: list[Path] = []
    for spec in paths:
        matches = [Path(m) for m in sorted(glob.glob(spec, recursive=True))] if any(c in spec for c in "*?[") else [Path(spec)]
        if not matches or not all(m.exists() for m in matches):
            raise FileNotFoundError(f"no input at {spec}")
        for m in matches:
            files = sorted(p for p in m.rglob("*") if p.is_file()) if m.is_dir() else [m]
            found += [f for f in files if f.name.endswith(SUFFIXES)]
    if not found:
        raise FileNotFoundError(f"no {', '.join(SUFFIXES)} files in {', '.join(paths)}")
    return sorted(set(found), key=str)


def documents(path: Path, text_field: str) -> Iterator[list[Piece]]:
    """The documents of one file, each as its pieces (one piece, except for long .txt files)."""
    name = path.name
    if name.endswith(".txt"):
        yield list(_txt_blocks(path))
    elif name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if raw.strip():
                    yield [Piece(_field(_json_line(raw, path, line_no), text_field, f"{path}:{line_no}"), True)]
    else:
        yield from _parquet_documents(path, text_field)


def _txt_blocks(path: Path) -> Iterator[Piece]:
    with open(path, "rb") as f:
        carry, offset, line = b"", 0, 1
        while True:
            block = f.read(TXT_BLOCK)
            data = carry + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            cut = cut or len(data)
            chunk, carry = data[:cut], data[cut:]
            try:
                text = chunk.decode("utf-8")
            except UnicodeDecodeError as e:
                bad_line = line + chunk[: e.start].count(b"\n")
                raise ValueError(f"{path}:{bad_line}: not UTF-8 (byte {offset + e.start})") from None
            line += chunk.count(b"\n")
            offset += len(chunk)
            if not block:
                yield Piece(text, True)
                return
            if text:
                yield Piece(text, False)


def _json_line(raw: bytes, path: Path, line_no: int):
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}:{line_no}: not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not JSON ({e.msg})") from None


def _field(record, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: no {field!r} field (it has: {keys}); choose one with --text-field")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{where}: {field!r} is {type(value).__name__}, not text")
    return value


def _parquet_documents(path: Path, field: str) -> Iterator[list[Piece]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit("reading .parquet needs pyarrow: pip install 'quatrix[data]'") from None
    try:
        reader = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors have no common base worth naming
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    columns = reader.schema_arrow.names
    if field not in columns:
        raise ValueError(f"{path}: no {field!r} column (it has: {', '.join(columns)}); choose one with --text-field")
    row = 0
    for batch in reader.iter_batches(batch_size=1024, columns=[field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"{path}: row {row}: {field!r} is {type(value).__name__}, not text")
            yield [Piece(value, True)]


def held_out(first_piece: str, val_fraction: float) -> bool:
    """A stable, order-free split: the document's opening text, hashed."""
    digest = hashlib.sha256(first_piece[:4096].encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def units(files: list[Path], text_field: str, val_fraction: float) -> Iterator[tuple[str, list[Piece]]]:
    """(split, pieces) units of about UNIT_CHARS characters, in input order, one split each."""
    pending = {"train": ([], 0), "val": ([], 0)}
    for path in files:
        for doc in documents(path, text_field):
            split = "val" if held_out(doc[0].text, val_fraction) else "train"
            pieces, chars = pending[split]
            pieces += doc
            chars += sum(len(p.text) for p in doc)
            if chars >= UNIT_CHARS:
                yield split, pieces
                pieces, chars = [], 0
            pending[split] = (pieces, chars)
    for split, (pieces, _) in pending.items():
        if pieces:
            yield split, pieces


_TOKENIZER = None


def _init_worker(tokenizer_name: str) -> None:
    from quatrix.tokenizer import load_tokenizer

    global _TOKENIZER
    _TOKENIZER = load_tokenizer(tokenizer_name)


def tokenize_unit(pieces: list[Piece]) -> np.ndarray:
    """Token ids of a unit, end-of-text after each document (one thread: workers scale it)."""
    tok = _TOKENIZER
    ids: list[int] = []
    for piece in pieces:
        ids += tok.encode(piece.text)
        if piece.last:
            ids.append(tok.eot_id)
    return np.asarray(ids, dtype=np.uint16 if tok.vocab_size <= 2**16 else np.uint32)


def tokenizer_fingerprint(tokenizer) -> str:
    """The token cache's tokenizer identity (kind, size, a probe's ids), hashed short."""
    return hashlib.sha256(tokenizer_id(tokenizer).encode()).hexdigest()[:16]


def prepare(data: list[str], tokenizer_name: str, out: str | Path, text_field: str = "text", workers: int = 1,
            shard_tokens: int = 100_000_000, val_fraction: float = 0.005, progress=None) -> dict:
    """Tokenize `data` into OUT; resumes a killed prepare of the same inputs. The manifest."""
    from quatrix.tokenizer import load_tokenizer

    if workers < 1 or shard_tokens < 1 or not 0 <= val_fraction < 1:
        raise ValueError(f"need --workers >= 1, --shard-tokens >= 1 and 0 <= --val-fraction < 1 "
                         f"(got {workers}, {shard_tokens}, {val_fraction})")
    files = input_files(data)
    tokenizer = load_tokenizer(tokenizer_name)
    out = Path(out)
    settings = {"inputs": [[str(f.resolve()), f.stat().st_size] for f in files], "text_field": text_field,
                "tokenizer": tokenizer_name, "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                "vocab_size": tokenizer.vocab_size, "shard_tokens": shard_tokens, "val_fraction": val_fraction,
                "dtype": "uint16" if tokenizer.vocab_size <= 2**16 else "uint32"}
    done = _resume_state(out, settings)
    if done.get("complete"):
        return done["manifest"]
    out.mkdir(parents=True, exist_ok=True)
    writers = {s: _Writer(out, s, done["shards"], done["last_unit"].get(s, -1)) for s in ("train", "val")}
    stream = ((i, split, pieces) for i, (split, pieces) in enumerate(units(files, text_field, val_fraction))
              if i > writers[split].last_unit)
    for index, split, tokens in _tokenized(stream, tokenizer_name, workers):
        if writers[split].add(index, tokens, shard_tokens):
            atomic_write_json(out / PROGRESS, {"settings": settings, "shards": _all_shards(writers),
                                               "last_unit": {s: w.last_unit for s, w in writers.items()}})
        if progress is not None:
            progress(len(tokens))
    for w in writers.values():
        w.flush()
    manifest = {**settings, "shards": _all_shards(writers),
                "tokens": {s: sum(x["tokens"] for x in w.shards) for s, w in writers.items()}}
    atomic_write_json(out / MANIFEST, manifest)
    (out / PROGRESS).unlink(missing_ok=True)
    return manifest


def _resume_state(out: Path, settings: dict) -> dict:
    """What an earlier prepare into OUT finished, checked against its checksums."""
    for name in (MANIFEST, PROGRESS):
        path = out / name
        if not path.is_file():
            continue
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{path} is damaged; delete {out} and prepare again") from None
        recorded = state.get("settings", {k: state.get(k) for k in settings}) if name == PROGRESS else \
            {k: state.get(k) for k in settings}
        if recorded != settings:
            raise FileExistsError(f"{out} holds a prepare of other inputs or settings; choose another --out or delete it")
        for shard in state["shards"]:
            file = out / shard["file"]
            if not file.is_file() or sha256_file(file) != shard["sha256"]:
                raise ValueError(f"{file} is missing or does not match its checksum; delete {out} and prepare again")
        if name == MANIFEST:
            return {"complete": True, "manifest": state}
        return state
    return {"shards": [], "last_unit": {}}


class _Writer:
    """One split's shards: tokens buffered until a shard is due, each shard written atomically."""

    def __init__(self, out: Path, split: str, shards: list[dict], last_unit: int):
        self.out, self.split, self.last_unit = out, split, last_unit
        self.shards = [s for s in shards if s["split"] == split]
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.pending_unit = last_unit

    def add(self, index: int, tokens: np.ndarray, shard_tokens: int) -> bool:
        """Buffer a unit; True when that closed a shard."""
        self.buffer.append(tokens)
        self.buffered += len(tokens)
        self.pending_unit = index
        if self.buffered >= shard_tokens:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        if not self.buffered:
            return
        path = self.out / f"{self.split}_{len(self.shards):05d}.bin"
        with atomic_path(path) as tmp:
            np.concatenate(self.buffer).tofile(tmp)
        self.shards.append({"file": path.name, "split": self.split, "tokens": self.buffered,
                            "sha256": sha256_file(path)})
        self.buffer, self.buffered, self.last_unit = [], 0, self.pending_unit


def _all_shards(writers: dict) -> list[dict]:
    return [s for w in writers.values() for s in w.shards]


def _tokenized(stream, tokenizer_name: str, workers: int):
    """(index, split, tokens) in input order; `workers` processes, at most 2 units each in flight."""
    if workers == 1:
        _init_worker(tokenizer_name)
        for index, split, pieces in stream:
            yield index, split, tokenize_unit(pieces)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer_name,)) as pool:
        flight: deque = deque()
        for index, split, pieces in stream:
            flight.append((index, split, pool.apply_async(tokenize_unit, (pieces,))))
            if len(flight) >= 2 * workers:
                i, s, result = flight.popleft()
                yield i, s, result.get()
        while flight:
            i, s, result = flight.popleft()
            yield i, s, result.get()


class ShardedTokens:
    """A split of a prepared folder as one sequence of token ids: the shards, memory-mapped
    in order, sliced across shard boundaries (what TokenLoader and evaluation index)."""

    def __init__(self, directory: str | Path, split: str, vocab_size: int):
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest["vocab_size"] != vocab_size:
            raise ValueError(f"{directory} was prepared with a {manifest['vocab_size']}-token vocabulary "
                             f"({manifest['tokenizer']}); this model's tokenizer has {vocab_size}")
        dtype = np.dtype(manifest["dtype"])
        self.shards = []
        for shard in (s for s in manifest["shards"] if s["split"] == split):
            path = directory / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * dtype.itemsize:
                raise ValueError(f"{path} is missing or not the {shard['tokens']} tokens its manifest records")
            self.shards.append(np.memmap(path, dtype=dtype, mode="r"))
        if not self.shards:
            raise ValueError(f"{directory} has no {split} tokens (prepared with --val-fraction "
                             f"{manifest['val_fraction']}); prepare it with a larger corpus or fraction")
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.dtype = dtype
        top = self.max()  # checked once here, so training can skip per-step value checks
        if top >= vocab_size:
            raise ValueError(f"{directory} holds token id {top}, outside the vocabulary [0, {vocab_size})")

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


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        hint = " (a prepare was interrupted: run it again to finish)" if (Path(directory) / PROGRESS).exists() else ""
        raise FileNotFoundError(f"{path} not found: {directory} is not a prepared folder{hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{path} is damaged; prepare the folder again") from None


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file() or (Path(path) / PROGRESS).is_file()
