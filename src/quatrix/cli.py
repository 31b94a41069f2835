"""The `quatrix` command: one entry point, a dict from subcommand to function."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from quatrix.config import MIXERS, PRESETS
from quatrix.precision import PRECISIONS, autocast_context, resolve_precision
from quatrix.validation import float_in, int_at_least, nonnegative_float, nonnegative_int, positive_int
from quatrix.validation import positive_float as positive_float_arg


def cmd_info(args: argparse.Namespace) -> int:
    """Parameter breakdown of a preset (or checkpoint) and one forward pass on random input."""
    import torch

    from quatrix.config import preset
    from quatrix.model import QuatrixLM
    from quatrix.params import count_parameters, parameter_table

    if args.ckpt:
        model = QuatrixLM.from_pretrained(args.ckpt)
        name = args.ckpt
    else:
        overrides = {k: v for k, v in (("mixer", args.mixer), ("q_heads", args.q_heads)) if v is not None}
        if args.savo:
            overrides["q_value_content"] = True
        model = QuatrixLM(preset(args.preset, **overrides))
        name = f"preset {args.preset}"
    cfg = model.config
    counts = count_parameters(model)
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "parameters": counts}, indent=2))
    else:
        print(f"Quatrix model: {name} (mixer={cfg.mixer}, H={cfg.hidden_size}, r={cfg.q_rank}, "
              f"heads={cfg.q_heads}, layers={cfg.num_layers}, SAVO={cfg.q_value_content})")
        print(parameter_table(counts))
    model.eval()
    torch.manual_seed(0)
    input_ids = torch.randint(0, cfg.vocab_size, (1, args.seq_len))
    with torch.no_grad():
        start = time.perf_counter()
        logits = model(input_ids)["logits"]
        text_s = time.perf_counter() - start
        line = f"forward: text {tuple(input_ids.shape)} -> logits {tuple(logits.shape)} in {text_s * 1000:.0f} ms"
        if model.vision is not None:
            pixels = torch.randn(1, cfg.image_channels, cfg.image_size, cfg.image_size)
            start = time.perf_counter()
            logits = model(input_ids, pixel_values=pixels)["logits"]
            line += (f"; text + image {tuple(pixels.shape)} -> logits {tuple(logits.shape)} "
                     f"in {(time.perf_counter() - start) * 1000:.0f} ms")
    if not args.json:
        print(line)
    return 0


def parse_token_ids(text: str, source: str) -> list[int]:
    """'15496 995' or '15496,995' -> [15496, 995] (until a tokenizer exists, prompts are ids)."""
    parts = text.replace(",", " ").split()
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{source} must be token ids separated by spaces or commas, got {text[:60]!r}") from None


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream a continuation of a prompt: text when the checkpoint carries a tokenizer, token
    ids otherwise (or with --ids; a random preset has no tokenizer)."""
    from pathlib import Path

    import torch

    from quatrix.config import preset
    from quatrix.engine import stream
    from quatrix.model import QuatrixLM
    from quatrix.tokenizer import has_tokenizer, load_model_and_tokenizer
    from quatrix.vision import load_image

    text = args.prompt
    media_given = bool(args.image or args.audio)
    if text is None and not args.prompt_file and not media_given:
        raise ValueError("give --prompt or --prompt-file (or --image / --audio)")
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        text = path.read_text()
    torch.manual_seed(args.seed)
    tokenizer = None
    if args.ckpt and has_tokenizer(args.ckpt):
        model, tokenizer = load_model_and_tokenizer(args.ckpt)
    else:
        model = QuatrixLM.from_pretrained(args.ckpt) if args.ckpt else QuatrixLM(preset(args.preset))
    if args.chat and (args.ids or tokenizer is None):
        raise ValueError("--chat needs a checkpoint with a tokenizer (and text, not --ids)")
    if args.ids or tokenizer is None:
        prompt = parse_token_ids(text, "--prompt-file" if args.prompt_file else "--prompt")
    elif args.chat:  # one user turn in the chat format (with the media slots), ready for the answer
        from quatrix.chat import END, render
        from quatrix.tasks.transcribe import INSTRUCTION

        if text is None:
            text = INSTRUCTION if args.audio else "Describe the image."
        media = {key: getattr(args, key) for key in ("image", "audio") if getattr(args, key)}
        prompt = render([{"role": "user", "content": text, **media}], tokenizer, add_generation_prompt=True)[0]
        args.stop_id = [*args.stop_id, tokenizer.token_id(END)]
    else:  # as in pretraining: [media] <|endoftext|> caption or transcript
        prompt = ([tokenizer.eot_id] if media_given else []) + tokenizer.encode(text or "")
        args.stop_id = [*args.stop_id, tokenizer.eot_id]
    media = {}
    if args.image:
        if model.vision is None:
            raise ValueError("--image given but the model has no vision encoder (use_vision=False)")
        media["pixel_values"] = load_image(args.image, model.config.image_size)[None]
    if args.audio:
        from quatrix.data.speech import read_audio

        if model.audio is None:
            raise ValueError("--audio given but the model has no audio encoder (use_audio=False)")
        c = model.config
        media["mel_values"] = read_audio(args.audio, c.sample_rate, c.audio_max_seconds)[None]
    steps = stream(
        model, [prompt], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        stop_token_ids=args.stop_id, num_samples=args.num_samples, truncate=args.truncate,
        generator=torch.Generator().manual_seed(args.seed), **media,
    )
    def show(ids: list[int]) -> str:
        return tokenizer.decode(ids) if tokenizer is not None and not args.ids else " ".join(map(str, ids)) + " "

    rows: list[list[int]] = [[] for _ in range(args.num_samples)]
    shown = ""
    device = str(next(model.parameters()).device)
    with autocast_context(device, resolve_precision(args.precision, device)):
        for tokens, active in steps:
            rows, shown = show_step(tokens, active, rows, shown, args, show)
    if args.num_samples == 1:
        print(show(rows[0])[len(shown):])
    else:
        for i, row in enumerate(rows):
            print(f"[{i}] " + show(row))
    return 0


def show_step(tokens, active, rows, shown, args, show):
    """Append one step's tokens to each sample; stream the single sample's new text."""
    for i, (t, a) in enumerate(zip(tokens.tolist(), active.tolist())):
        if a and t not in args.stop_id:
            rows[i].append(t)
    if args.num_samples == 1:  # decode the sample whole so multi-byte characters survive
        text = show(rows[0])
        if not text.endswith("\ufffd"):
            print(text[len(shown):], end="", flush=True)
            shown = text
    return rows, shown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quatrix", description="Q-Compass language models")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameter breakdown and a forward pass of a preset or checkpoint")
    source = info.add_mutually_exclusive_group()
    source.add_argument("--preset", default="berry-q0", choices=sorted(PRESETS))
    source.add_argument("--ckpt", help="checkpoint directory (config.json + model.safetensors)")
    info.add_argument("--mixer", choices=MIXERS, help="override the preset's mixer")
    info.add_argument("--q-heads", type=positive_int, help="override the number of heads")
    info.add_argument("--savo", action="store_true", help="Q-Compass with Q-value content (SAVO)")
    info.add_argument("--seq-len", type=positive_int, default=10, help="tokens in the test forward pass")
    info.add_argument("--json", action="store_true", help="print config and counts as JSON")

    gen = sub.add_parser("generate", help="stream a continuation of a prompt (token ids for now)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint directory")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a randomly initialised preset (smoke tests)")
    prompt = gen.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="text (or token ids such as '15496 995' without a tokenizer); optional "
                                         "with --image or --audio")
    prompt.add_argument("--prompt-file", help="a file holding the prompt")
    gen.add_argument("--ids", action="store_true", help="the prompt is token ids even if a tokenizer exists")
    gen.add_argument("--image", help="an image file for models with vision")
    gen.add_argument("--audio", help="an audio file (WAV, FLAC, any rate) for models with audio: with no --prompt, "
                                     "the model transcribes it")
    gen.add_argument("--chat", action="store_true",
                     help="send the prompt as a user turn of the chat format and print the assistant's answer "
                          "(for finetuned models)")
    gen.add_argument("--max-new-tokens", type=positive_int, default=64)
    gen.add_argument("--temperature", type=nonnegative_float, default=1.0, help="0 = greedy")
    gen.add_argument("--top-k", type=nonnegative_int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=1.0, help="1.0 = off")
    gen.add_argument("--stop-id", type=nonnegative_int, action="append", default=[], help="stop token id (repeatable)")
    gen.add_argument("--num-samples", type=positive_int, default=1)
    gen.add_argument("--seed", type=nonnegative_int, default=0)
    gen.add_argument("--truncate", action="store_true", help="keep the prompt's last tokens if it is too long")
    gen.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="bf16 autocast for the forward passes (auto: where the device has native bf16)")


    pre = sub.add_parser("pretrain", help="pretrain a language model on text (stage 1)")
    from quatrix.train.pretrain import add_arguments

    add_arguments(pre)

    ev = sub.add_parser("eval", help="perplexity of a checkpoint on a corpus, or its accuracy on a task")
    ev.add_argument("--ckpt", required=True, help="checkpoint directory (with its tokenizer)")
    what = ev.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", action="append", help="named corpus or path (repeatable): perplexity")
    what.add_argument("--task", help="NAME[:key=value,...] (a reasoning-gym task, visual_qa or transcribe): "
                                     "accuracy on its held-out items")
    ev.add_argument("--split", choices=["val", "train", "all"], default="val")
    ev.add_argument("--seq-len", type=int_at_least(2), default=128)
    ev.add_argument("--batch-size", type=positive_int, default=16)
    ev.add_argument("--max-batches", type=positive_int, default=None)
    ev.add_argument("--cache-dir", default=".token_cache")
    ev.add_argument("--n", type=positive_int, default=200, help="--task: held-out items")
    ev.add_argument("--pass-k", type=positive_int, default=None, help="--task: also pass@k from k samples per item")
    ev.add_argument("--temperature", type=positive_float_arg, default=1.0, help="--task: sampling for pass@k")
    ev.add_argument("--max-new-tokens", type=positive_int, default=64, help="--task: tokens per answer")
    ev.add_argument("--seed", type=nonnegative_int, default=0)
    ev.add_argument("--precision", choices=PRECISIONS, default="fp32")
    ev.add_argument("--json", action="store_true")

    sft = sub.add_parser("sft", help="supervised finetuning on conversations (stage 2)")
    from quatrix.train.sft import add_arguments as add_sft_arguments

    add_sft_arguments(sft)

    grpo = sub.add_parser("grpo", help="GRPO on a task with verifiable answers (stage 3)")
    from quatrix.train.grpo import add_arguments as add_grpo_arguments

    add_grpo_arguments(grpo)

    chat = sub.add_parser("chat", help="talk to a checkpoint (one user turn per line from a pipe)")
    chat.add_argument("--ckpt", required=True, help="checkpoint directory (with its tokenizer)")
    chat.add_argument("--system", help="system message")
    chat.add_argument("--max-new-tokens", type=positive_int, default=128)
    chat.add_argument("--temperature", type=nonnegative_float, default=0.7, help="0 = greedy")
    chat.add_argument("--top-k", type=nonnegative_int, default=0, help="0 = off")
    chat.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=0.95, help="1.0 = off")
    chat.add_argument("--seed", type=nonnegative_int, default=0)
    chat.add_argument("--precision", choices=PRECISIONS, default="fp32")

    world = sub.add_parser("world", help="world-model data from gymnasium / MiniGrid environments")
    world_sub = world.add_subparsers(dest="world_command", required=True)
    collect = world_sub.add_parser("collect", help="record transitions of an environment, headless")
    collect.add_argument("--env", required=True, help="a gymnasium id, e.g. MiniGrid-Empty-8x8-v0")
    collect.add_argument("--episodes", type=positive_int, required=True)
    collect.add_argument("--policy", choices=["random"], default="random")
    collect.add_argument("--seed", type=nonnegative_int, default=0)
    collect.add_argument("--image-size", type=int_at_least(8), default=64, help="frames are resized to this square")
    collect.add_argument("--max-steps", type=positive_int, default=None, help="cut episodes at this many steps")
    collect.add_argument("--out", required=True)
    world_train = world_sub.add_parser("train", help="train the world model on a collection")
    from quatrix.train.world import add_arguments as add_world_arguments

    add_world_arguments(world_train)
    world_eval = world_sub.add_parser("eval", help="held-out error, inverse dynamics and the grounded probe (JSON)")
    world_eval.add_argument("--ckpt", required=True, help="a checkpoint with a world model")
    world_eval.add_argument("--data", required=True, help="the collection (its held-out episodes are used)")

    tasks = sub.add_parser("tasks", help="list the tasks eval, sft and grpo accept")
    tasks.add_argument("--show", metavar="TASK", help="print a few training items of TASK[:key=value,...]")

    abl = sub.add_parser("ablate", help="multi-seed comparison of Q-Compass variants against attention")
    from quatrix.train.ablate import add_arguments as add_ablate_arguments

    add_ablate_arguments(abl)

    run = sub.add_parser("run", help="a whole recipe in one command: `quatrix run berry --preset tiny` (tokenizer, "
                                     "pretraining, SFT, GRPO, evaluation, samples, report)")
    from quatrix.train.berry import add_arguments as add_run_arguments

    add_run_arguments(run)

    export = sub.add_parser("export", help="write a checkpoint in another format: `quatrix export hf`")
    export_sub = export.add_subparsers(dest="export_format", required=True)
    hf = export_sub.add_parser("hf", help="a folder that transformers loads (AutoModelForCausalLM, "
                                          "trust_remote_code=True); needs the [hf] extra")
    hf.add_argument("--ckpt", required=True, help="checkpoint directory (with its tokenizer)")
    hf.add_argument("--out", required=True, help="the folder to write (an earlier export there is replaced)")
    hf.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="weights dtype in model.safetensors")

    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP API and a web chat page for a checkpoint "
                                         "(needs the [serve] extra)")
    serve.add_argument("--ckpt", required=True, help="checkpoint directory (with its tokenizer)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=nonnegative_int, default=8000)
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/ (default: none)")
    serve.add_argument("--model-name", help="the model id clients see (default: the checkpoint folder's name)")
    serve.add_argument("--max-batch", type=positive_int, default=16, help="sequences decoded together")
    serve.add_argument("--max-queue", type=nonnegative_int, default=64,
                       help="requests waiting for room beyond which the server answers 429")
    serve.add_argument("--max-tokens", type=positive_int, default=256,
                       help="new tokens per reply when a request does not say")
    serve.add_argument("--max-body-mb", type=positive_float_arg, default=8.0, help="request body limit")
    serve.add_argument("--precision", choices=PRECISIONS, default="fp32")
    serve.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")

    tok = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True)
    train = tok_sub.add_parser("train", help="train on a corpus and save to a directory")
    train.add_argument("--data", action="append", required=True, help="named corpus or path (repeatable)")
    train.add_argument("--vocab-size", type=positive_int, default=4096)
    train.add_argument("--out", required=True)
    return parser


def cmd_pretrain(args: argparse.Namespace) -> int:
    from quatrix.train.pretrain import main as pretrain

    return pretrain(args)


def cmd_ablate(args: argparse.Namespace) -> int:
    from quatrix.train.ablate import main as ablate

    return ablate(args)


def cmd_sft(args: argparse.Namespace) -> int:
    from quatrix.train.sft import main as sft

    return sft(args)


def cmd_grpo(args: argparse.Namespace) -> int:
    from quatrix.train.grpo import main as grpo

    return grpo(args)


def cmd_eval(args: argparse.Namespace) -> int:
    """Perplexity (and bits per byte, comparable across tokenizers) of a checkpoint, or its
    accuracy on a task's held-out items."""
    from quatrix.eval.perplexity import evaluate_checkpoint

    if args.task:
        return eval_task(args)

    result = evaluate_checkpoint(args.ckpt, args.data, args.split, args.seq_len, args.batch_size, args.max_batches,
                                 args.cache_dir)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'+'.join(args.data)} ({args.split}): loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
              f"bits/byte {result['bits_per_byte']:.4f}  over {result['tokens']:,} tokens")
    return 0


def eval_task(args: argparse.Namespace) -> int:
    from quatrix.eval.tasks import evaluate_task
    from quatrix.tasks import task_from_spec
    from quatrix.tokenizer import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.ckpt)
    task = task_from_spec(args.task, args.seed, model.config)
    device = str(next(model.parameters()).device)
    with autocast_context(device, resolve_precision(args.precision, device)):
        result = evaluate_task(model, tokenizer, task, args.n, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, pass_k=args.pass_k, temperature=args.temperature,
                               seed=args.seed, with_baselines=True)
    if args.json:
        print(json.dumps(result))
        return 0
    low, high = result["ci95"]
    base = result["baselines"]
    print(f"{args.task}: accuracy {result['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}) on {args.n} held-out items; "
          f"format {result['format_rate']:.3f}; mean completion {result['mean_completion_tokens']:.1f} tokens")
    blank = "audio" if "audio" in task.media else "images"
    text_only = f"; text only ({blank} zeroed) {base['text_only_accuracy']:.3f}" if "text_only_accuracy" in base else ""
    chance = f"; random transcript {base['chance_accuracy']:.3f}" if "chance_accuracy" in base else ""
    print(f"baselines: majority answer {base['majority_accuracy']:.3f}{text_only}{chance}")
    if "wer" in result:
        print(f"error rates (word / character): model {result['wer']:.3f} / {result['cer']:.3f}; majority "
              f"{base['majority_wer']:.3f} / {base['majority_cer']:.3f}; random transcript {base['chance_wer']:.3f} / "
              f"{base['chance_cer']:.3f}; audio zeroed {base['text_only_wer']:.3f} / {base['text_only_cer']:.3f}")
    if "accuracy_by_kind" in result:
        print(f"  {'kind':>10}  model  {'text only' if text_only else ''}  majority")
        for kind, accuracy in result["accuracy_by_kind"].items():
            blind = f"  {base['text_only_by_kind'][kind]:9.3f}" if text_only else ""
            print(f"  {kind:>10}  {accuracy:5.3f}{blind}  {base['majority_by_kind'][kind]:8.3f}")
    if args.pass_k:
        print(f"pass@{args.pass_k}: {result[f'pass@{args.pass_k}']:.3f} (temperature {args.temperature:g})")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Multi-turn chat: a line is a user turn; /reset, /system TEXT, /image PATH, /audio PATH, /quit. Reads a
    pipe too."""
    from quatrix.session import ChatSession
    from quatrix.tokenizer import has_tokenizer, load_model_and_tokenizer

    if not has_tokenizer(args.ckpt):
        raise FileNotFoundError(f"{args.ckpt}: no tokenizer saved beside the model; chat needs one")
    model, tokenizer = load_model_and_tokenizer(args.ckpt)
    session = ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    interactive = sys.stdin.isatty()
    device = str(next(model.parameters()).device)
    if interactive:
        print("quatrix chat: /reset clears the conversation, /system TEXT sets the system message, /image PATH and "
              "/audio PATH send an image or a clip with the next message, /quit leaves")
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            session.reset()
            print("(conversation cleared)")
            continue
        if line.startswith("/system"):
            session.set_system(line[len("/system"):])
            session.reset()
            print(f"(system message {'set' if session.system else 'cleared'}; conversation cleared)")
            continue
        command = line.split()[0]
        if command in ("/image", "/audio"):
            try:
                attach = session.attach_image if command == "/image" else session.attach_audio
                attach(line[len(command):].strip())
                print(f"({command[1:]} attached to your next message)")
            except (ValueError, FileNotFoundError) as e:
                print(f"(error: {e})")
            continue
        if line.startswith("/"):
            print(f"(unknown command {command}; try /reset, /system TEXT, /image PATH, /audio PATH, /quit)")
            continue
        if interactive:
            print("quatrix> ", end="", flush=True)
        try:
            with autocast_context(device, resolve_precision(args.precision, device)):
                for piece in session.reply(line):
                    print(piece, end="", flush=True)
        except ValueError as e:
            print(f"(error: {e})", end="")
        print(flush=True)


def cmd_tasks(args: argparse.Namespace) -> int:
    from quatrix.tasks import task_from_spec, task_names

    if not args.show:
        print("\n".join(task_names()))
        return 0
    task = task_from_spec(args.show)
    index = 0
    for _ in range(3):
        item, index = task.train_item(index)
        print(f"Q: {item.question}\nA: {task.target(item)}\n")
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from quatrix.data.world import WorldData, collect

    if args.world_command == "train":
        from quatrix.train.world import main as train_world

        return train_world(args)
    if args.world_command == "eval":
        from quatrix.eval.world import evaluate_world
        from quatrix.model import QuatrixLM

        model = QuatrixLM.from_pretrained(args.ckpt)
        if model.world is None:
            raise ValueError(f"{args.ckpt} has no world model (train one with `quatrix world train`)")
        print(json.dumps(evaluate_world(model.world, WorldData(args.data)), indent=2))
        return 0

    with tqdm(total=args.episodes, desc="collect", unit="episode") as bar:
        manifest = collect(args.env, args.episodes, args.out, seed=args.seed, policy=args.policy,
                           image_size=args.image_size, max_steps=args.max_steps,
                           progress=lambda done: bar.update(done - bar.n))
    print(f"{args.env}: {manifest['episodes']} episodes, {manifest['transitions']:,} transitions in "
          f"{len(manifest['shards'])} shard(s) -> {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from quatrix.train.berry import main as run_berry

    return run_berry(args)


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from quatrix.hf.export import export_hf
    except ImportError as e:
        raise ValueError(f"export hf needs transformers: pip install 'quatrix[hf]' ({e})") from None
    out = export_hf(args.ckpt, args.out, dtype=args.dtype)
    print(f"wrote {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from quatrix.serve.main import main as serve

    return serve(args)


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from quatrix.data.text import read_documents
    from quatrix.tokenizer import train_tokenizer

    docs = [doc for source in args.data for doc in read_documents(source)]
    tok = train_tokenizer(docs, args.vocab_size, args.out)
    sample = docs[0][:60]
    print(f"trained a {tok.vocab_size}-token byte-level BPE on {len(docs)} documents -> {args.out}")
    print(f"{sample!r} -> {len(tok.encode(sample))} tokens")
    return 0


COMMANDS = {"info": cmd_info, "generate": cmd_generate, "pretrain": cmd_pretrain, "eval": cmd_eval,
            "tokenizer": cmd_tokenizer, "ablate": cmd_ablate, "sft": cmd_sft, "grpo": cmd_grpo, "chat": cmd_chat,
            "tasks": cmd_tasks, "world": cmd_world, "run": cmd_run, "export": cmd_export, "serve": cmd_serve}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse; options from a `--config FILE.json` become defaults that flags override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            parser.error(f"config file not found: {path}")
        try:
            options = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            parser.error(f"{path}: not valid JSON ({e})")
        known = vars(args)
        unknown = sorted(k for k in options if k.replace("-", "_") not in known)
        if unknown:
            parser.error(f"{path}: unknown option(s) {', '.join(unknown)}")
        subparser = parser._subparsers._group_actions[0].choices[args.command]
        subparser.set_defaults(**{k.replace("-", "_"): v for k, v in options.items()})
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"quatrix {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: no traceback; training stages continue with --resume
        print(f"\nquatrix {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
