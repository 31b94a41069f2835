"""Finetuning the `transformers` export with the libraries people use: transformers' own
training switches, PEFT LoRA on every linear layer, and TRL's SFTTrainer and GRPOTrainer
(which score tokens from the backbone's hidden states and the output head)."""

import os

import pytest

pytest.importorskip("transformers", reason="the [hf] extra is not installed")
pytest.importorskip("peft", reason="the [hf] extra (peft, trl) is not installed")
pytest.importorskip("trl", reason="the [hf] extra (peft, trl) is not installed")

import torch  # noqa: E402

from conftest import tiny_config  # noqa: E402
from quatrix import QuatrixLM  # noqa: E402
from quatrix.hf.export import export_hf  # noqa: E402
from quatrix.tokenizer import train_tokenizer  # noqa: E402

TEXT = "hello there, how are you today? I am fine. What is 3 + 4? 7."


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    root = tmp_path_factory.mktemp("finetune")
    tokenizer = train_tokenizer([TEXT] * 20, 300)
    torch.manual_seed(0)
    QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=128)).save_pretrained(root / "ckpt")
    tokenizer.save(root / "ckpt")
    return export_hf(root / "ckpt", root / "hf")


def load(export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True),
            AutoTokenizer.from_pretrained(export))


def batch(tokenizer):
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]] * 2)
    return {"input_ids": ids, "labels": ids}


def test_the_training_switches_of_transformers(export):
    model, tokenizer = load(export)
    assert model.supports_gradient_checkpointing and not model.is_gradient_checkpointing
    assert model.num_parameters() == sum(p.numel() for p in model.model.parameters())
    model.train()
    plain = torch.autograd.grad(model(**batch(tokenizer)).loss, model.model.token_emb.weight)[0]
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing and model.model.config.use_gradient_checkpointing  # Quatrix's own
    recomputed = torch.autograd.grad(model(**batch(tokenizer)).loss, model.model.token_emb.weight)[0]
    assert torch.allclose(plain, recomputed, atol=1e-6)
    model.gradient_checkpointing_disable()
    assert not model.model.config.use_gradient_checkpointing
    vocab = model.config.vocab_size
    assert model.resize_token_embeddings(vocab) is model.get_input_embeddings()
    with pytest.raises(ValueError, match=f"cannot resize its {vocab}-token vocabulary to {vocab + 8}"):
        model.resize_token_embeddings(vocab + 8)


def test_lora_on_every_linear_trains_only_adapters_then_merges_and_reloads(export, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model, tokenizer = load(export)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora = get_peft_model(model, LoraConfig(target_modules="all-linear", r=4, lora_alpha=8))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} >= {"state_proj", "action_proj", "out_proj"}  # W_s, W_a, W_o
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    lora.train()
    losses = []
    for _ in range(8):
        loss = lora(**batch(tokenizer)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    count = sum(p.numel() for n, p in lora.named_parameters() if p.requires_grad)
    print(f"LoRA: {count:,} trainable of {sum(p.numel() for p in lora.parameters()):,}; "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in 8 steps")
    merged = lora.merge_and_unload()
    assert all(torch.equal(before[n], p) for n, p in merged.named_parameters() if "head" in n or "emb" in n)
    assert any(not torch.equal(before[n], p) for n, p in merged.named_parameters())  # the adapters were merged in
    merged.eval()
    prompt = torch.tensor([tokenizer("hello there")["input_ids"]])
    generated = merged.generate(prompt, max_new_tokens=5, do_sample=False)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(prompt).logits, merged(prompt).logits, atol=1e-6)
    assert torch.equal(reloaded.generate(prompt, max_new_tokens=5, do_sample=False), generated)


def test_trl_sft_trainer_lowers_the_loss(export, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load(export)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4, learning_rate=1e-2,
                     max_length=32, gradient_checkpointing=True, use_cpu=True, bf16=False, logging_steps=1,
                     save_strategy="no", report_to="none", disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": [TEXT] * 32}),
                         processing_class=tokenizer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0]
    print(f"SFTTrainer: loss {losses[0]:.3f} -> {losses[-1]:.3f} in 8 steps")


def test_trl_grpo_trainer_runs_with_a_rule_reward(export, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = load(export)
    seen = []

    def has_seven(completions, **_):
        seen.extend(completions)
        return [float("7" in c) for c in completions]

    args = GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, learning_rate=1e-3, use_cpu=True, bf16=False, logging_steps=1,
                      save_strategy="no", report_to="none", disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[has_seven], args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": ["What is 3 + 4?"] * 8}))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "entropy" in h]
    assert len(logged) == 2 and len(seen) == 2 * 4 and all(isinstance(c, str) for c in seen)
