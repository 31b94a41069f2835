"""Hot loops pay at most one device-to-host sync per step: counted here on CPU by catching
every tensor-to-host conversion (bool(), int(), float(), .item(), .tolist(), .cpu())."""

import torch
from torch.overrides import TorchFunctionMode

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.engine import stream
from quatrix.precision import autocast_context
from quatrix.train.distributed import Dist
from quatrix.train.optim import optimizer_step
from quatrix.train.trainer import accumulate_gradients

HOST = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy"}


class HostSyncs(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST:
            self.count += 1
        return func(*args, **(kwargs or {}))


def syncs_of_generation(model, prompts, steps: int) -> int:
    with HostSyncs() as counter:
        for _ in stream(model, prompts, steps, temperature=0.8, top_k=5, top_p=0.9,
                        generator=torch.Generator().manual_seed(0)):
            pass
    return counter.count


def test_each_decode_step_pays_one_sync():
    for overrides in ({}, {"q_value_content": True}, {"mixer": "mha", "q_heads": 4}):
        model = QuatrixLM(tiny_config(**overrides))
        for prompts in ([[1, 2, 3]], [[1, 2, 3], [4]]):  # unpadded, and left-padded
            short, long = syncs_of_generation(model, prompts, 3), syncs_of_generation(model, prompts, 9)
            assert long - short == 6, (overrides, prompts, short, long)
            assert short <= 3 + 3  # prefill (prompt check, padding check) + one per step


def test_a_training_step_pays_one_sync():
    model = QuatrixLM(tiny_config())
    ids = torch.randint(0, 97, (2, 12))

    class Loader:
        def next_batch(self, step):
            return "text", {"input_ids": ids, "labels": ids}

    d = Dist()
    with HostSyncs() as counter:
        _, loss, tokens = accumulate_gradients(model, Loader(), 0, 2, d, "cpu", autocast_context("cpu"))
    assert counter.count == 0 and tokens == 2 * ids.numel()  # the token count comes from shapes, not the device
    with HostSyncs() as counter:
        loss_value, grad_norm = optimizer_step(model, [], loss, d)  # the optimizers' own internals aside
    assert counter.count == 1 and loss_value > 0 and grad_norm > 0
