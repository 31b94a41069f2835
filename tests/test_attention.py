import pytest
import torch
from torch.testing import assert_close

from quatrix.attention import MultiHeadAttention
from quatrix.qcompass import routing_mask


@pytest.mark.parametrize("impl", ["sdpa", "matmul", "chunked"])
def test_mha_matches_torch_multihead_attention(impl):
    H, heads, L = 32, 4, 12
    ours = MultiHeadAttention(H, heads, impl=impl)
    ref = torch.nn.MultiheadAttention(H, heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.zero_()
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, L, H)
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)  # torch: True = masked out
    expected, _ = ref(x, x, x, attn_mask=causal, need_weights=False)
    assert_close(ours(x), expected, rtol=1e-5, atol=1e-6)


def test_rank_matched_ablation_shapes_and_counts():
    full, ranked = MultiHeadAttention(512, 8), MultiHeadAttention(512, 8, rank=64)
    weights = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))  # noqa: E731
    assert weights(full) == 4 * 512 * 512 == 1_048_576
    assert weights(ranked) == 4 * 512 * 64
    assert ranked.q_proj.weight.shape == (64, 512) and ranked.out_proj.weight.shape == (512, 64)


@pytest.mark.parametrize("rank", [None, 8])
def test_padding_and_paths_agree(rank):
    m = MultiHeadAttention(32, 2, rank=rank)
    x = torch.randn(2, 9, 32)
    keep = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 9])
    mask = routing_mask(keep, causal=True)
    assert_close(m(x, mask, impl="sdpa"), m(x, mask, impl="matmul"), rtol=1e-5, atol=1e-6)
    assert_close(m(x, mask)[:, 3:][0], m(x[:1, 3:])[0], rtol=1e-5, atol=1e-6)
