"""`quatrix data prepare`: formats, determinism across workers, resume, bad input, and the
shards as `quatrix pretrain --data DIR` reads them."""

import gzip
import json
import re

import numpy as np
import pytest

import quatrix.data.prepare as prep
from quatrix.cli import main
from quatrix.data.prepare import prepare
from quatrix.data.shards import ShardedTokens
from quatrix.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = "the of and to in a is that for it as was with be by on not he this are".split()
    docs = [" ".join(rng.choice(words, rng.integers(5, 60))) + f" #{i}." for i in range(600)]
    pq.write_table(pa.table({"content": docs[:200], "id": list(range(200))}), root / "a.parquet")
    (root / "b.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs[200:400]))
    (root / "sub").mkdir()
    with gzip.open(root / "sub" / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"content": d}) + "\n" for d in docs[400:])
    (root / "d.txt").write_text("\n".join(docs[:50]))
    return root, docs


def run(corpus, out, **kw):
    root, _ = corpus
    return prepare([str(root)], "gpt2", out, text_field="content", shard_tokens=kw.pop("shard_tokens", 3000),
                   val_fraction=0.1, **kw)


def test_every_document_is_tokenized_once_with_an_end_of_text(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "UNIT_BYTES", 2000)  # many units, many shards
    manifest = run(corpus, tmp_path / "p")
    tok = load_tokenizer("gpt2")
    train, val = (ShardedTokens(tmp_path / "p", s, tok.vocab_size) for s in ("train", "val"))
    assert len([s for s in manifest["shards"] if s["split"] == "train"]) > 3 and manifest["dtype"] == "uint16"
    assert len(train) == manifest["tokens"]["train"] and len(val) == manifest["tokens"]["val"]
    both = np.concatenate([train[:], val[:]])
    assert (both == tok.eot_id).sum() == 600 + 1  # each record, and the .txt file as one document
    _, docs = corpus
    text = tok.decode(train[:].tolist()) + tok.decode(val[:].tolist())
    assert all(f"#{i}." in text for i in range(600))
    assert 0.02 < len(val) / (len(train) + len(val)) < 0.25  # about --val-fraction of the documents
    whole = np.concatenate([np.fromfile(tmp_path / "p" / s["file"], dtype=np.uint16)
                            for s in manifest["shards"] if s["split"] == "train"])
    bounds = np.cumsum([s["tokens"] for s in manifest["shards"] if s["split"] == "train"])
    at = int(bounds[0])
    assert np.array_equal(train[at - 7 : at + 9], whole[at - 7 : at + 9])  # a slice across two shards


def test_the_same_shards_for_any_number_of_workers_and_after_a_kill(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "UNIT_BYTES", 2000)
    run(corpus, tmp_path / "one")
    run(corpus, tmp_path / "two", workers=2)
    seen = []

    def killer(n):
        seen.append(n)
        if len(seen) == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(corpus, tmp_path / "killed", progress=killer)
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "killed").glob("*.bin")}
    assert kept and (tmp_path / "killed" / "progress.json").exists()
    run(corpus, tmp_path / "killed")
    for name, mtime in kept.items():  # finished shards were kept, not rewritten
        assert (tmp_path / "killed" / name).stat().st_mtime_ns == mtime
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    for other in ("two", "killed"):
        assert sorted(p.name for p in (tmp_path / other).iterdir()) == files
        for name in files:
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / other / name).read_bytes(), (other, name)


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "x.jsonl").write_text('{"content": "ok"}\n{"text": "no"}\n'), r"x.jsonl:2: no 'content' field"),
    (lambda d: (d / "x.jsonl").write_text('{"content": "ok"}\n{oops\n'), r"x.jsonl:2: not JSON"),
    (lambda d: (d / "x.txt").write_bytes(b"fine\nline two \xff\xfe\n"), r"x.txt:2: not UTF-8"),
    (lambda d: (d / "x.parquet").write_bytes(b"PAR1 not really"), r"x.parquet: not a readable parquet file"),
])
def test_bad_input_is_named_with_its_file_and_line(tmp_path, make, message, capsys):
    (tmp_path / "in").mkdir()
    make(tmp_path / "in")
    assert main(["data", "prepare", "--data", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--text-field", "content"]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_txt_line_longer_than_a_unit_is_cut_between_characters(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "UNIT_BYTES", 101)  # odd: a cut at a fixed byte count would split "é"
    text = "é" * 400 + " fin\n" + "ü" * 300
    (tmp_path / "long.txt").write_text(text)
    manifest = prepare([str(tmp_path / "long.txt")], "gpt2", tmp_path / "p", val_fraction=0.0)
    tok = load_tokenizer("gpt2")
    tokens = ShardedTokens(tmp_path / "p", "train", tok.vocab_size)[:].tolist()
    assert manifest["tokens"]["val"] == 0 and tokens[-1] == tok.eot_id
    assert tok.decode(tokens[:-1]) == text


def test_a_parquet_column_that_is_not_text_is_named(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"content": [1, 2, 3]}), tmp_path / "in" / "n.parquet")
    assert main(["data", "prepare", "--data", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--text-field", "content"]) == 2
    assert re.search(r"n.parquet: column 'content' holds int64, not text", capsys.readouterr().err)


def test_missing_inputs_and_other_settings_in_the_same_folder_are_refused(corpus, tmp_path, capsys):
    assert main(["data", "prepare", "--data", str(tmp_path / "nothing*.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "no input at" in capsys.readouterr().err
    run(corpus, tmp_path / "p")
    with pytest.raises(FileExistsError, match="other inputs or settings"):
        run(corpus, tmp_path / "p", shard_tokens=99)


def test_pretrain_reads_a_prepared_folder_and_warns_about_epochs(corpus, tmp_path, capsys):
    run(corpus, tmp_path / "p")
    argv = ["pretrain", "--data", str(tmp_path / "p"), "--steps", "2", "--batch-size", "2", "--seq-len", "32",
            "--out", str(tmp_path / "run"), "--eval-batches", "1", "--quiet"]
    assert main(argv) == 0
    assert "epochs" not in capsys.readouterr().err
    long = ["pretrain", "--data", str(tmp_path / "p"), "--steps", "4000", "--batch-size", "2", "--seq-len", "64",
            "--out", str(tmp_path / "run2"), "--quiet"]
    assert main([*long, "--max-epochs", "4"]) == 2
    err = capsys.readouterr().err
    assert "M-token corpus =" in err and "more than --max-epochs 4" in err
    assert not (tmp_path / "run2" / "checkpoint").exists()


def test_the_workers_start_without_torch():
    """Spawned workers re-import the main module (quatrix.cli) and this one: neither may pull
    in torch, or each worker pays seconds and hundreds of MB for nothing."""
    import subprocess
    import sys

    code = "import sys, quatrix.cli, quatrix.data.prepare; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
