import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.eval.perplexity import evaluate_tokens


class Bytes:
    """Each id is one character: bits per byte is then loss / ln 2 over the predicted ids."""

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_evaluate_tokens_is_the_mean_next_token_loss_over_windows():
    model = QuatrixLM(tiny_config()).eval()
    tokens = np.random.default_rng(0).integers(0, 97, size=10 * 8 + 3).astype(np.uint16)  # 10 windows and a rest
    result = evaluate_tokens(model, tokens, seq_len=8, batch_size=3, tokenizer=Bytes())
    windows = torch.from_numpy(tokens[:80].astype(np.int64)).view(10, 8)
    with torch.no_grad():
        logits = model(windows)["logits"]
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 97), windows[:, 1:].reshape(-1)).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["tokens"] == 10 * 7 and result["perplexity"] == pytest.approx(math.exp(expected))
    assert result["bits_per_byte"] == pytest.approx(expected / math.log(2), rel=1e-5)
    assert model.training is False


def test_evaluate_tokens_limits_and_errors():
    model = QuatrixLM(tiny_config()).train()
    tokens = np.arange(64, dtype=np.uint16) % 97
    assert evaluate_tokens(model, tokens, 8, 2, max_batches=1)["tokens"] == 2 * 7
    assert model.training  # restored
    with pytest.raises(ValueError, match="fewer than one window"):
        evaluate_tokens(model, tokens[:5], 8, 2)
