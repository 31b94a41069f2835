import math

import pytest
import torch
from torch.testing import assert_close

import quatrix.qcompass as qc
from quatrix import QCompass, QCompassBi
from quatrix.qcompass import route, routing_mask
from quatrix.variants import VARIANTS as REGISTRY

VARIANTS = [  # (heads, SAVO) of every Q-Compass form in the registry
    (4 if v.multi_head else 1, v.savo) for v in REGISTRY.values() if v.mixer == "qcompass"
]
IMPLS = ["sdpa", "matmul", "chunked"]


@pytest.fixture
def small_chunks(monkeypatch):
    """Force several query blocks in the chunked path, so causal block skipping is exercised."""
    monkeypatch.setattr(qc, "_chunk_size", lambda keys: 16)


def left_padding_mask(B, L):
    lengths = torch.tensor([L, L - 7, 3])[:B]
    return (torch.arange(L)[None, :] >= (L - lengths)[:, None]).long()  # [B, L], 1 = real


@pytest.mark.parametrize("heads, savo", VARIANTS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_fast_paths_match_reference(heads, savo, causal, padded, impl, small_chunks):
    B, L, H, r = 3, 50, 32, 16
    m = QCompass(H, r, heads, savo, causal=causal).double()
    x = torch.randn(B, L, H, dtype=torch.float64, requires_grad=True)
    mask = routing_mask(left_padding_mask(B, L), causal) if padded else None
    out = m(x, mask, impl=impl)
    ref = m.forward_reference(x, mask)
    assert_close(out, ref, rtol=1e-9, atol=1e-10)
    # gradients through every path, including the chunked path's hand-written backward
    probe = torch.randn_like(ref)
    grads = torch.autograd.grad((out * probe).sum(), [x, *m.parameters()])
    grads_ref = torch.autograd.grad((ref * probe).sum(), [x, *m.parameters()])
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g, g_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("tokens", [3, 40])  # below and above r: W_c then W_o, or folded W_o·W_c
def test_savo_output_both_orders(heads, tokens):
    m = QCompass(32, 16, heads, q_value_content=True).double()
    x = torch.randn(1, tokens, 32, dtype=torch.float64)
    assert_close(m(x), m.forward_reference(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("heads, savo", VARIANTS)
def test_float32_auto_path_matches_reference(heads, savo):
    m = QCompass(48, 24, heads, savo)
    x = torch.randn(2, 300, 48)
    assert_close(m(x), m.forward_reference(x), rtol=1e-4, atol=1e-5)


def test_chunked_backward_gradcheck(small_chunks):
    q, k = (torch.randn(1, 2, 40, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(1, 2, 40, 6, dtype=torch.float64, requires_grad=True)
    for causal in (True, False):
        assert torch.autograd.gradcheck(lambda q, k, v: route(q, k, v, causal=causal, impl="chunked"), (q, k, v))


def test_matches_the_formula_written_out():
    """docs/design.md §1 by hand, single head: W_o(softmax(mask(x W_s (x W_a)^T / sqrt r)) x)."""
    H, r, L = 16, 8, 9
    m = QCompass(H, r)
    x = torch.randn(1, L, H)
    s, a = x[0] @ m.state_proj.weight.T, x[0] @ m.action_proj.weight.T
    q = s @ a.T / math.sqrt(r) + torch.full((L, L), float("-inf")).triu(1)
    expected = torch.softmax(q, -1) @ x[0] @ m.out_proj.weight.T + m.out_proj.bias
    assert_close(m(x)[0], expected, rtol=1e-5, atol=1e-6)


def test_savo_rank_r_gather_equals_h_dim_gather():
    """softmax(Q) @ (qval W_c) == (softmax(Q) @ qval) W_c, written out for one head."""
    H, r, L = 24, 8, 11
    m = QCompass(H, r, q_value_content=True).double()
    x = torch.randn(1, L, H, dtype=torch.float64)
    s, a = m.state_proj(x[0]), m.action_proj(x[0])
    w = torch.softmax(s @ a.T / math.sqrt(r) + torch.full((L, L), float("-inf"), dtype=x.dtype).triu(1), -1)
    direct = m.out_proj(w @ m.content_proj(s * a))  # gather at width H
    assert_close(m(x)[0], direct, rtol=1e-10, atol=1e-12)  # ours gathers at width r
    assert_close(m.forward_reference(x)[0], direct, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("heads, savo", VARIANTS)
def test_causality(heads, savo):
    m = QCompass(32, 16, heads, savo)
    x = torch.randn(1, 20, 32)
    y = x.clone()
    y[:, 12:] += torch.randn(1, 8, 32)
    out_x, out_y = m(x), m(y)
    assert_close(out_x[:, :12], out_y[:, :12])
    assert not torch.allclose(out_x[:, 12:], out_y[:, 12:])


@pytest.mark.parametrize("heads, savo", VARIANTS)
def test_bidirectional_is_permutation_equivariant(heads, savo):
    m = QCompassBi(32, 16, heads, savo)
    assert not m.causal
    x = torch.randn(2, 17, 32)
    perm = torch.randperm(17)
    assert_close(m(x[:, perm]), m(x)[:, perm], rtol=1e-5, atol=1e-6)
    # and every output depends on later tokens (no hidden causal mask)
    y = x.clone()
    y[:, -1] += 1.0
    assert not torch.allclose(m(x)[:, 0], m(y)[:, 0])


@pytest.mark.parametrize("impl", IMPLS)
def test_left_padding_leaves_real_tokens_unchanged(impl):
    """A left-padded row gives the same outputs at its real tokens as the row alone."""
    m = QCompass(32, 16, 2)
    x = torch.randn(1, 10, 32)
    padded = torch.cat([torch.randn(1, 5, 32) * 100, x], dim=1)
    keep = torch.cat([torch.zeros(1, 5), torch.ones(1, 10)], dim=1).long()
    out = m(padded, routing_mask(keep, causal=True), impl=impl)
    assert_close(out[:, 5:], m(x, impl=impl), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()


def test_routing_mask_shape_and_rows():
    keep = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    m = routing_mask(keep, causal=True)
    assert m.shape == (2, 1, 4, 4)
    assert m.any(-1).all()  # no query is left without a key
    assert m[0, 0, 3].tolist() == [False, False, True, True]
    assert m[1, 0, 1].tolist() == [True, True, False, False]
    assert routing_mask(keep, causal=False)[0, 0, 2].tolist() == [False, False, True, True]


def test_parameter_names_and_counts():
    m = QCompass(512, 64)
    assert {n for n, _ in m.named_parameters()} == {
        "state_proj.weight", "action_proj.weight", "out_proj.weight", "out_proj.bias"}
    assert sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight")) == 327_680
    savo = QCompass(512, 64, q_value_content=True)
    assert savo.content_proj.weight.shape == (512, 64)


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        QCompass(32, 10, num_heads=4)
    with pytest.raises(ValueError, match="unknown Q-Compass impl"):
        QCompass(32, 16, impl="flash")
    with pytest.raises(ValueError, match="unknown Q-Compass impl"):
        QCompass(32, 16)(torch.randn(1, 3, 32), impl="triton")


@pytest.mark.parametrize("impl", IMPLS)
def test_cpu_bf16_autocast(impl, small_chunks):
    m = QCompass(32, 16)
    x = torch.randn(2, 40, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, impl=impl)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert_close(out.float(), m.forward_reference(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("impl", ["chunked", "matmul"])
def test_bf16_autocast_paths_keep_fp32_softmax_statistics(small_chunks, impl):
    """Under CPU bf16 autocast the matmuls run in bf16, the softmax in fp32: the result sits
    within bf16 rounding of the fp32 reference, values and gradients."""
    torch.manual_seed(0)
    mixer = QCompass(64, 16)
    x = torch.randn(2, 40, 64, requires_grad=True)
    reference = mixer.forward_reference(x)
    (g_ref,) = torch.autograd.grad(reference.square().sum(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(x, impl=impl)
    assert out.dtype == torch.bfloat16
    (g,) = torch.autograd.grad(out.float().square().sum(), x)
    assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)
    assert (g - g_ref).norm() / g_ref.norm() < 2e-2
