"""The Berry run's evaluation, samples and report (quatrix.train.berry runs them).

`evaluate_run` measures every checkpoint on what its stage should have taught it and
writes OUT/eval/results.json; `sample_run` writes OUT/samples/ (generations from text,
chat, math, image and audio prompts); `write_report` composes OUT/report.md from the
recipe, the stages' own metrics and summary files, those results and samples, and links
the stages' plots. Every number in the report is read from a file the run wrote.
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

import torch

from quatrix.data.sft import TEXT as SFT_TEXT_SOURCE
from quatrix.engine import generate
from quatrix.io import atomic_write_json, atomic_write_text
from quatrix.train.metrics import smoothed

TRAINED = ("pretrain", "sft", "grpo")


def checkpoint(out: Path, stage: str) -> Path:
    return out / stage / "checkpoint"


# ---------------------------------------------------------------------- evaluation
def eval_n(spec: dict, task: str) -> int:
    """Held-out items for `task` ("math", "visual_qa", "transcribe"): the recipe's eval "n",
    one number for every task or one per task (a task's question space may be small, and a
    media task needs more items for its intervals to separate from the baselines')."""
    n = spec.get("n", 200)
    return n.get(task, 200) if isinstance(n, dict) else n


@torch.no_grad()
def evaluate_run(out: Path, recipe: dict) -> dict:
    from quatrix.eval.perplexity import evaluate_checkpoint
    from quatrix.eval.tasks import evaluate_task
    from quatrix.tasks import task_from_spec
    from quatrix.pretrained import load_model_and_tokenizer

    spec = recipe["eval"]
    new_tokens = spec.get("max_new_tokens", 16)
    seq_len = recipe["pretrain"].get("seq_len", 128)
    results: dict = {"perplexity": {}, "math": {}}
    for stage in TRAINED:
        ckpt = checkpoint(out, stage)
        results["perplexity"][stage] = evaluate_checkpoint(ckpt, spec.get("perplexity_data", ["shakespeare"]), "val",
                                                           seq_len, 16, spec.get("perplexity_batches", 50),
                                                           out / ".token_cache")
        model, tokenizer = load_model_and_tokenizer(ckpt)
        model.eval()
        if spec.get("math_task"):
            task = task_from_spec(spec["math_task"], 0, model.config)
            results["math"][stage] = evaluate_task(model, tokenizer, task, eval_n(spec, "math"), batch_size=50,
                                                   max_new_tokens=new_tokens)
        final = stage == TRAINED[-1]
        if spec.get("visual_qa") and stage != "pretrain" and model.config.use_vision:
            task = task_from_spec("visual_qa", 0, model.config)
            results.setdefault("visual_qa", {})[stage] = evaluate_task(
                model, tokenizer, task, eval_n(spec, "visual_qa"), batch_size=50, max_new_tokens=8,
                with_baselines=final)
        if spec.get("transcribe") and stage != "pretrain" and model.config.use_audio:
            task = task_from_spec(f"transcribe:data={spec['transcribe']}", 0, model.config)
            results.setdefault("transcribe", {})[stage] = evaluate_task(
                model, tokenizer, task, eval_n(spec, "transcribe"), batch_size=50, max_new_tokens=12,
                with_baselines=final)
    atomic_write_json(out / "eval" / "results.json", results)
    return results


# ---------------------------------------------------------------------- samples
@torch.no_grad()
def sample_run(out: Path, recipe: dict) -> dict:
    from PIL import Image

    from quatrix.session import ChatSession
    from quatrix.tasks import task_from_spec
    from quatrix.pretrained import load_model_and_tokenizer

    spec = recipe["samples"]
    tokens = spec.get("max_new_tokens", 40)
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    samples: dict = {}
    base, tokenizer = load_model_and_tokenizer(checkpoint(out, "pretrain"))
    prompt = tokenizer.encode(spec.get("text_prompt", "ROMEO."))
    generated = generate(base, [prompt], tokens, temperature=0.8, top_k=40, generator=torch.Generator().manual_seed(0),
                              stop_token_ids=[tokenizer.eot_id])
    samples["text"] = {"checkpoint": "pretrain", "prompt": spec.get("text_prompt", "ROMEO."),
                       "completion": tokenizer.decode(generated.tokens[0])}
    model, tokenizer = load_model_and_tokenizer(checkpoint(out, TRAINED[-1]))
    model.eval()

    def reply(message: str, attach=None, system: str | None = None) -> str:
        session = ChatSession(model, tokenizer, max_new_tokens=tokens, temperature=0.0, system=system)
        if attach is not None:
            attach(session)
        return "".join(session.reply(message))

    samples["chat"] = {"prompt": spec.get("chat_prompt", "Hello!"), "reply": reply(spec.get("chat_prompt", "Hello!"))}
    if recipe["eval"].get("math_task"):
        task = task_from_spec(recipe["eval"]["math_task"], 0, model.config)
        item = task.eval_items(1)[0]
        session = ChatSession(model, tokenizer, max_new_tokens=tokens, temperature=0.0,
                              system=task.prompt(item)[0]["content"])
        answer = "".join(session.reply(item.question))
        samples["math"] = {"question": item.question, "reply": answer, "answer": item.answer,
                           "correct": task.score_text(answer, item) >= 1.0}
    if model.config.use_vision:
        task = task_from_spec("visual_qa", 0, model.config)
        item = task.eval_items(1)[0]
        pixels = ((item.image.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / "scene.png")
        answer = reply(item.question, lambda s: s.attach_image(folder / "scene.png"), task.prompt(item)[0]["content"])
        samples["image"] = {"file": "samples/scene.png", "question": item.question, "reply": answer,
                            "answer": item.answer}
    if model.config.use_audio and recipe["eval"].get("transcribe"):
        import soundfile

        task = task_from_spec(f"transcribe:data={recipe['eval']['transcribe']}", 0, model.config)
        item = task.eval_items(1)[0]
        soundfile.write(str(folder / "clip.wav"), item.audio.numpy(), model.config.sample_rate)
        answer = reply(item.question, lambda s: s.attach_audio(folder / "clip.wav"))
        samples["audio"] = {"file": "samples/clip.wav", "question": item.question, "reply": answer,
                            "answer": item.answer, "voice": item.entry}
    atomic_write_json(folder / "samples.json", samples)
    return samples


# ---------------------------------------------------------------------- the report
def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def stage_rows(out: Path) -> list[dict]:
    """Per stage: wall time (stages.json), steps, tokens, median tokens/s, the training loss
    (GRPO: reward) at the start and at the end (`ends`) and the last validation loss, read
    from the stage's metrics.jsonl."""
    done = json.loads((out / "stages.json").read_text())
    rows = []
    for stage in ("tokenizer", *TRAINED, "eval", "samples"):
        row = {"stage": stage, "seconds": done.get(stage, {}).get("seconds")}
        metrics = records(out / stage / "metrics.jsonl")
        if metrics:
            val = [r["val_loss"] for r in metrics if "val_loss" in r]
            first, last = ends(metrics, "reward" if stage == "grpo" else "loss")
            row.update(steps=metrics[-1]["step"], tokens=sum(r.get("tokens", 0) for r in metrics),
                       tokens_per_s=statistics.median(r["tokens_per_s"] for r in metrics),
                       first=first, last=last, val_loss=val[-1] if val else None)
        rows.append(row)
    return rows


def ends(metrics: list[dict], key: str) -> tuple[float, float]:
    """Mean of `key` over the first and over the last 5% of the steps (at least one step
    each): one step is noise. In a pretraining mixture, text steps only (every source has its
    own loss scale, and the text one is comparable across stages); in SFT with plain text
    mixed in, the conversation steps only."""
    if any("text_loss" in r for r in metrics):
        key = "text_loss"
    elif any(str(r.get("source", "")).startswith(SFT_TEXT_SOURCE) for r in metrics):
        metrics = [r for r in metrics if not str(r.get("source", "")).startswith(SFT_TEXT_SOURCE)]
    return smoothed(metrics, key)


def items_line(spec: dict, results: dict) -> str:
    names = {"math": "math", "visual_qa": "visual QA", "transcribe": "transcription"}
    return ", ".join(f"{names[k]} {eval_n(spec, k)}" for k in names if results.get(k))


def _f(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def evaluation_table(results: dict) -> list[str]:
    lines = ["| measure | after pretrain | after SFT | after GRPO | baselines (after GRPO) |", "|---|---:|---:|---:|---|"]
    ppl = results.get("perplexity", {})
    lines.append("| held-out text perplexity | " + " | ".join(_f(ppl.get(s, {}).get("perplexity"), 1) for s in TRAINED)
                 + " | |")
    math = results.get("math", {})
    if math:
        lines.append("| math accuracy (greedy) | " + " | ".join(_f(math.get(s, {}).get("accuracy")) for s in TRAINED)
                     + " | |")
        lines.append("| math answer format | " + " | ".join(_f(math.get(s, {}).get("format_rate")) for s in TRAINED)
                     + " | |")
    for key, label in (("visual_qa", "visual QA accuracy"), ("transcribe", "transcription exact match")):
        if key in results:
            r = results[key]
            base = r.get("grpo", {}).get("baselines", {})
            blank = "audio zeroed" if key == "transcribe" else "images zeroed"
            baseline = f"majority {_f(base.get('majority_accuracy'))}, {blank} {_f(base.get('text_only_accuracy'))}"
            lines.append(f"| {label} | – | {_f(r.get('sft', {}).get('accuracy'))} | {_f(r.get('grpo', {}).get('accuracy'))} "
                         f"| {baseline} |")
            if key == "transcribe":
                lines.append(f"| transcription word error rate | – | {_f(r.get('sft', {}).get('wer'))} | "
                             f"{_f(r.get('grpo', {}).get('wer'))} | majority {_f(base.get('majority_wer'))}, "
                             f"audio zeroed {_f(base.get('text_only_wer'))} |")
    return lines


# ---------------------------------------------------------------------- what the run shows
SFT_PERPLEXITY_LIMIT = 1.5  # SFT may cost the language model at most this factor in held-out perplexity
ALPHA = 0.05


def claims(results: dict, vocab_size: int) -> list[dict]:
    """What each stage should have earned, tested on the held-out evaluation: `claim`, what
    was `measured`, and whether it `holds`. Pretraining: held-out perplexity below the
    vocabulary size (a model that learned nothing); SFT: perplexity at most 1.5x
    pretraining's; GRPO: more held-out math right than after SFT, McNemar's exact p < 0.05
    on the same items; visual QA and transcription: the 95% Wilson interval of the accuracy
    above that of the better baseline (majority answer, media zeroed)."""
    from quatrix.eval.tasks import mcnemar_exact, wilson_interval

    out = []
    ppl = {s: results.get("perplexity", {}).get(s, {}).get("perplexity") for s in TRAINED}
    if ppl["pretrain"] is not None:
        out.append({"claim": "pretraining lowers held-out text perplexity",
                    "measured": f"{ppl['pretrain']:.1f}, against {vocab_size:,} for a uniform guess",
                    "holds": ppl["pretrain"] < vocab_size})
    if ppl["pretrain"] is not None and ppl["sft"] is not None:
        ratio = ppl["sft"] / ppl["pretrain"]
        out.append({"claim": f"SFT keeps held-out text perplexity within {SFT_PERPLEXITY_LIMIT}× of pretraining's",
                    "measured": f"{ppl['pretrain']:.1f} → {ppl['sft']:.1f} ({ratio:.2f}×)",
                    "holds": ratio <= SFT_PERPLEXITY_LIMIT})
    math = results.get("math", {})
    if "solved" in math.get("sft", {}) and "solved" in math.get("grpo", {}):
        before, after = math["sft"]["solved"], math["grpo"]["solved"]
        gained = sum(b and not a for a, b in zip(before, after))
        lost = sum(a and not b for a, b in zip(before, after))
        p = mcnemar_exact(gained, lost)
        out.append({"claim": "GRPO raises held-out math accuracy (paired, McNemar's exact test)",
                    "measured": f"{math['sft']['accuracy']:.3f} → {math['grpo']['accuracy']:.3f}; {gained} items "
                                f"right only after GRPO, {lost} only before; p = {p:.2g}",
                    "holds": gained > lost and p < ALPHA})
    for key, label in (("visual_qa", "visual QA"), ("transcribe", "transcription")):
        final = results.get(key, {}).get(TRAINED[-1])
        if not final or "baselines" not in final:
            continue
        n, base = final["n"], final["baselines"]
        name, best = max(((k, base[k]) for k in ("majority_accuracy", "text_only_accuracy") if k in base),
                         key=lambda kv: kv[1])
        low, _ = wilson_interval(round(final["accuracy"] * n), n)
        _, high = wilson_interval(round(best * n), n)
        which = "majority answer" if name == "majority_accuracy" else "media zeroed"
        out.append({"claim": f"{label} beats both baselines (95% intervals apart)",
                    "measured": f"{final['accuracy']:.3f} (interval from {low:.3f}) against {which} {best:.3f} "
                                f"(interval to {high:.3f}), n = {n}",
                    "holds": low > high})
    return out


def claims_table(rows: list[dict]) -> list[str]:
    lines = ["| claim | measured | holds |", "|---|---|---|"]
    lines += [f"| {r['claim']} | {r['measured']} | {'yes' if r['holds'] else '**no**'} |" for r in rows]
    return lines


def write_report(out: Path) -> Path:
    from quatrix.params import count_parameters, parameter_table
    from quatrix.pretrained import load_model_and_tokenizer
    recipe = json.loads((out / "recipe.json").read_text())
    results = json.loads((out / "eval" / "results.json").read_text())
    samples = json.loads((out / "samples" / "samples.json").read_text())
    model, _ = load_model_and_tokenizer(checkpoint(out, TRAINED[-1]))
    env = environment()
    run_config = json.loads((out / "pretrain" / "run_config.json").read_text())
    rows = stage_rows(out)
    lines = [f"# Berry run: {recipe.get('name', recipe['preset'])}", "", recipe.get("description", ""), "",
             "## Environment", "",
             f"torch {env['torch']}, Python {env['python']}; CPU {env['cpu']}, {run_config.get('threads')} threads; "
             f"GPU {env['gpu'] or 'none'}; pretraining precision {run_config.get('precision')}, "
             f"{run_config.get('world_size', 1)} process(es).", "",
             "## Stages", "",
             "| stage | wall time (s) | steps | tokens | tokens/s (median) | training loss, first → last 5% of "
             "steps (pretraining: text steps; SFT: conversations; GRPO: reward) | last validation loss |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        losses = f"{r['first']:.3f} → {r['last']:.3f}" if "first" in r else "–"
        lines.append(f"| {r['stage']} | {_f(r['seconds'], 0)} | {r.get('steps', '–')} | "
                     f"{r['tokens']:,} | {r['tokens_per_s']:,.0f} | {losses} | {_f(r.get('val_loss'))} |"
                     if "steps" in r else f"| {r['stage']} | {_f(r['seconds'], 0)} | – | – | – | – | – |")
    total = sum(r["seconds"] or 0 for r in rows)
    lines += ["", f"Total: {total:.0f} s.", "", "## Evaluation", "",
              f"Greedy, on held-out items ({items_line(recipe['eval'], results)}; `eval/results.json`).", "",
              *evaluation_table(results), "", "## What the run shows", "",
              "Each stage against what it should have earned, on the held-out items above "
              "(quatrix.train.report.claims).", "",
              *claims_table(claims(results, model.config.vocab_size)), "", "## Samples", ""]
    for key, sample in samples.items():
        if key == "text":
            lines.append(f"- **text** (pretrained model, temperature 0.8): {sample['prompt']!r} → "
                         f"{sample['completion']!r}")
        elif key == "chat":
            lines.append(f"- **chat**: {sample['prompt']!r} → {sample['reply']!r}")
        elif key == "math":
            lines.append(f"- **math**: {sample['question']!r} → {sample['reply']!r} (answer {sample['answer']}, "
                         f"{'right' if sample['correct'] else 'wrong'})")
        elif key == "image":
            lines.append(f"- **image** ([scene]({sample['file']})): {sample['question']!r} → {sample['reply']!r} "
                         f"(answer {sample['answer']})")
        elif key == "audio":
            lines.append(f"- **audio** ([clip]({sample['file']}), held-out voice {sample['voice']}): "
                         f"{sample['question']!r} → {sample['reply']!r} (said: {sample['answer']!r})")
    lines += ["", "## Plots", ""]
    for stage, plot in (("pretrain", "loss.png"), ("sft", "loss.png"), ("grpo", "loss.png"), ("grpo", "reward.png")):
        if (out / stage / plot).is_file():
            lines.append(f"![{stage} {plot}]({stage}/{plot})")
    lines += ["", "## Parameters", "", "```", parameter_table(count_parameters(model)), "```", "",
              "## Recipe", "", "```json", json.dumps(recipe, indent=2), "```", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def summary_table(out: Path) -> str:
    """A few lines for the terminal: each stage's time and loss, then the evaluation."""
    lines = [f"{'stage':<10}{'time':>8}  training loss, first -> last 5% of steps (pretrain: text; sft: conversations; "
             "grpo: reward)"]
    for r in stage_rows(out):
        loss = f"{r['first']:.3f} -> {r['last']:.3f}" if "first" in r else ""
        lines.append(f"{r['stage']:<10}{_f(r['seconds'], 0):>7}s  {loss}")
    results = json.loads((out / "eval" / "results.json").read_text())
    math = results.get("math", {})
    if math:
        lines.append("math accuracy: " + ", ".join(f"{s} {_f(math[s]['accuracy'])}" for s in TRAINED if s in math))
    for key, label in (("visual_qa", "visual QA"), ("transcribe", "transcription")):
        if key in results and "grpo" in results[key]:
            r = results[key]["grpo"]
            lines.append(f"{label}: {_f(r['accuracy'])} (majority {_f(r['baselines']['majority_accuracy'])}, "
                         f"media zeroed {_f(r['baselines']['text_only_accuracy'])})")
    vocab = json.loads((checkpoint(out, TRAINED[-1]) / "config.json").read_text())["vocab_size"]
    for row in claims(results, vocab):
        lines.append(f"{'yes' if row['holds'] else 'NO '}  {row['claim']}: {row['measured']}")
    return "\n".join(lines)


def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
