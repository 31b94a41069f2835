"""`quatrix export hf`: the folder loads in `transformers` without Quatrix installed, its
logits equal ours, generate() equals quatrix.engine and decodes with Quatrix's own cache."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.chat import render
from quatrix.engine import cache_floats_per_token, generate, left_pad
from quatrix.tokenizer import train_tokenizer

pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")

from quatrix.hf.export import CHAT_TEMPLATE, export_hf  # noqa: E402

TEXTS = ["hello there, how are you today? I am fine. 12 + 34 = 46 <think> ok </think>"] * 20
VARIANTS = {"qcompass": {}, "savo": dict(q_value_content=True, q_heads=2), "mha": dict(mixer="mha", q_heads=4),
            "vision": dict(use_vision=True)}
PROMPTS = [[5, 9, 40, 77, 3], [12, 100], [7, 8, 9, 10, 11, 12, 13, 14]]

# Runs in a child process where `import quatrix` fails: the folder must be self-contained.
CHILD = textwrap.dedent("""
    import importlib.abc, json, sys
    class NoQuatrix(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "quatrix":
                raise ImportError("quatrix is blocked in this test")
    sys.meta_path.insert(0, NoQuatrix())
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    results = {}
    for name, folder in json.loads(sys.argv[1]).items():
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        tok = PreTrainedTokenizerFast.from_pretrained(folder)
        prompts = json.loads(sys.argv[2])
        width = max(map(len, prompts))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        extra = {}
        if model.config.quatrix["use_vision"]:
            size = model.config.quatrix["image_size"]
            extra["pixel_values"] = torch.linspace(-1, 1, len(prompts) * 3 * size * size).view(len(prompts), 3, size, size)
        with torch.no_grad():
            logits = model(ids, attention_mask=mask, use_cache=False, **extra).logits
        fed = []
        inner = model.model.forward
        def spy(input_ids, **kw):
            fed.append(input_ids.shape[1])
            return inner(input_ids, **kw)
        model.model.forward = spy
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None,
                             return_dict_in_generate=True, **extra)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        layer = cache.layers[0]
        results[name] = dict(
            logits=logits[mask.bool()].tolist(), tokens=out.sequences[:, width:].tolist(), fed=fed,
            cache_class=type(cache).__name__,
            floats_per_token=layer.keys.shape[1] * layer.keys.shape[3] + layer.contents.shape[1] * layer.contents.shape[3],
            template=tok.apply_chat_template(json.loads(sys.argv[3]), add_generation_prompt=True, tokenize=True,
                                             return_dict=False),
        )
    print(json.dumps(results))
""")

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"},
                {"role": "assistant", "content": "<think> ok </think> fine"}, {"role": "user", "content": "12 + 34"}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tokenizer = train_tokenizer(TEXTS, 300)
    models, folders = {}, {}
    for name, overrides in VARIANTS.items():
        torch.manual_seed(0)
        model = QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=32, **overrides)).eval()
        model.save_pretrained(root / name)
        tokenizer.save(root / name)
        folders[name] = str(export_hf(root / name, root / f"{name}-hf"))
        models[name] = model
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(folders), json.dumps(PROMPTS),
                            json.dumps(CONVERSATION)], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    return models, tokenizer, json.loads(child.stdout.strip().splitlines()[-1])


def _pixels(model, n):
    size = model.config.image_size
    return torch.linspace(-1, 1, n * 3 * size * size).view(n, 3, size, size)


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_and_greedy_tokens_match_quatrix(exported, name):
    models, _, results = exported
    model, result = models[name], results[name]
    ids, mask = left_pad(PROMPTS)
    extra = {"pixel_values": _pixels(model, len(PROMPTS))} if model.config.use_vision else {}
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, **extra)["logits"][mask.bool()]
    torch.testing.assert_close(torch.tensor(result["logits"]), ours, rtol=0, atol=1e-5)
    engine = generate(model, PROMPTS, 6, temperature=0, **extra)
    assert result["tokens"] == engine.tokens


@pytest.mark.parametrize("name", VARIANTS)
def test_generate_uses_the_quatrix_cache(exported, name):
    """One prefill of the prompts, then one token per step, through a cache whose layout is
    the mixer's own: H + r floats per token for Q-Compass, 2r for SAVO, 2H for attention."""
    models, _, results = exported
    result = results[name]
    assert result["cache_class"] == "QuatrixGenerationCache"
    assert result["fed"] == [max(map(len, PROMPTS))] + [1] * 5
    assert result["floats_per_token"] == cache_floats_per_token(models[name].config)
    config = models[name].config
    expected = {"qcompass": config.hidden_size + config.q_rank, "savo": 2 * config.q_rank,
                "mha": 2 * config.hidden_size, "vision": config.hidden_size + config.q_rank}[name]
    assert result["floats_per_token"] == expected


def test_chat_template_renders_the_quatrix_chat_format(exported):
    _, tokenizer, results = exported
    ids, _ = render(CONVERSATION, tokenizer, add_generation_prompt=True)
    assert results["qcompass"]["template"] == ids


def test_chat_template_puts_image_parts_where_quatrix_puts_the_image_slot():
    from jinja2 import Template

    messages = [{"role": "user", "content": [{"type": "text", "text": "what is it?"},
                                             {"type": "image_url", "image_url": {"url": "data:..."}}]}]
    text = Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    assert text == "<|user|><|image|>what is it?<|end|><|assistant|>"


def test_export_writes_a_complete_folder_and_refuses_foreign_targets(exported, tmp_path):
    _, tokenizer, _ = exported
    model = QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size))
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save(tmp_path / "ckpt")
    out = export_hf(tmp_path / "ckpt", tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_quatrix.QuatrixForCausalLM"
    assert config["quatrix"]["hidden_size"] == model.config.hidden_size
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                 "modeling_quatrix.py", "qcompass.py", "README.md"):
        assert (out / name).is_file(), name
    assert "from quatrix" not in "".join(p.read_text() for p in out.glob("*.py"))
    export_hf(tmp_path / "ckpt", tmp_path / "out")  # an earlier export is replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier Quatrix export"):
        export_hf(tmp_path / "ckpt", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="not found"):
        export_hf(tmp_path / "nowhere", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("kind", ["bpe", "gpt2"])
def test_reasoning_tags_survive_decoding_without_special_tokens(tmp_path, kind):
    """Pipelines and lm-evaluation-harness decode with skip_special_tokens=True: the
    reasoning tags are content and stay (as in `quatrix serve`'s text), the turn tokens go."""
    from transformers import PreTrainedTokenizerFast

    from quatrix.tokenizer import GPT2Tokenizer

    tokenizer = train_tokenizer(TEXTS, 300) if kind == "bpe" else GPT2Tokenizer()
    QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, hidden_size=16, q_rank=8, num_layers=1)).save_pretrained(
        tmp_path / "ckpt")
    tokenizer.save(tmp_path / "ckpt")
    hf = PreTrainedTokenizerFast.from_pretrained(export_hf(tmp_path / "ckpt", tmp_path / "hf"))
    reply = "<think>1 + 2 = 3</think><answer>3</answer>"
    ids = hf.encode(reply + "<|end|>", add_special_tokens=False)
    assert ids == tokenizer.encode(reply + "<|end|>", allow_special=True)
    assert [tokenizer.special[t] for t in ("<think>", "</think>", "<answer>", "</answer>", "<|end|>")] == [
        i for i in ids if i in tokenizer.special.values()]  # every tag one token, with Quatrix's id
    assert hf.decode(ids, skip_special_tokens=True) == reply
    assert hf.decode(ids) == reply + "<|end|>"


def test_gpt2_tokenizer_export_encodes_like_quatrix(tmp_path):
    """GPT-2's tiktoken ranks, converted by transformers: same ids, special tokens included."""
    from transformers import PreTrainedTokenizerFast

    from quatrix.tokenizer import GPT2Tokenizer

    tokenizer = GPT2Tokenizer()
    model = QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, hidden_size=16, q_rank=8, num_layers=1))
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save(tmp_path / "ckpt")
    out = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf = PreTrainedTokenizerFast.from_pretrained(out)
    text = "Hello world, ROMEO. 12 + 34 = 46 — naïve café"
    assert hf.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    assert hf.decode(tokenizer.encode(text)) == text
    ids, _ = render(CONVERSATION, tokenizer, add_generation_prompt=True)
    assert hf.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True, return_dict=False) == ids
