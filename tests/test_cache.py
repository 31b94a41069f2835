"""The engine's caches satisfy the protocol the models are written against."""

import inspect

import torch

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.cache import MixerCache, ModelCache
from quatrix.engine import Cache, LayerCache


def protocol_methods(protocol):
    return {n for n, v in vars(protocol).items() if inspect.isfunction(v) and not n.startswith("_")}


def test_engine_caches_implement_the_protocols():
    for implementation, protocol in ((LayerCache, MixerCache), (Cache, ModelCache)):
        for name in protocol_methods(protocol):
            mine, spec = getattr(implementation, name), getattr(protocol, name)
            assert list(inspect.signature(mine).parameters) == list(inspect.signature(spec).parameters), name


def test_layer_cache_appends_in_place_and_returns_everything_so_far():
    cache = LayerCache(2, 5, (1, 3, 1, 4), torch.float32, "cpu")
    k1, c1 = torch.randn(2, 1, 2, 3), torch.randn(2, 1, 2, 4)
    k2, c2 = torch.randn(2, 1, 1, 3), torch.randn(2, 1, 1, 4)
    cache.append(k1, c1)
    keys, contents = cache.append(k2, c2)
    assert torch.equal(keys, torch.cat([k1, k2], 2)) and torch.equal(contents, torch.cat([c1, c2], 2))
    assert cache.length == 3


def test_model_cache_positions_and_mask_follow_the_protocol():
    model = QuatrixLM(tiny_config())
    cache = Cache(model, batch=2, max_text_len=6)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    positions, routing = cache.extend(mask, prefix_len=0)
    assert positions.tolist() == [[0, 0, 1], [0, 1, 2]]
    assert routing.shape == (2, 1, 3, 3) and not routing[0, 0, 1, 0]  # padding is never routed to
    positions, routing = cache.extend(torch.ones(2, 1, dtype=torch.long), prefix_len=0)
    assert positions.tolist() == [[2], [3]] and routing.shape == (2, 1, 1, 4)
    assert len(cache.layers) == len(model.blocks)
