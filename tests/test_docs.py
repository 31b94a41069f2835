"""The numbers the docs state about the code itself stay true."""

import re
from pathlib import Path

import torch

from quatrix import QuatrixLM
from quatrix.config import preset
from quatrix.params import count_parameters

ROOT = Path(__file__).parent.parent
ROWS = {"embeddings": "embeddings", "mixers": "mixers", "FFNs": "ffns", "norms": "norms",
        "vision encoder": "vision", "vision projection": "projection", "language model": "language_model",
        "total": "total", "mixer weight matrices per layer": "mixer_weights_per_layer"}


def parameter_table(text: str) -> dict[str, list[int]]:
    section = text.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        label = re.sub(r"\s*\(.*", "", cells[0]).strip("* ")
        if label in ROWS and len(cells) == 3:
            table[ROWS[label]] = [int(c.strip("*").replace(",", "")) for c in cells[1:]]
    return table


def test_results_parameter_table_matches_count_parameters():
    table = parameter_table((ROOT / "docs" / "results.md").read_text())
    assert len(table) == len(ROWS)
    with torch.device("meta"):
        counts = [count_parameters(QuatrixLM(preset("berry-q0"))),
                  count_parameters(QuatrixLM(preset("berry-q0", mixer="mha", q_heads=8)))]
    for key, (qcompass, mha) in table.items():
        assert (qcompass, mha) == (counts[0][key], counts[1][key]), key
