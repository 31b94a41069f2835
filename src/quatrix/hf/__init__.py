"""Hugging Face `transformers` interop: `quatrix export hf` (export.py) writes a folder that
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` loads.

configuration_quatrix.py and modeling_quatrix.py are copied into every exported folder with
the model code they import, so the folder works without Quatrix installed. Nothing here
imports `transformers` until those modules are imported (the `[hf]` extra)."""
