import math

import pytest
import torch
from torch.testing import assert_close

from conftest import MIXER_VARIANTS, tiny_config
from quatrix import QuatrixBlock, QuatrixConfig, QuatrixLM


def test_published_quick_start_runs():
    cfg = QuatrixConfig(vocab_size=50257, hidden_size=512, num_layers=7, max_seq_len=5120, q_rank=64, use_vision=True)
    model = QuatrixLM(cfg)
    input_ids = torch.randint(0, 50257, (1, 10))
    with torch.no_grad():
        assert model(input_ids)["logits"].shape == (1, 10, 50257)
        out = model(input_ids, pixel_values=torch.randn(1, 3, 224, 224))
    assert out["logits"].shape == (1, 10, 50257) and out["loss"] is None
    assert 49e6 < model.num_parameters() < 51e6


@pytest.mark.parametrize("name, overrides", MIXER_VARIANTS)
def test_every_mixer_sits_in_the_same_block(name, overrides):
    model = QuatrixLM(tiny_config(**overrides))
    block = model.blocks[0]
    assert isinstance(block, QuatrixBlock)
    expected = "MultiHeadAttention" if overrides["mixer"].startswith("mha") else "QCompass"
    assert type(block.mixer).__name__ == expected
    ids = torch.randint(0, 97, (2, 12))
    out = model(ids, labels=ids, return_logits=True)
    assert out["logits"].shape == (2, 12, 97) and torch.isfinite(out["loss"])


@pytest.mark.parametrize("name, overrides", MIXER_VARIANTS)
def test_causality_of_the_whole_model(name, overrides):
    model = QuatrixLM(tiny_config(**overrides)).eval()
    ids = torch.randint(0, 97, (1, 16))
    changed = ids.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 97
    a, b = model(ids)["logits"], model(changed)["logits"]
    assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_initial_loss_is_log_vocab():
    cfg = tiny_config(vocab_size=5000, hidden_size=64)
    model = QuatrixLM(cfg)
    ids = torch.randint(0, 5000, (4, 32))
    loss = model(ids, labels=ids)["loss"].item()
    assert abs(loss - math.log(5000)) < 0.1, loss


@pytest.mark.parametrize("name, overrides", [v for v in MIXER_VARIANTS if v[0] in ("qcompass", "savo", "mha")])
def test_tiny_model_overfits_one_batch(name, overrides):
    model = QuatrixLM(tiny_config(**overrides))
    ids = torch.randint(0, 97, (2, 24))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model(ids, labels=ids)["loss"]
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


def test_loss_reductions_and_ignore_index():
    model = QuatrixLM(tiny_config())
    ids = torch.randint(0, 97, (2, 10))
    labels = ids.clone()
    labels[0, :5] = -100
    out = model(ids, labels=labels, loss_reduction="none", return_logits=True)
    per_token = out["loss"]
    assert per_token.shape == (2, 9)
    assert (per_token[0, :4] == 0).all() and (per_token[0, 4:] > 0).all()
    mean = model(ids, labels=labels)["loss"]
    assert_close(mean, per_token.sum() / (labels[:, 1:] != -100).sum())
    manual = torch.nn.functional.cross_entropy(out["logits"][1, :-1], ids[1, 1:], reduction="sum")
    assert_close(per_token[1].sum(), manual)


@pytest.mark.parametrize("name, overrides", MIXER_VARIANTS)
def test_left_padded_batch_matches_unpadded_rows(name, overrides):
    model = QuatrixLM(tiny_config(**overrides)).eval()
    short, long = torch.randint(0, 97, (1, 6)), torch.randint(0, 97, (1, 11))
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 5), torch.ones(1, 6)], 1), torch.ones(1, 11)]).long()
    logits = model(batch, attention_mask=mask)["logits"]
    assert_close(logits[0, 5:], model(short)["logits"][0], rtol=1e-4, atol=1e-5)
    assert_close(logits[1], model(long)["logits"][0], rtol=1e-4, atol=1e-5)


def test_image_and_audio_prefix():
    model = QuatrixLM(tiny_config(use_vision=True, use_audio=True)).eval()
    ids = torch.randint(0, 97, (2, 7))
    pixels, wave = torch.randn(2, 3, 32, 32), torch.randn(2, 8000)
    text_only = model(ids)["logits"]
    with_image = model(ids, pixel_values=pixels)["logits"]
    both = model(ids, pixel_values=pixels, mel_values=wave, labels=ids, return_logits=True)
    assert with_image.shape == both["logits"].shape == (2, 7, 97)
    assert not torch.allclose(text_only, with_image)  # the text does see the image
    assert not torch.allclose(with_image, both["logits"])
    # and the prefix composes with left padding
    mask = torch.ones(2, 7, dtype=torch.long)
    assert_close(model(ids, pixel_values=pixels, attention_mask=mask)["logits"], with_image, rtol=1e-4, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 97, (2, 10))
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = QuatrixLM(tiny_config(use_gradient_checkpointing=flag))
        model(ids, labels=ids)["loss"].backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert_close(a, b)


def test_tied_head():
    model = QuatrixLM(tiny_config())
    assert model.head.weight is model.token_emb.weight
    untied = QuatrixLM(tiny_config(tie_embeddings=False))
    assert untied.head.weight is not untied.token_emb.weight


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.randint(0, 97, (1, 65))), "longer than max_seq_len=64"),
        (lambda m: m(torch.tensor([[1, 2, 97]])), "token id 97, outside the vocabulary"),
        (lambda m: m(torch.tensor([[1, -3, 2]])), "token id -3"),
        (lambda m: m(torch.ones(1, 4)), "input_ids must be an integer tensor"),
        (lambda m: m(torch.ones(4, dtype=torch.long)), "input_ids must be 2-D"),
        (lambda m: m(torch.ones(1, 0, dtype=torch.long)), "input_ids is empty"),
        (lambda m: m(torch.ones(1, 4, dtype=torch.long), labels=torch.ones(1, 5, dtype=torch.long)), "labels has shape"),
        (lambda m: m(torch.ones(1, 4, dtype=torch.long), labels=torch.full((1, 4), 500)), "labels contains 500"),
        (lambda m: m(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3)), "attention_mask has shape"),
        (lambda m: m(torch.ones(1, 4, dtype=torch.long), loss_reduction="max"), "loss_reduction"),
        (lambda m: m(torch.ones(1, 4, dtype=torch.long), pixel_values=torch.randn(1, 3, 32, 32)), "no vision encoder"),
        (lambda m: m(torch.ones(1, 4, dtype=torch.long), mel_values=torch.randn(1, 800)), "no audio encoder"),
    ],
)
def test_bad_text_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(QuatrixLM(tiny_config()))


def test_not_a_config():
    with pytest.raises(ValueError, match="needs a QuatrixConfig"):
        QuatrixLM({"hidden_size": 8})
