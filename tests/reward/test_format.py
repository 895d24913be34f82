"""Format reward: exactly <think>R</think><answer>..\\boxed{A}..</answer>, nothing else."""

import random

import pytest

from mmr1_mega.reward import extract_answer, find_boxed, format_reward


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(1, 30))).strip() or "x"


def test_canonical_response_scores_one():
    rng = random.Random()
    text = f"<think>{_word(rng)}</think><answer>\\boxed{{{rng.randint(0, 99)}}}</answer>"
    assert format_reward(text) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "  <think>\nstep 1\nstep 2\n</think>\n<answer>The count is \\boxed{3}.</answer>\n",
        "<think>r</think> <answer>\\boxed{\\frac{1}{2}}</answer>",
        "<think>r</think><answer>\\boxed{ {a}+{b} }</answer>",
    ],
)
def test_whitespace_newlines_and_text_around_the_box_are_accepted(text):
    assert format_reward(text) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "<answer>\\boxed{3}</answer>",  # no think
        "<think>r</think>",  # no answer
        "Sure! <think>r</think><answer>\\boxed{3}</answer>",  # text before think
        "<think>r</think><answer>\\boxed{3}</answer> done",  # text after answer
        "<think>r</think>middle<answer>\\boxed{3}</answer>",  # text between
        "<think>   </think><answer>\\boxed{3}</answer>",  # empty reasoning
        "<think>r</think><answer>3</answer>",  # no box
        "<think>r</think><answer>\\boxed{3</answer>",  # unbalanced box
        "<think>r</think><answer>\\boxed{ }</answer>",  # blank box
        "<answer>\\boxed{3}</answer><think>r</think>",  # order swapped
        "<think>r</think><think>s</think><answer>\\boxed{3}</answer>",  # repeated tag
        "<think>r<answer>x</answer></think><answer>\\boxed{3}</answer>",  # nested answer tag
    ],
)
def test_malformed_responses_score_zero(text):
    assert format_reward(text) == 0.0


def test_non_string_scores_zero():
    assert format_reward(None) == 0.0


def test_extract_answer_prefers_last_box_inside_answer():
    text = "<think>maybe \\boxed{7}</think><answer>\\boxed{1} no, \\boxed{\\frac{2}{3}}</answer>"
    assert extract_answer(text) == "\\frac{2}{3}"


def test_extract_answer_falls_back_to_answer_body_unless_box_required():
    text = "<think>r</think><answer> 42 </answer>"
    assert extract_answer(text) == "42"
    assert extract_answer(text, require_boxed=True) is None


def test_extract_answer_is_none_without_any_answer():
    assert extract_answer("I think it is 3.") is None


def test_find_boxed_keeps_nested_braces():
    assert find_boxed("a \\boxed{\\sqrt{x^{2}}} b \\boxed{2") == ["\\sqrt{x^{2}}"]
