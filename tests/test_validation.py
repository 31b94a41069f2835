import argparse

import pytest
import torch

from quatrix.validation import (check_image, check_labels, check_token_ids, float_in, int_at_least,
                                nonnegative_int, positive_float)


def test_token_ids():
    check_token_ids("ids", torch.tensor([[0, 9]]), 10, 4)
    for ids, message in [(torch.zeros(1, 0, dtype=torch.long), "empty"), (torch.zeros(1, 5, dtype=torch.long), "longer"),
                         (torch.tensor([[3, 10]]), "token id 10, outside"), (torch.tensor([[-1]]), "token id -1"),
                         (torch.zeros(1, 2), "integer tensor"), (torch.zeros(2, dtype=torch.long), "2-D")]:
        with pytest.raises(ValueError, match=message):
            check_token_ids("ids", ids, 10, 4)
    check_token_ids("ids", torch.tensor([[3, 10]]), 10, 4, values=False)  # values are the caller's job then


def test_labels():
    ids = torch.tensor([[1, 2, 3]])
    check_labels(torch.tensor([[-100, 2, 9]]), ids, 10)
    with pytest.raises(ValueError, match="labels contains 10"):
        check_labels(torch.tensor([[-100, 2, 10]]), ids, 10)
    with pytest.raises(ValueError, match="shape"):
        check_labels(torch.tensor([[1, 2]]), ids, 10)
    check_labels(torch.tensor([[-100, 2, 10]]), ids, 10, values=False)


def test_images():
    check_image("px", torch.zeros(1, 3, 8, 8), 3, 8)
    with pytest.raises(ValueError, match="1 channels, expected 3"):
        check_image("px", torch.zeros(1, 1, 8, 8), 3, 8)
    with pytest.raises(ValueError, match="4x8 pixels"):
        check_image("px", torch.zeros(1, 3, 4, 8), 3, 8)
    with pytest.raises(ValueError, match="NaN"):
        check_image("px", torch.full((1, 3, 8, 8), float("nan")), 3, 8)


def test_flag_types():
    assert int_at_least(2)("5") == 5 and nonnegative_int("0") == 0 and positive_float("1e-3") == 1e-3
    assert float_in(0.0, 1.0, low_open=True)("1") == 1.0
    for parse, text, message in [(int_at_least(2), "1", ">= 2"), (nonnegative_int, "-1", ">= 0"),
                                 (nonnegative_int, "1.5", "an integer"), (positive_float, "0", "(0, inf)"),
                                 (positive_float, "nan", "finite"), (positive_float, "inf", "finite"),
                                 (float_in(0.0, 1.0, low_open=True), "1.5", "(0, 1]"), (positive_float, "x", "a number")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            parse(text)
