"""The Berry report's claims: what each stage should have earned, tested on held-out items."""

from quatrix.eval.tasks import mcnemar_exact
from quatrix.train.report import claims, claims_table, eval_n


def results(*, ppl=(120.0, 150.0, 150.0), before=None, after=None, vqa=0.5, majority=0.35, zeroed=0.36, n=400):
    before = before if before is not None else [True] * 80 + [False] * 320
    after = after if after is not None else [True] * 80 + [True] * 40 + [False] * 280
    media = {"grpo": {"n": n, "accuracy": vqa,
                      "baselines": {"majority_accuracy": majority, "text_only_accuracy": zeroed}}}
    return {"perplexity": {s: {"perplexity": p} for s, p in zip(("pretrain", "sft", "grpo"), ppl)},
            "math": {"sft": {"accuracy": sum(before) / len(before), "solved": before},
                     "grpo": {"accuracy": sum(after) / len(after), "solved": after}},
            "visual_qa": media}


def by_claim(rows):
    return {row["claim"].split(" ")[0]: row for row in rows}


def test_a_run_that_shows_every_stage_holds_every_claim():
    rows = by_claim(claims(results(), vocab_size=4096))
    assert set(rows) == {"pretraining", "SFT", "GRPO", "visual"}
    assert all(row["holds"] for row in rows.values()), rows
    assert "40 items right only after GRPO, 0 only before" in rows["GRPO"]["measured"]
    assert "(1.25×)" in rows["SFT"]["measured"]


def test_each_claim_fails_when_its_stage_did_not_earn_it():
    rows = by_claim(claims(results(ppl=(120.0, 181.0, 170.0)), 4096))
    assert not rows["SFT"]["holds"]  # 1.51x
    assert not by_claim(claims(results(ppl=(5000.0, 5000.0, 5000.0)), 4096))["pretraining"]["holds"]
    # GRPO: as many gained as lost, or a small gain that a coin could give, or a loss
    even = [True] * 10 + [False] * 390
    swapped = [False] * 10 + [True] * 10 + [False] * 380
    assert not by_claim(claims(results(before=even, after=swapped), 4096))["GRPO"]["holds"]
    few = [True] * 14 + [False] * 386
    assert mcnemar_exact(4, 0) > 0.05
    assert not by_claim(claims(results(before=even, after=few), 4096))["GRPO"]["holds"]
    assert not by_claim(claims(results(before=few, after=even), 4096))["GRPO"]["holds"]
    # visual QA above the majority answer, but not far enough for the intervals to part at n = 400
    rows = by_claim(claims(results(vqa=0.425, majority=0.347, zeroed=0.33), 4096))
    assert not rows["visual"]["holds"] and "majority answer 0.347" in rows["visual"]["measured"]
    # the same accuracies on 1,000 items do part
    assert by_claim(claims(results(vqa=0.425, majority=0.347, zeroed=0.33, n=1000), 4096))["visual"]["holds"]
    # the better baseline is the one to beat
    rows = by_claim(claims(results(vqa=0.5, majority=0.2, zeroed=0.48), 4096))
    assert not rows["visual"]["holds"] and "media zeroed 0.480" in rows["visual"]["measured"]


def test_the_table_marks_what_does_not_hold():
    table = claims_table(claims(results(ppl=(120.0, 1400.0, 1400.0)), 4096))
    assert table[0] == "| claim | measured | holds |"
    assert any("(11.67×)" in line and line.endswith("| **no** |") for line in table)


def test_eval_n_is_one_number_or_one_per_task():
    assert eval_n({"n": 300}, "visual_qa") == 300
    assert eval_n({"n": {"math": 500, "visual_qa": 1000}}, "math") == 500
    assert eval_n({"n": {"math": 500}}, "transcribe") == 200
    assert eval_n({}, "math") == 200
