"""Accuracy reward: math-verify equivalence, exact match, multiple choice."""

import random

import pytest

from mmr1_mega.reward import accuracy_reward, match_choice, parse_choices


def _resp(answer: str) -> str:
    return f"<think>work</think><answer>\\boxed{{{answer}}}</answer>"


@pytest.mark.parametrize("pred", ["0.5", "\\frac{1}{2}", "1/2", "\\dfrac{1}{2}"])
@pytest.mark.parametrize("gold", ["0.5", "\\frac{1}{2}", "1/2"])
def test_one_half_in_any_notation_matches(pred, gold):
    assert accuracy_reward(_resp(pred), gold) == 1.0


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("(x+1)^2", "x^2+2x+1"),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
        ("[1,2]", "[1, 2]"),
        ("3", "\\boxed{3}"),
    ],
)
def test_mathematically_equal_answers_match(pred, gold):
    assert accuracy_reward(_resp(pred), gold) == 1.0


def test_a_different_number_does_not_match():
    n = random.randint(-1000, 1000)
    assert accuracy_reward(_resp(str(n + random.randint(1, 9))), str(n)) == 0.0


def test_numeric_ground_truth_is_accepted():
    n = random.randint(0, 9)
    assert accuracy_reward(_resp(str(n)), n) == 1.0


def test_response_without_answer_scores_zero():
    assert accuracy_reward("the answer is 3", "3") == 0.0


@pytest.mark.parametrize("pred", ["B", "(B)", "B.", "B) 12", "(b) twelve", "\\text{B}", "B: 12"])
@pytest.mark.parametrize("gold", ["B", "(B)", "B."])
def test_choice_letter_forms_match(pred, gold):
    assert accuracy_reward(_resp(pred), gold) == 1.0


@pytest.mark.parametrize("pred", ["C", "(A)", "D. 12"])
def test_wrong_choice_letter_does_not_match(pred):
    assert accuracy_reward(_resp(pred), "B") == 0.0


def test_option_text_matches_letter_ground_truth_when_options_are_known():
    choices = parse_choices("Which colour?\nA. Red\nB. Dark blue\nC. Green")
    assert choices == {"A": "Red", "B": "Dark blue", "C": "Green"}
    assert accuracy_reward(_resp("\\text{dark blue}"), "B", choices=choices) == 1.0
    assert accuracy_reward(_resp("green"), "B", choices=choices) == 0.0


def test_letter_answer_matches_option_text_ground_truth():
    choices = parse_choices("How many? (A) 10 (B) 12 (C) 15")
    assert match_choice("B", "12", choices) is True
    assert match_choice("C", "12", choices) is False


def test_prose_is_not_mistaken_for_options():
    assert parse_choices("A. Smith walked 3 km. How far?") == {}
