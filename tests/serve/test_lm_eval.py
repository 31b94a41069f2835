"""EleutherAI's lm-evaluation-harness, both ways, on local JSONL tasks (no network): against
`quatrix serve` (`local-completions`, token-id prompts, echo + logprobs) and on the
`transformers` export (`hf`, trust_remote_code). The harness's per-sample log-likelihoods
must equal Quatrix's own to 1e-4."""

import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="the [eval] extra (lm-eval) is not installed")
pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn) is not installed")

from quatrix.hf.export import export_hf  # noqa: E402
from quatrix.pretrained import load_model_and_tokenizer  # noqa: E402
from quatrix.serve.app import create_app, scheduler_for  # noqa: E402
from serve_helpers import running_server  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from lm_eval_berry import own_loglikelihood  # noqa: E402  (the harness's split, scored by Quatrix)

QUESTIONS = [("hello there, how are", ["you", "fine", "today"], 0), ("I am", ["fine", "there", "you"], 0),
             ("how are you", ["today", "hello", "I"], 0), ("hello", ["there", "fine", "am"], 0)]

MC_TASK = """task: quatrix_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""

GEN_TASK = """task: quatrix_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def setup(chat_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    data = root / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (root / "tasks").mkdir()
    (root / "tasks" / "quatrix_mc.yaml").write_text(MC_TASK.format(data=data))
    (root / "tasks" / "quatrix_gen.yaml").write_text(GEN_TASK.format(data=data))
    export = export_hf(chat_checkpoint, root / "export")
    return root, export


def evaluate(root, model: str, model_args: str) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["quatrix_mc", "quatrix_gen"],
                                   task_manager=TaskManager(include_path=str(root / "tasks")), log_samples=True,
                                   batch_size=2)


def check_against_quatrix(results, chat_checkpoint) -> float:
    """The largest difference between the harness's and Quatrix's per-sample log-likelihoods
    (and the harness ran every item of both tasks)."""
    model, tokenizer = load_model_and_tokenizer(chat_checkpoint)
    model.eval()
    largest = 0.0
    samples = results["samples"]["quatrix_mc"]
    assert len(samples) == len(QUESTIONS)
    for sample in samples:
        for (context, continuation), response in zip(sample["arguments"], sample["resps"], strict=True):
            theirs = response[0][0]
            largest = max(largest, abs(theirs - own_loglikelihood(model, tokenizer, context, continuation)))
    assert 0.0 <= results["results"]["quatrix_mc"]["acc,none"] <= 1.0
    assert len(results["samples"]["quatrix_gen"]) == len(QUESTIONS)
    print(f"acc {results['results']['quatrix_mc']['acc,none']:.3f}, exact_match "
          f"{results['results']['quatrix_gen']['exact_match,none']:.3f}, largest log-likelihood difference "
          f"to Quatrix's own {largest:.2e}")
    return largest


def test_the_harness_against_quatrix_serve(setup, chat_checkpoint):
    root, export = setup
    model, tokenizer = load_model_and_tokenizer(chat_checkpoint)
    app = create_app(scheduler_for(model, tokenizer, max_batch=8), model_name="tiny")
    with running_server(app) as url:
        results = evaluate(root, "local-completions",
                           f"base_url={url}/v1/completions,model=tiny,tokenizer_backend=huggingface,"
                           f"tokenizer={export},tokenized_requests=True,max_length=128,num_concurrent=1,"
                           f"max_retries=1")
    assert check_against_quatrix(results, chat_checkpoint) < 1e-4


def test_the_harness_on_the_transformers_export(setup, chat_checkpoint):
    root, export = setup
    results = evaluate(root, "hf", f"pretrained={export},trust_remote_code=True,dtype=float32,device=cpu")
    assert check_against_quatrix(results, chat_checkpoint) < 1e-4
