"""visual_qa through every stage that takes a task: SFT, GRPO and eval, on a tiny vision model."""

import json

import pytest

from quatrix import QuatrixLM
from quatrix.cli import main
from quatrix.tokenizer import load_tokenizer
from tests.conftest import piped_chat, sft_grpo_eval, tiny_config


@pytest.fixture(scope="module")
def vision_checkpoint(chat_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_checkpoint")
    tokenizer = load_tokenizer(chat_checkpoint)
    QuatrixLM(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=128, use_vision=True)).save_pretrained(root)
    tokenizer.save(root)
    return root


def test_visual_qa_trains_and_evaluates_at_the_model_image_size(vision_checkpoint, tmp_path, capsys):
    result = sft_grpo_eval(vision_checkpoint, tmp_path, capsys, sft_args=["--data", "task:visual_qa"],
                           task="visual_qa", seq_len=128, n=10)
    assert set(result["accuracy_by_kind"]) <= {"count", "colour", "shape", "exists", "position"}
    assert len(result["accuracy_by_kind"]) >= 3


def test_eval_reports_majority_and_text_only_baselines(vision_checkpoint, capsys):
    assert main(["eval", "--ckpt", str(vision_checkpoint), "--task", "visual_qa", "--n", "12",
                 "--max-new-tokens", "4", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)["baselines"]
    assert set(base["majority_by_kind"]) == set(base["text_only_by_kind"]) and 0 <= base["text_only_accuracy"] <= 1
    assert base["majority_answers"]["count"].isdigit() and base["majority_answers"]["exists"] in ("yes", "no")
    assert main(["eval", "--ckpt", str(vision_checkpoint), "--task", "visual_qa", "--n", "6",
                 "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "text only (images zeroed)" in out and "majority" in out


def test_majority_baseline_is_the_commonest_training_answer_per_kind():
    from quatrix.eval.tasks import majority_answers
    from quatrix.tasks import load_task

    majority = majority_answers(load_task("visual_qa", image_size=16), n=400)
    assert set(majority) == {"count", "colour", "shape", "exists", "position"}
    assert majority["shape"] in ("circle", "square", "triangle")


def test_chat_sends_an_image_with_the_next_message(vision_checkpoint, chat_checkpoint, tmp_path):

    from PIL import Image

    Image.new("L", (50, 30), 200).save(tmp_path / "grey.png")  # any size or mode: one preprocessing function
    (tmp_path / "bad.png").write_bytes(b"not an image")
    script = f"/image {tmp_path / 'grey.png'}\nwhat is this?\n/image {tmp_path / 'grey.png'}\n/image {tmp_path / 'bad.png'}\n"

    def chat(ckpt):
        return piped_chat(ckpt, script, "--max-new-tokens", "4")

    lines = chat(vision_checkpoint).stdout.splitlines()
    assert lines[0] == "(image attached to your next message)"
    assert "already has an image" in lines[2]
    assert "already has an image" in lines[3] or "could not read image" in lines[3]
    blind = chat(chat_checkpoint).stdout.splitlines()
    assert "no vision encoder" in blind[0]


def test_an_unreadable_image_is_named(vision_checkpoint, tmp_path):
    from quatrix.session import ChatSession
    from quatrix.pretrained import load_model_and_tokenizer

    (tmp_path / "bad.png").write_bytes(b"not an image")
    model, tok = load_model_and_tokenizer(vision_checkpoint)
    session = ChatSession(model, tok, max_new_tokens=4, temperature=0)
    with pytest.raises(ValueError, match="could not read image .*bad.png"):
        session.attach_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="image not found"):
        session.attach_image(tmp_path / "missing.png")
    session.attach_image(_grey(tmp_path))
    assert "".join(session.reply("what colour?")) is not None
    assert session.image() is not None and not session.pending
    session.reset()
    assert session.image() is None


def _grey(tmp_path):
    from PIL import Image

    path = tmp_path / "g.jpg"
    Image.new("RGB", (7, 90), (90, 90, 90)).save(path)
    return path


def test_generate_answers_an_image_question_in_the_chat_format(vision_checkpoint, chat_checkpoint, tmp_path, capsys):
    path = _grey(tmp_path)
    assert main(["generate", "--ckpt", str(vision_checkpoint), "--image", str(path), "--prompt", "What shape?",
                 "--chat", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert main(["generate", "--ckpt", str(chat_checkpoint), "--image", str(path), "--prompt", "x", "--chat"]) == 2
    assert "no vision encoder" in capsys.readouterr().err
    assert main(["generate", "--ckpt", str(vision_checkpoint), "--image", str(tmp_path / "nope.png"),
                 "--prompt", "x", "--chat"]) == 2
    assert "image not found" in capsys.readouterr().err
