import json

import torch

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.attention import MultiHeadAttention
from quatrix.cli import main
from quatrix.data.mqar import MQARSpec
from quatrix.engine import Cache
from quatrix.train.recall import Cell, Recipe, best_by_cell, cell_config

TASK = "mqar:seq_len=16,kv_pairs=2,vocab=32,n_train=128,n_test=32"


def test_cells_are_zoologys_models():
    spec = MQARSpec.parse(TASK)
    config = cell_config(Cell(TASK, "mh-qcompass", 64, 1e-3, 0), spec, Recipe())
    assert (config.num_layers, config.ffn_ratio, config.q_rank, config.q_heads, config.max_seq_len) == (2, 0, 16, 4, 16)
    assert cell_config(Cell(TASK, "qcompass", 64, 1e-3, 0, "full"), spec, Recipe()).q_rank == 64
    model = QuatrixLM(config)
    assert not any(".ffn." in name for name, _ in model.named_parameters())  # the MLP is the identity
    attention = [m for m in QuatrixLM(cell_config(Cell(TASK, "sha", 64, 1e-3, 0), spec, Recipe())).modules()
                 if isinstance(m, MultiHeadAttention)]  # Zoology's baseline: one head of full width
    assert len(attention) == 2 and all((m.num_heads, m.inner) == (1, 64) for m in attention)


def test_a_model_without_mlp_decodes_from_its_cache_as_it_recomputes():
    model = QuatrixLM(tiny_config(ffn_ratio=0)).eval()
    ids = torch.randint(0, 97, (2, 9))
    full = model(ids)["logits"]
    cache = Cache(model, 2, 9)
    prefill = model(ids[:, :5], cache=cache)["logits"]
    steps = [model(ids[:, t : t + 1], cache=cache)["logits"] for t in range(5, 9)]
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full, atol=1e-5, rtol=1e-5)


def test_the_study_writes_its_table_and_figure_and_resumes(tmp_path, capsys):
    argv = ["ablate", "--task", TASK, "--variants", "qcompass,mha", "--d-model", "32", "--lrs", "3e-3,1e-2",
            "--seeds", "0", "--epochs", "1", "--batch-size", "32", "--eval-every", "2", "--out", str(tmp_path)]
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["cells"]) == 4 and results["recipe"]["no_mlp"] is False
    for record in results["cells"]:
        assert {"variant", "d_model", "seq_len", "kv_pairs", "lr", "seed", "accuracy", "steps", "params",
                "wall_s"} <= set(record) and 0 <= record["accuracy"] <= 1 and record["steps"] == 4
    for record in results["cells"]:  # each evaluation, in the record and in the cell's file as it trained
        curve = record["curve"]
        assert [p["step"] for p in curve] == [2, 4] and curve[0]["lr"] > curve[1]["lr"] > 0
        assert max(p["accuracy"] for p in curve) == record["accuracy"] and curve[-1]["accuracy"] == record[
            "final_accuracy"]
        assert all(p["loss"] > 0 for p in curve) and curve[0]["seconds"] <= curve[1]["seconds"]
        cell = Cell(TASK, record["variant"], 32, record["lr"], 0)
        lines = (tmp_path / "cells" / cell.file_name).read_text().splitlines()
        assert [json.loads(line) for line in lines] == curve
    assert len(list((tmp_path / "cells").iterdir())) == 4 and "|" not in cell.file_name
    best = best_by_cell(results["cells"])
    table = (tmp_path / "results.md").read_text()
    assert f"| attention, full rank | {best[(TASK, 'mha', 32)]:.3f} |" in table
    assert (tmp_path / "recall.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(argv) == 0  # finished cells are not trained again
    assert "4 already done, 0 to train" in capsys.readouterr().out


def test_both_rank_rules_give_a_row_each_and_full_attention_one(tmp_path):
    argv = ["ablate", "--task", TASK, "--variants", "qcompass,mha,sha", "--d-model", "32", "--lrs", "1e-2",
            "--seeds", "0", "--epochs", "1", "--batch-size", "64", "--eval-every", "2", "--rank-rule",
            "quarter,full", "--out", str(tmp_path)]
    assert main(argv) == 0
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    ranks = sorted((c["variant"], c["q_rank"]) for c in cells)
    assert ranks == [("mha", 8), ("qcompass", 8), ("qcompass", 32), ("sha", 8)]
    table = (tmp_path / "results.md").read_text()
    assert "| Q-Compass (SAO) |" in table and "| Q-Compass (SAO), r = d_model |" in table
    assert table.count("| attention, full rank |") == table.count("| attention, one head |") == 1


def test_resuming_with_another_recipe_is_refused(tmp_path, capsys):
    argv = ["ablate", "--task", TASK, "--variants", "qcompass", "--d-model", "32", "--lrs", "1e-2", "--seeds", "0",
            "--epochs", "1", "--batch-size", "64", "--eval-every", "2", "--out", str(tmp_path)]
    assert main(argv) == 0
    before = (tmp_path / "results.json").read_text()
    assert main([*argv[:-2], "--epochs", "2", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "another recipe" in err and "epochs 1 there, 2 here" in err
    assert (tmp_path / "results.json").read_text() == before
    assert main([*argv[:-2], "--rank-rule", "half", "--out", str(tmp_path)]) != 0
    assert "--rank-rule must be" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"cells": [')
    assert main(argv) != 0
    assert "results.json is damaged" in capsys.readouterr().err


def test_the_curves_drawn_are_the_best_rates_and_records_without_one_are_skipped():
    from quatrix.train.recall import best_curves

    def record(lr, accuracy, seed=0, curve=True, seq_len=16):
        task = TASK.replace("seq_len=16", f"seq_len={seq_len}")
        return {"task": task, "variant": "qcompass", "d_model": 64, "lr": lr, "seed": seed, "accuracy": accuracy,
                "seq_len": seq_len, "kv_pairs": 2, "curve": [{"step": 1, "accuracy": accuracy}] if curve else None}

    records = [record(1e-3, 0.5), record(1e-2, 0.9), record(1e-1, 0.95, seed=1), record(1e-4, 1.0, curve=False)]
    chosen = best_curves(records)
    assert [r["lr"] for r in chosen[TASK]] == [1e-2]
    assert best_curves([record(1e-4, 1.0, curve=False)]) == {}
    longer = record(1e-3, 0.5, seq_len=128)  # a panel per task, the shortest first ("128" sorts before "16")
    assert [r["seq_len"] for [r] in best_curves([longer, record(1e-3, 0.5)]).values()] == [16, 128]


def test_a_row_keeps_its_color_in_every_panel():
    from quatrix.train.recall import row_colors

    def record(task, name):
        return {"task": task, "variant": name, "d_model": 64, "lr": 1e-3, "seed": 0, "accuracy": 0.5}

    other = TASK.replace("seq_len=16", "seq_len=20")
    records = [record(TASK, "mha"), record(TASK, "qcompass"), record(other, "qcompass"),
               {**record(other, "qcompass"), "rank_rule": "full"}]
    colors = row_colors(records)
    assert colors == {"mha": "C0", "qcompass": "C1", "qcompass|r=full": "C2"}
