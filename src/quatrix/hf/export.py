"""`quatrix export hf`: a Quatrix checkpoint -> a folder that `transformers` loads.

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
    AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)   # or PreTrainedTokenizerFast.from_pretrained(DIR)

(AutoTokenizer reads config.json, whose class is remote code: without trust_remote_code it
asks, then falls back to a plain config; PreTrainedTokenizerFast never looks.)

The folder holds config.json (with `auto_map`), model.safetensors (the QuatrixLM weights
under `model.`), generation_config.json, the tokenizer (tokenizer.json and
tokenizer_config.json, with the chat format as a chat template), the modeling code and the
Quatrix modules it imports (imports made relative, so no Quatrix install is needed), and a
README. It is built beside DIR and renamed into place: a failed export leaves nothing
half-written.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from quatrix.chat import END, MEDIA, REASONING_TAGS
from quatrix.io import atomic_write_json, atomic_write_text, fsync_dir
from quatrix.pretrained import load_model_and_tokenizer
from quatrix.tokenizer import EOT

PACKAGE = Path(__file__).resolve().parents[1]  # src/quatrix
ENTRY_MODULES = ("hf/configuration_quatrix.py", "hf/modeling_quatrix.py")
_IMPORT = re.compile(r"^(\s*)from quatrix\.(?:hf\.)?(\w+) import", re.MULTILINE)

# The one chat format of quatrix.chat, in Jinja: role token, media slots (OpenAI-style
# content parts), the content, <|end|>. Tested against quatrix.chat.render.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] in ['image', 'image_url'] -%}"
    + MEDIA["image"] + "{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] in ['audio', 'input_audio'] -%}"
    + MEDIA["audio"] + "{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- '" + END + "' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


def module_closure() -> dict[str, str]:
    """File name -> source of the modeling code and every Quatrix module it imports (at any
    depth, lazy imports included), with `from quatrix.x import` made `from .x import`."""
    files: dict[str, str] = {}
    todo = [PACKAGE / m for m in ENTRY_MODULES]
    while todo:
        path = todo.pop()
        if path.name in files:
            continue
        source = path.read_text()
        files[path.name] = _IMPORT.sub(r"\1from .\2 import", source)
        for name in _IMPORT.findall(source):
            hf_path, core_path = PACKAGE / "hf" / f"{name[1]}.py", PACKAGE / f"{name[1]}.py"
            todo.append(hf_path if hf_path.is_file() else core_path)
    return files


def export_hf(ckpt: str | Path, out: str | Path, *, dtype: str = "float32") -> Path:
    """Write the `transformers` folder for checkpoint `ckpt` to `out` (see the module doc).

    An existing `out` is replaced only if it is an earlier export (its config.json says
    model_type "quatrix"); anything else there is refused, never deleted."""
    import torch
    from safetensors.torch import save_file

    from quatrix.hf.configuration_quatrix import QuatrixHFConfig

    out = Path(out)
    _check_target(out)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unknown dtype {dtype!r}; choose float32, bfloat16 or float16")
    model, tokenizer = load_model_and_tokenizer(ckpt)
    config = model.config
    stops = [tokenizer.token_id(END), tokenizer.eot_id]
    tmp = out.parent / f".{out.name}.export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        hf_config = QuatrixHFConfig.from_quatrix(
            config, architectures=["QuatrixForCausalLM"], dtype=dtype,
            auto_map={"AutoConfig": "configuration_quatrix.QuatrixHFConfig",
                      "AutoModelForCausalLM": "modeling_quatrix.QuatrixForCausalLM"},
            bos_token_id=None, eos_token_id=stops, pad_token_id=tokenizer.eot_id,
        )
        atomic_write_text(tmp / "config.json", hf_config.to_json_string())
        atomic_write_json(tmp / "generation_config.json", {
            "eos_token_id": stops, "pad_token_id": tokenizer.eot_id, "do_sample": False,
        })
        state = {f"model.{k}": v.detach().to(getattr(torch, dtype)).cpu().contiguous()
                 for k, v in model.state_dict().items() if not (config.tie_embeddings and k == "head.weight")}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "library": "quatrix"})
        _write_tokenizer(tokenizer, tmp, config.max_seq_len)
        for name, source in module_closure().items():
            atomic_write_text(tmp / name, source)
        atomic_write_text(tmp / "README.md", _model_card(ckpt, config, model.num_parameters()))
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        try:
            earlier = json.loads((out / "config.json").read_text()).get("model_type") == "quatrix"
        except (OSError, ValueError, AttributeError):
            earlier = False
        if not earlier:
            raise FileExistsError(f"{out} is not empty and is not an earlier Quatrix export; "
                                  f"choose another --out (nothing was written)")


def _replace(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an earlier export at out is moved aside first, then removed."""
    old = out.parent / f".{out.name}.export-old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _write_tokenizer(tokenizer, directory: Path, max_len: int) -> None:
    """tokenizer.json (our BPE as is; GPT-2's tiktoken ranks converted by `transformers`)
    and tokenizer_config.json with the chat template. Left padding, as Quatrix batches.

    The reasoning tags (<think>, <answer>, ...) stay single tokens but are content, not
    special: `decode(..., skip_special_tokens=True)`, which generation pipelines and
    lm-evaluation-harness use, keeps them, as `quatrix serve` does."""
    if tokenizer.kind == "bpe":
        text = tokenizer._tok.to_str()
    else:
        from transformers.convert_slow_tokenizer import TikTokenConverter

        from quatrix.tokenizer import GPT2_PATTERN, gpt2_ranks_path

        text = TikTokenConverter(vocab_file=str(gpt2_ranks_path()), pattern=GPT2_PATTERN,
                                 extra_special_tokens=list(tokenizer.special)).converted().to_str()
    spec = json.loads(text)
    for token in spec.get("added_tokens", []):
        if token["content"] in REASONING_TAGS:
            token["special"] = False
    atomic_write_json(directory / "tokenizer.json", spec)
    atomic_write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None, "eos_token": END, "pad_token": EOT, "unk_token": None,
        "padding_side": "left", "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": [t for t in tokenizer.special if t not in (END, EOT, *REASONING_TAGS)],
        "chat_template": CHAT_TEMPLATE,
    })


def _model_card(ckpt, config, n_params: int) -> str:
    mixer = "SAVO" if config.q_value_content else config.mixer
    return f"""# Quatrix model (exported from `{Path(ckpt).name}`)

{n_params:,} parameters; sequence mixer `{mixer}`, {config.num_layers} layers, H={config.hidden_size},
r={config.q_rank}, context {config.max_seq_len} tokens{', vision' if config.use_vision else ''}\
{', audio' if config.use_audio else ''}.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(PATH, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)
ids = tokenizer.apply_chat_template([{{"role": "user", "content": "Hello"}}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=32)
print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
```

The modeling code here is Quatrix's own (`modeling_quatrix.py` and the modules it imports);
`generate()` decodes with Quatrix's cache. Exported with `quatrix export hf`.
"""
