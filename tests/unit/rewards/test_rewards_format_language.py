"""The format and language sources, in-process."""
import pytest

from megatron_rl.config.errors import ConfigError
from megatron_rl.config.schema import RewardSource
from megatron_rl.rewards import FormatReward, LanguageReward, RewardInput
from megatron_rl.rewards.language import count_tokens, dominant_script, script_of, think_span


def _inp(response, prompt="What is 2+2?", **metadata):
    return RewardInput(prompt=prompt, response=response, answer="4", metadata=metadata)


# --- format -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        "<think>2+2 is 4</think><answer>4</answer>",
        "  <think>\nadd\n</think>\n\n<answer>\n4\n</answer>\n",
    ],
)
def test_format_accepts_the_r1_layout(response):
    assert FormatReward()(_inp(response)) == 1.0


@pytest.mark.parametrize(
    "response",
    [
        "4",
        "<answer>4</answer>",  # no think
        "<think>add</think>",  # no answer
        "<answer>4</answer><think>add</think>",  # wrong order
        "<think>add</think><answer>4</answer> and more text",  # trailing text
        "preamble <think>add</think><answer>4</answer>",  # leading text
        "<think>a</think><think>b</think><answer>4</answer>",  # two think blocks
        "<think>add</think><answer>4",  # cut off
    ],
)
def test_format_rejects_other_layouts(response):
    assert FormatReward()(_inp(response)) == 0.0


def test_format_when_the_prompt_opens_the_think_block():
    prompt = "<|im_start|>assistant\n<think>\n"
    assert FormatReward()(_inp("add them</think><answer>4</answer>", prompt=prompt)) == 1.0
    assert FormatReward()(_inp("add them</think><answer>4</answer>")) == 0.0  # prompt without <think>


def test_format_custom_pattern_and_bad_pattern():
    fmt = FormatReward(pattern=r"Answer: \d+")
    assert fmt(_inp("Answer: 4")) == 1.0
    assert fmt(_inp("Answer: four")) == 0.0

    class Source:  # a RewardSource with the proposed `pattern` field
        type, weight, path, pattern = "format", 1.0, None, "(unclosed"

    with pytest.raises(ConfigError, match=r"reward.sources\[0\].pattern"):
        FormatReward.from_source(Source(), "reward.sources[0]")
    assert FormatReward.from_source(RewardSource(type="format"), "reward.sources[0]").pattern is None


# --- language -----------------------------------------------------------------------------------


def test_token_counts_by_script_ignore_latex_numbers_and_tags():
    assert count_tokens("We compute $x^2$ and \\frac{1}{2}, so 42.") == {"latin": 4, "cjk": 0, "other": 0}
    assert count_tokens("我们计算 the sum") == {"latin": 2, "cjk": 4, "other": 0}
    assert count_tokens("Привет world") == {"latin": 1, "cjk": 0, "other": 1}
    assert count_tokens("<think>café</think>") == {"latin": 1, "cjk": 0, "other": 0}


def test_language_all_english_scores_one():
    assert LanguageReward()(_inp("<think>We add two and two.</think><answer>4</answer>")) == 1.0


def test_language_mixed_cjk_in_an_english_cot():
    # think span: We, add, now (3 Latin) + 二, 加, 二 (3 CJK); the answer span is not scored
    assert LanguageReward()(_inp("<think>We add 二加二 now</think><answer>四</answer>")) == 0.5


def test_language_target_follows_the_prompt_script():
    # prompt is Chinese -> target CJK; think span: 二,加,二 (3 CJK) + is, four (2 Latin)
    assert LanguageReward()(_inp("<think>二加二 is four</think><answer>4</answer>", prompt="二加二等于几？")) == 0.6
    assert dominant_script("二加二等于几？ please") == "cjk"
    assert dominant_script("") == "latin"


def test_language_metadata_and_option_override_the_prompt():
    response = "<think>二加二 is four</think><answer>4</answer>"
    assert LanguageReward()(_inp(response, language="en")) == pytest.approx(0.4)
    assert LanguageReward(language="zh")(_inp(response)) == pytest.approx(0.6)
    assert LanguageReward(language="zh")(_inp(response, language="English")) == pytest.approx(0.4)


def test_language_without_think_span_scores_the_whole_response_and_empty_is_zero():
    assert LanguageReward()(_inp("Four. 四")) == 0.5
    assert LanguageReward()(_inp("<think>2+2=4</think>4")) == 0.0


def test_think_span():
    assert think_span("q", "<think>a b</think>c") == "a b"
    assert think_span("q <think>", "a b</think>c") == "a b"
    assert think_span("q", "a b</think>c") == "a b</think>c"
    assert think_span("q", "no tags") == "no tags"


def test_language_names():
    assert script_of("en") == script_of("English") == script_of("latin") == "latin"
    assert script_of("zh-CN") == script_of("ja") == script_of("ko") == script_of("CJK") == "cjk"
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        script_of("klingon")
    with pytest.raises(ValueError, match="unknown language"):
        LanguageReward()(_inp("<think>hi</think>", language="klingon"))


def test_sources_survive_pickling_for_the_workers():
    import pickle

    fmt = pickle.loads(pickle.dumps(FormatReward(pattern=r"Answer: \d+")))
    assert fmt(_inp("Answer: 4")) == 1.0
    lang = pickle.loads(pickle.dumps(LanguageReward(language="zh")))
    assert lang.script == "cjk"


def test_language_from_source():
    class Source:  # a RewardSource with the proposed `language` field
        type, weight, path, language = "language", 1.0, None, "klingon"

    with pytest.raises(ConfigError, match=r"reward.sources\[2\].language: .*unknown language 'klingon'"):
        LanguageReward.from_source(Source(), "reward.sources[2]")
    Source.language = "ja"
    assert LanguageReward.from_source(Source(), "reward.sources[2]").script == "cjk"
    assert LanguageReward.from_source(RewardSource(type="language"), "reward.sources[0]").script is None
