import json

import pytest

from quatrix.train.metrics import Metrics, read_metrics


def test_metrics_drop_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + json.dumps({"step": 2, "loss": 1.5}) + "\n"
                    + '{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    metrics = Metrics(tmp_path, resume_step=1)
    metrics.log({"step": 2, "loss": 1.4})
    metrics.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 2.0), (2, 1.4)]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        read_metrics(path)
