import re

import pytest

from phasedsft.data.graded import LEVELS, generate_suite
from phasedsft.records import DataError


def test_suite_is_seeded_and_distinct():
    a = generate_suite(500, seed=3).examples
    b = generate_suite(500, seed=3).examples
    c = generate_suite(500, seed=4).examples
    assert a == b
    assert a != c
    assert len({(e.instruction, e.input, e.output) for e in a}) == 500
    assert len({e.id for e in a}) == 500


def test_every_level_present_and_score_is_level():
    examples = generate_suite(1000, seed=0).examples
    levels = {e.meta["level"] for e in examples}
    assert levels == set(LEVELS)
    assert all(e.score == float(e.meta["level"]) for e in examples)


def test_answers_are_exact():
    for e in generate_suite(600, seed=1).examples:
        task = e.meta["task"]
        if task == "arithmetic_chain":
            a, b, c, d = map(int, re.findall(r"\d+", e.input))
            assert int(e.output) == (a + b) * c - d
        elif task in ("add_digits", "add_two_digit"):
            assert int(e.output) == sum(map(int, e.input.split()))
        elif task == "multiply":
            x, y = map(int, e.input.split())
            assert int(e.output) == x * y
        elif task == "sort_numbers":
            assert e.output.split() == [str(x) for x in sorted(map(int, e.input.split()))]
        elif task == "reverse_word":
            assert e.output == e.input[::-1]
        elif task == "count_words":
            assert int(e.output) == len(e.input.split())


def test_eval_split_is_held_out():
    train = generate_suite(800, seed=0).examples
    held = generate_suite(200, seed=0, split="eval", exclude_seed=0, exclude_n=800).examples
    triplets = {(e.instruction, e.input, e.output) for e in train}
    assert not any((e.instruction, e.input, e.output) in triplets for e in held)
    assert not {e.id for e in train} & {e.id for e in held}


def test_bad_parameters_are_named():
    with pytest.raises(DataError, match="level_weights"):
        generate_suite(10, level_weights=(1, 1))
    with pytest.raises(DataError, match="n must be positive"):
        generate_suite(0)
