"""The chunked loss: equal to the plain one (loss and gradients), never whole logits."""

import pytest
import torch

from quatrix import QuatrixConfig, QuatrixLM
from quatrix.loss import chunk_rows, head_loss, next_token_loss, token_logprobs


def plain(hidden, weight, labels, reduction, temperature=None):
    logits = hidden @ weight.T
    if temperature is None:
        return next_token_loss(logits, labels, reduction)
    return -token_logprobs(logits[:, :-1], labels[:, 1:], temperature)[0]


def inputs(B=3, L=9, H=8, V=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[0, 3:6] = -100
    labels[2, -1] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("reduction, temperature", [("mean", None), ("sum", None), ("none", None), ("none", 0.7)])
def test_chunked_loss_and_gradients_equal_the_plain_path(reduction, temperature):
    hidden, weight, labels = inputs()
    chunk_bytes = 4 * 37 * 5  # 5 positions per chunk: 24 positions in 5 chunks, the last short
    assert chunk_rows(37, chunk_bytes) == 5
    got = head_loss(hidden, weight, labels, reduction, temperature, chunk_bytes=chunk_bytes)
    want = plain(hidden, weight, labels, reduction, temperature)
    torch.testing.assert_close(got["loss"].double(), want.double(), rtol=1e-6, atol=1e-6)
    probe = torch.randn_like(want, dtype=torch.float64)  # an arbitrary upstream gradient
    g_got = torch.autograd.grad((got["loss"].double() * probe).sum(), (hidden, weight))
    g_want = torch.autograd.grad((want.double() * probe).sum(), (hidden, weight))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    if reduction == "none":
        assert (got["loss"][0, 2:5] == 0).all()  # ignored labels 3..5 are predicted at 2..4
    if temperature is not None:
        logp = torch.log_softmax(hidden[:, :-1] @ weight.T / temperature, -1)
        torch.testing.assert_close(got["entropy"].double(), -(logp.exp() * logp).sum(-1), rtol=1e-6, atol=1e-6)
        assert not got["entropy"].requires_grad


def test_one_chunk_takes_the_plain_path_bit_for_bit():
    hidden, weight, labels = inputs()
    got = head_loss(hidden, weight, labels, "none")
    assert torch.equal(got["loss"], plain(hidden, weight, labels, "none"))


def test_the_models_loss_is_chunked_under_bf16_autocast(monkeypatch):
    torch.manual_seed(0)
    model = QuatrixLM(QuatrixConfig(vocab_size=300, hidden_size=32, num_layers=1, q_rank=8, max_seq_len=32))
    ids = torch.randint(0, 300, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole = model(ids, labels=ids, return_logits=True)
        monkeypatch.setattr("quatrix.loss.CHUNK_BYTES", 4 * 300 * 7)  # seven positions per chunk
        out = model(ids, labels=ids)
    assert out["logits"] is None and whole["logits"].shape == (2, 16, 300)
    torch.testing.assert_close(out["loss"], whole["loss"], rtol=2e-3, atol=2e-3)
    out["loss"].backward()
    assert model.head.weight.grad is not None and torch.isfinite(model.head.weight.grad).all()


def test_a_temperature_needs_per_token_losses():
    hidden, weight, labels = inputs()
    with pytest.raises(ValueError, match="loss_reduction='none'"):
        head_loss(hidden, weight, labels, "mean", temperature=0.5)
