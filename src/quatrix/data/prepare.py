"""`quatrix data prepare`: a corpus of any size, tokenized once into shards of token ids.

    quatrix data prepare --data fineweb/ --tokenizer gpt2 --out data/fineweb-gpt2 --workers 2

Reads `.txt`, `.jsonl`, `.jsonl.gz` and `.parquet` files (any text column) from files,
folders and globs, streaming. The main process only cuts the input into units: about
UNIT_BYTES of raw bytes (whole lines of a .jsonl, whole lines of a .txt) or PARQUET_ROWS
rows of a .parquet column. Worker processes parse, split and tokenize the units; the main
process appends their tokens to the open shard file of each split. Memory therefore stays
bounded whatever the input's size: at most 2 units per worker in flight (plus their tokens)
and no shard held in memory (docs/design.md gives the figures).

Each document is followed by the end-of-text token; a document goes to the held-out split
when a hash of its first 4,096 bytes falls under --val-fraction, so the split does not
depend on the order or number of files. A .txt file is one document.

Units are cut the same way for any --workers and written in input order: the same inputs
give byte-identical shards for any --workers. A shard closes at the first unit boundary
after --shard-tokens tokens; `progress.json` records the finished shards after each one, so
a killed prepare resumes where its last shard ended, and `manifest.json`, written last,
marks the folder complete (shards, token counts, SHA-256, tokenizer fingerprint).

Written by hand rather than with `datasets.map`: it must run with no network and no
Hugging Face cache, and its shard format is the one `quatrix pretrain --data DIR` memory-maps.
"""

from __future__ import annotations

import contextlib
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

from quatrix.data.shards import (MANIFEST, PROGRESS, SPLITS, ShardWriter, shard_problem, token_dtype,
                                 tokenizer_fingerprint, write_manifest)
from quatrix.io import atomic_write_json

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
UNIT_BYTES = 1 << 20  # raw bytes of a .jsonl or .txt per unit of work, extended to the end of a line
PARQUET_ROWS = 512  # rows of a .parquet column per unit of work
OPENING_BYTES = 4096  # the held-out split hashes this much of each document


@dataclass(frozen=True)
class Unit:
    """A slice of one input file: cut by the main process, parsed and tokenized by a worker.

    `data` is raw bytes (.jsonl, .txt) or a pyarrow string array (.parquet); `first` the
    number of its first line or row, `offset` its byte offset in the file (for messages).
    A .txt unit belongs to `split` as a whole (the file is one document) and `last` ends it."""
    path: str
    kind: str
    data: object
    first: int
    offset: int = 0
    split: str | None = None
    last: bool = True


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


# ---------------------------------------------------------------------- cutting (main process)
def units(files: list[Path], text_field: str, val_fraction: float) -> Iterator[Unit]:
    """The units of every file, in input order; cheap work only (reading, finding line ends)."""
    for path in files:
        if path.name.endswith(".txt"):
            yield from _txt_units(path, val_fraction)
        elif path.name.endswith((".jsonl", ".jsonl.gz")):
            yield from _jsonl_units(path)
        else:
            yield from _parquet_units(path, text_field)


def _jsonl_units(path: Path) -> Iterator[Unit]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        line = 1
        while block := f.read(UNIT_BYTES):
            block += f.readline()
            yield Unit(str(path), "jsonl", block, line)
            line += block.count(b"\n")


def _txt_units(path: Path, val_fraction: float) -> Iterator[Unit]:
    """Blocks of the file cut after a newline (or, in a line longer than a block, between
    characters); the file's split comes from its opening bytes."""
    with open(path, "rb") as f:
        split = "val" if held_out(f.read(OPENING_BYTES), val_fraction) else "train"
        f.seek(0)
        carry, offset, line = b"", 0, 1
        while True:
            block = f.read(UNIT_BYTES)
            data = carry + block
            cut = len(data)
            if block:
                cut = data.rfind(b"\n") + 1 or _char_boundary(data)
            chunk, carry = data[:cut], data[cut:]
            yield Unit(str(path), "txt", chunk, line, offset, split, last=not block)
            if not block:
                return
            line += chunk.count(b"\n")
            offset += len(chunk)


def _char_boundary(data: bytes) -> int:
    """A cut of `data` (a block with no newline) before its last UTF-8 character, so no
    character is split (continuation bytes are 0b10xxxxxx)."""
    cut = len(data) - 1
    while cut > 0 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut or len(data)


def _parquet_units(path: Path, field: str) -> Iterator[Unit]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit("reading .parquet needs pyarrow: pip install 'quatrix[data]'") from None
    try:
        reader = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors have no common base worth naming
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    schema = reader.schema_arrow
    if field not in schema.names:
        raise ValueError(f"{path}: no {field!r} column (it has: {', '.join(schema.names)}); choose one with --text-field")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(f"{path}: column {field!r} holds {kind}, not text")
    row = 1
    for batch in reader.iter_batches(batch_size=PARQUET_ROWS, columns=[field]):
        yield Unit(str(path), "parquet", batch.column(0), row)
        row += batch.num_rows


# ---------------------------------------------------------------------- tokenizing (workers)
def held_out(opening: bytes, val_fraction: float) -> bool:
    """A stable, order-free split: the document's first OPENING_BYTES bytes of UTF-8, hashed."""
    digest = hashlib.sha256(opening[:OPENING_BYTES]).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


_WORKER: dict = {}


def _init_worker(tokenizer_name: str, text_field: str, val_fraction: float) -> None:
    from quatrix.tokenizer import load_tokenizer

    _WORKER.update(tokenizer=load_tokenizer(tokenizer_name), text_field=text_field, val_fraction=val_fraction)


def tokenize_unit(unit: Unit) -> dict[str, np.ndarray]:
    """Each split's token ids of a unit, end-of-text after each document (one thread: the
    workers scale it)."""
    tok, val_fraction = _WORKER["tokenizer"], _WORKER["val_fraction"]
    ids: dict[str, list[int]] = {s: [] for s in SPLITS}
    if unit.kind == "txt":
        ids[unit.split] += tok.encode(_decode_txt(unit))
        if unit.last:
            ids[unit.split].append(tok.eot_id)
    else:
        for text in _documents(unit, _WORKER["text_field"]):
            split = "val" if held_out(text[:OPENING_BYTES].encode("utf-8", "surrogatepass"), val_fraction) else "train"
            ids[split] += tok.encode(text)
            ids[split].append(tok.eot_id)
    return {s: np.asarray(ids[s], dtype=token_dtype(tok.vocab_size)) for s in SPLITS}


def _documents(unit: Unit, field: str) -> Iterator[str]:
    if unit.kind == "parquet":
        yield from (value for value in unit.data.to_pylist() if value is not None)
        return
    for line_no, raw in enumerate(unit.data.split(b"\n"), unit.first):
        if raw.strip():
            yield _field(_json_line(raw, unit.path, line_no), field, f"{unit.path}:{line_no}")


def _decode_txt(unit: Unit) -> str:
    try:
        return unit.data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = unit.first + unit.data[: e.start].count(b"\n")
        raise ValueError(f"{unit.path}:{line}: not UTF-8 (byte {unit.offset + e.start})") from None


def _json_line(raw: bytes, path: str, line_no: int):
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


# ---------------------------------------------------------------------- writing (main process)
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
                "dtype": token_dtype(tokenizer.vocab_size).name}
    done = _resume_state(out, settings)
    if done.get("complete"):
        return done["manifest"]
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        writers = {s: stack.enter_context(ShardWriter(out, s, done["shards"], done["last_unit"].get(s, -1)))
                   for s in SPLITS}
        resume_from = min(w.last_unit for w in writers.values()) + 1
        stream = ((i, unit) for i, unit in enumerate(units(files, text_field, val_fraction)) if i >= resume_from)
        for index, tokens in _tokenized(stream, (tokenizer_name, text_field, val_fraction), workers):
            closed = [writers[s].add(index, tokens[s], shard_tokens) for s in SPLITS]
            if any(closed):
                atomic_write_json(out / PROGRESS, {"settings": settings, "shards": _all_shards(writers),
                                                   "last_unit": {s: w.last_unit for s, w in writers.items()}})
            if progress is not None:
                progress(sum(len(t) for t in tokens.values()))
        for w in writers.values():
            w.close()
    manifest = {**settings, "shards": _all_shards(writers),
                "tokens": {s: sum(x["tokens"] for x in w.shards) for s, w in writers.items()}}
    write_manifest(out, manifest)
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
        problem = shard_problem(out, state["shards"], np.dtype(settings["dtype"]).itemsize)
        if problem:
            raise ValueError(f"{out}: {problem}; delete {out} and prepare again")
        if name == MANIFEST:
            return {"complete": True, "manifest": state}
        return state
    return {"shards": [], "last_unit": {}}


def _all_shards(writers: dict) -> list[dict]:
    return [s for w in writers.values() for s in w.shards]


def _tokenized(stream, init_args: tuple, workers: int):
    """(index, tokens per split) in input order; `workers` processes, at most 2 units each in flight."""
    if workers == 1:
        _init_worker(*init_args)
        for index, unit in stream:
            yield index, tokenize_unit(unit)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    with context.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        flight: deque = deque()
        for index, unit in stream:
            flight.append((index, pool.apply_async(tokenize_unit, (unit,))))
            if len(flight) >= 2 * workers:
                i, result = flight.popleft()
                yield i, result.get()
        while flight:
            i, result = flight.popleft()
            yield i, result.get()
