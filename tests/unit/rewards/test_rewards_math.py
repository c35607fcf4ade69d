"""The math source: final-answer extraction and math-verify equivalence, in-process."""
import pytest

from megatron_rl.rewards import MathReward, RewardInput
from megatron_rl.rewards.math import last_boxed, math_score


@pytest.mark.parametrize(
    "response, gold, expected",
    [
        ("so x = \\boxed{1/2}", "0.5", 1.0),  # fraction vs decimal
        ("The answer is \\boxed{3}.", "4", 0.0),
        ("\\boxed{4}", "4", 1.0),
        ("<think>halve it</think><answer>0.5</answer>", "1/2", 1.0),  # answer tags
        ("<answer>\\frac{1}{2}</answer>", "\\frac12", 1.0),  # LaTeX on both sides
        ("we get \\boxed{\\dfrac{2}{4}}", "0.5", 1.0),  # \dfrac, unreduced
        ("\\boxed{x^2+1}", "1+x^2", 1.0),  # symbolic equality
        ("\\boxed{\\sqrt{2}}", "\\sqrt 2", 1.0),
        ("I give up.", "3", 0.0),  # no answer at all
        ("", "3", 0.0),
        ("3 apples and 4 pears make 7", "7", 1.0),  # math-verify's own extraction: the last number
        ("3 apples and 4 pears make 7", "3", 0.0),
    ],
)
def test_math_score_hand_worked(response, gold, expected):
    assert math_score(response, gold) == expected


def test_last_boxed_wins_over_earlier_boxes_and_answer_tags():
    assert math_score("first \\boxed{4} then \\boxed{3}", "3") == 1.0
    assert math_score("first \\boxed{4} then \\boxed{3}", "4") == 0.0
    assert math_score("<answer>7</answer> but \\boxed{8}", "8") == 1.0
    assert math_score("<answer>1</answer> then <answer>2</answer>", "2") == 1.0


def test_last_boxed_balances_braces_and_skips_truncated_boxes():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{5}") == "5"
    assert last_boxed("\\boxed 5") == "5"
    assert last_boxed("\\boxed{1} and \\boxed{\\frac{1}{2") == "1"  # the last one is cut off
    assert last_boxed("no box") is None


@pytest.mark.parametrize("gold", [None, "", "   "])
def test_missing_gold_raises_a_clear_error(gold):
    with pytest.raises(ValueError, match="gold answer"):
        math_score("\\boxed{1}", gold)


def test_math_reward_source_calls_on_a_reward_input():
    src = MathReward()
    assert src(RewardInput(prompt="1+1?", response="\\boxed{2}", answer="2")) == 1.0
    assert src(RewardInput(prompt="1+1?", response="\\boxed{3}", answer="2")) == 0.0
