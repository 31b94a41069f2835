"""Tokenizing a corpus: `quatrix data prepare` with 1 and 2 workers against the usual
approach (a multiprocessing.Pool mapping tiktoken's encode_ordinary over documents, as the
well-known GPT-2 reproductions do), on one generated .jsonl corpus, in one run.

    python benchmarks/prepare.py --mb 200 --out runs/bench-prepare

Each contender runs in its own process; its peak RSS is sampled from /proc every 0.1 s,
summed over that process and all its workers (and the largest single process is reported
too). The corpus is Shakespeare's lines reshuffled into documents of 200-4,000 characters,
so the text has real English token statistics."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

BASELINE = r'''
import json, sys, multiprocessing as mp
import numpy as np
from quatrix.tokenizer import load_tokenizer
enc = load_tokenizer("gpt2")._enc  # tiktoken's GPT-2 Encoding, from the local ranks (no download)
def tokenize(doc):
    return np.array([enc.eot_token] + enc.encode_ordinary(doc), dtype=np.uint16)
def docs(path):
    with open(path) as f:
        for line in f:
            yield json.loads(line)["text"]
if __name__ == "__main__":
    n = 0
    with mp.Pool(int(sys.argv[2])) as pool, open(sys.argv[3], "wb") as out:
        for tokens in pool.imap(tokenize, docs(sys.argv[1]), chunksize=16):
            out.write(tokens.tobytes()); n += len(tokens)
    print(n)
'''


def make_corpus(path: Path, megabytes: int) -> None:
    import numpy as np

    from quatrix.data.text import read_documents

    lines = [line for doc in read_documents("shakespeare") for line in doc.splitlines() if line.strip()]
    rng = np.random.default_rng(0)
    written = 0
    with open(path, "w") as f:
        while written < megabytes * 10**6:
            take = rng.integers(0, len(lines), int(rng.integers(5, 100)))
            line = json.dumps({"text": "\n".join(lines[i] for i in take)}) + "\n"
            f.write(line)
            written += len(line)


def tree_rss(root: int) -> tuple[int, int]:
    """(sum, largest) resident bytes of `root` and its descendants, from /proc. It walks each
    process's `children` lists rather than every process on the machine, so that sampling
    every 0.1 s takes little of the CPU the contenders are timed on."""
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                continue
    sizes = []
    for pid in tree:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) * 1024)
        except OSError:
            continue
    return sum(sizes), max(sizes, default=0)


def timed(argv: list[str]) -> tuple[float, str, int, int]:
    """Seconds, stdout, and the peak summed and largest RSS of the process tree (bytes)."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    peak = [0, 0]

    def sample():
        while process.poll() is None:
            total, largest = tree_rss(process.pid)
            peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(argv)} failed with status {process.returncode}")
    return seconds, stdout, peak[0], peak[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=200, help="corpus size, MB")
    p.add_argument("--out", default="runs/bench-prepare")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.jsonl"
    if not corpus.exists() or corpus.stat().st_size < args.mb * 10**6:
        make_corpus(corpus, args.mb)
    size = corpus.stat().st_size
    (out / "baseline.py").write_text(BASELINE)
    rows = []
    runs = [("Pool(2).imap(encode_ordinary), the usual approach", [sys.executable, str(out / "baseline.py"), str(corpus),
                                                                   "2", str(out / "baseline.bin")])]
    for workers in (1, 2):
        folder = out / f"prepared-{workers}"
        subprocess.run(["rm", "-rf", str(folder)], check=True)
        runs.append((f"quatrix data prepare --workers {workers}",
                     [sys.executable, "-m", "quatrix.cli", "data", "prepare", "--data", str(corpus), "--out",
                      str(folder), "--workers", str(workers), "--val-fraction", "0.005"]))
    for name, argv in runs:
        seconds, stdout, rss, largest = timed(argv)
        tokens = int(stdout.split()[0]) if "baseline" in argv[1] else \
            sum(json.loads((Path(argv[argv.index("--out") + 1]) / "manifest.json").read_text())["tokens"].values())
        rows.append({"name": name, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                     "peak_rss_mib": rss / 2**20, "largest_process_rss_mib": largest / 2**20})
        print(f"{name}: {tokens:,} tokens in {seconds:.1f} s = {tokens / seconds:,.0f} tokens/s, peak RSS "
              f"{rss / 2**20:,.0f} MiB (largest process {largest / 2**20:,.0f} MiB)", flush=True)
    same = (out / "prepared-1").joinpath("manifest.json").read_text() == (out / "prepared-2").joinpath("manifest.json").read_text()
    result = {"corpus_bytes": size, "runs": rows, "identical_shards_1_vs_2_workers": same,
              "speedup_2_over_1": rows[2]["tokens_per_s"] / rows[1]["tokens_per_s"],
              "prepare_2_over_baseline": rows[2]["tokens_per_s"] / rows[0]["tokens_per_s"]}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
