import pytest

from quatrix.tasks import load_task, task_names
from quatrix.tasks.base import held_out


def test_every_reasoning_gym_task_is_listed_by_its_own_name():
    import reasoning_gym

    names = task_names()
    assert set(reasoning_gym.factory.DATASETS) <= set(names) and "visual_qa" in names
    assert len(names) > 100


@pytest.mark.parametrize("name", ["chain_sum", "basic_arithmetic", "gsm_symbolic", "spell_backward", "word_sorting"])
def test_a_task_item_is_scored_by_its_own_checker(name):
    task = load_task(name, seed=3)
    item, after = task.train_item(0)
    assert after >= 1 and not held_out(item.key)
    assert task.score(item.answer, item) == 1.0
    assert task.score("certainly not the answer", item) < 1.0
    assert task.score(None, item) == 0.0 and task.score("  ", item) == 0.0
    messages = task.prompt(item)
    assert [m["role"] for m in messages] == ["system", "user"] and "<answer>" in messages[0]["content"]
    assert task.target(item).endswith(f"<answer>{item.answer}</answer>")


def test_gsm_symbolic_carries_its_worked_solution_without_the_answer_line():
    task = load_task("gsm_symbolic")
    item, _ = task.train_item(0)
    target = task.target(item)
    assert item.solution and "####" not in target and target.startswith("<think>") and len(item.solution) > 40
