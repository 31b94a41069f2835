import pytest

from quatrix.tasks import load_task
from quatrix.tasks.rewards import extract_answer, format_reward, length_reward, parse_reward_weights, score_completion


@pytest.fixture(scope="module")
def item_and_task():
    task = load_task("chain_sum", seed=0, min_terms=2, max_terms=2, max_digits=1)
    return task.train_item(0)[0], task


@pytest.mark.parametrize("completion, correct, formatted", [
    ("<think>add them</think><answer>{a}</answer>", 1.0, 1.0),          # right
    ("<think></think><answer>{a}</answer>", 1.0, 1.0),                  # right, no reasoning
    (" <think>x</think>\n<answer> {a} </answer>\n", 1.0, 1.0),          # whitespace around tags
    ("<think>hmm</think><answer>{wrong}</answer>", 0.0, 1.0),           # wrong
    ("<answer>{a}</answer>", 1.0, 0.0),                                 # right but no reasoning block
    ("<think>{a}</think>{a}", 0.0, 0.0),                                # answer outside the tags
    ("{a}", 0.0, 0.0),                                                  # bare answer
    ("", 0.0, 0.0),                                                     # empty
    ("<think>a</think><answer>{a}</answer> and more", 1.0, 0.0),        # trailing text
    ("<think><think>a</think><answer>{a}</answer>", 1.0, 0.0),          # a tag twice
    ("<answer>{a}</answer><think>a</think>", 1.0, 0.0),                 # wrong order
    ("<think>a</think><answer></answer>", 0.0, 1.0),                    # empty answer
])
def test_rewards_on_hand_written_completions(item_and_task, completion, correct, formatted):
    item, task = item_and_task
    text = completion.format(a=item.answer, wrong=int(item.answer) + 1)
    scored = score_completion(task, item, text, tokens=8, max_new_tokens=32,
                              weights={"correct": 1.0, "format": 0.5, "length": 0.0})
    assert (scored.correct, scored.format) == (correct, formatted)
    assert scored.reward == pytest.approx(correct + 0.5 * formatted)
    assert scored.solved == (correct == 1.0)


def test_the_first_answer_pair_counts():
    assert extract_answer("<answer>1</answer><answer>2</answer>") == "1"
    assert extract_answer("no tags") is None


def test_length_penalty_and_weights():
    assert length_reward(8, 32) == -0.25 and length_reward(64, 32) == -1.0
    assert parse_reward_weights("correct=2,length=0.5") == {"correct": 2.0, "format": 0.1, "length": 0.5}
    for bad, message in [("speed=1", "NAME"), ("correct=x", "not a number"), ("correct=nan", "finite")]:
        with pytest.raises(ValueError, match=message):
            parse_reward_weights(bad)
    assert format_reward("<think></think><answer>1</answer>") == 1.0
