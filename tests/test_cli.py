import json
import subprocess
import sys

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.cli import main


def test_info_preset_prints_table_and_forward(capsys):
    assert main(["info", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "mixers" in out and "total" in out and "logits (1, 10, 50257)" in out


def test_info_json_and_mixer_override(capsys):
    assert main(["info", "--preset", "berry-q0", "--mixer", "mha", "--q-heads", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["mixer"] == "mha" and data["parameters"]["mixer_weights_per_layer"] == 1_048_576


def test_info_checkpoint_and_errors(tmp_path, capsys):
    QuatrixLM(tiny_config(use_vision=True)).save_pretrained(tmp_path / "c")
    assert main(["info", "--ckpt", str(tmp_path / "c")]) == 0
    assert "text + image" in capsys.readouterr().out
    assert main(["info", "--ckpt", str(tmp_path / "missing")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err


def test_console_script_entry_point():
    result = subprocess.run([sys.executable, "-m", "quatrix.cli", "info", "--preset", "nope"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr
