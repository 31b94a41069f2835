import pytest

from quatrix.tasks import HELD_OUT_EVERY, load_task, parse_task_spec, task_from_spec
from quatrix.tasks.base import held_out


def test_train_and_held_out_items_never_share_a_question():
    task = task_from_spec("chain_sum:min_terms=2,max_terms=3,max_digits=1", seed=0)
    held = task.eval_items(200)
    assert len({i.question for i in held}) == 200 and all(held_out(i.key) for i in held)
    train, index = set(), 0
    for _ in range(3000):
        item, index = task.train_item(index)
        train.add(item.question)
    assert not train & {i.question for i in held}
    assert [i.question for i in task.eval_items(5)] == [i.question for i in held[:5]]  # the same set every time


def test_pools_split_the_training_questions_in_disjoint_parts_and_keep_the_held_out_set():
    spec = "chain_sum:min_terms=2,max_terms=3,max_digits=1"
    whole, first, second = (task_from_spec(s) for s in (spec, spec + ",pool=0/2", spec + ",pool=1/2"))

    def questions(task, n=2000):
        seen, index = set(), 0
        for _ in range(n):
            item, index = task.train_item(index)
            seen.add(item.question)
        return seen

    a, b = questions(first), questions(second)
    assert a and b and not a & b and (a | b) <= questions(whole, 6000)
    assert [i.question for i in first.eval_items(20)] == [i.question for i in whole.eval_items(20)]
    for bad in ("2/2", "a/b", "1"):
        with pytest.raises(ValueError, match="expected K/N"):
            task_from_spec(spec + f",pool={bad}")


def test_the_split_hash_is_stable_and_holds_out_about_one_in_eight():
    share = sum(held_out(f"question {i}") for i in range(8000)) / 8000
    assert abs(share - 1 / HELD_OUT_EVERY) < 0.02
    assert held_out("question 7") == held_out("question 7")


def test_bad_task_names_and_options_say_what_is_wrong():
    with pytest.raises(ValueError, match="did you mean chain_sum"):
        load_task("chain_summ")
    with pytest.raises(ValueError, match="max_termz"):
        load_task("chain_sum", max_termz=3)
    with pytest.raises(ValueError, match="key=value"):
        parse_task_spec("chain_sum:max_terms")
    with pytest.raises(ValueError, match="NAME"):
        parse_task_spec(":x=1")


def test_task_specs_read_json_values():
    assert parse_task_spec("chain_sum:max_terms=3, allow_negation=true,x=abc") == (
        "chain_sum", {"max_terms": 3, "allow_negation": True, "x": "abc"})


def test_asking_for_more_held_out_questions_than_exist_fails_clearly():
    task = load_task("chain_sum", min_terms=2, max_terms=2, max_digits=1)  # 200 questions, about 25 held out
    with pytest.raises(ValueError, match="held-out questions found"):
        task.eval_items(100)
