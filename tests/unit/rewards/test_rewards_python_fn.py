"""User functions by import path: resolution at build time, one-line ConfigErrors, the calling
convention (in-process; the runner tests call them in workers)."""
import pickle

import pytest

from megatron_rl.config.errors import ConfigError
from megatron_rl.config.schema import RewardConfig, RewardSource
from megatron_rl.rewards import PythonFunctionReward, RewardInput, build_reward_functions

MOD = "reward_fns_for_tests"


def _build(path):
    cfg = RewardConfig(sources=[RewardSource(type="math"), RewardSource(type="python", path=path)])
    return build_reward_functions(cfg)


def _one_line_error(path) -> str:
    with pytest.raises(ConfigError) as info:
        _build(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("reward.sources[1].path: ")
    return text


def test_keywords_follow_the_signature():
    inp = RewardInput(prompt="p", response="yes!", answer="a", finish_reason="length", metadata={"value": 2})
    assert PythonFunctionReward(f"{MOD}:says_yes")(inp) == 1.0
    assert PythonFunctionReward(f"{MOD}:says_yes")(RewardInput(prompt="p", response="no")) == 0.0
    assert PythonFunctionReward(f"{MOD}:all_arguments")(inp) == 3.0
    assert PythonFunctionReward(f"{MOD}:with_kwargs")(inp) == 1.0


def test_bad_return_values_raise():
    fn = PythonFunctionReward(f"{MOD}:misbehaves")
    with pytest.raises(TypeError, match="expected a float or bool"):
        fn(RewardInput(prompt="p", response="text"))
    with pytest.raises(ValueError, match="finite"):
        fn(RewardInput(prompt="p", response="nan"))


def test_pickles_by_path():
    fn = pickle.loads(pickle.dumps(PythonFunctionReward(f"{MOD}:says_yes")))
    assert fn.path == f"{MOD}:says_yes" and fn(RewardInput(prompt="", response="yes")) == 1.0


def test_file_path_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "my_reward.py").write_text("def score(response):\n    return len(response)\n")
    monkeypatch.chdir(tmp_path)
    fn = PythonFunctionReward("my_reward.py:score")
    assert fn.path == f"{tmp_path / 'my_reward.py'}:score"
    assert fn(RewardInput(prompt="", response="abc")) == 3.0


def test_built_names_weights_and_order():
    built = _build(f"{MOD}:says_yes")
    assert [(name, weight) for name, weight, _ in built] == [("math", 1.0), ("python", 1.0)]
    cfg = RewardConfig(sources=[RewardSource(type="python", path=f"{MOD}:says_yes", weight=0.5),
                                RewardSource(type="python", path=f"{MOD}:misbehaves", weight=2)])
    assert [(n, w) for n, w, _ in build_reward_functions(cfg)] == [("python", 0.5), ("python_1", 2.0)]


def test_missing_module():
    text = _one_line_error("no_such_reward_module:score")
    assert "no_such_reward_module" in text and "PYTHONPATH" in text


def test_missing_function_suggests_a_name():
    text = _one_line_error(f"{MOD}:says_yess")
    assert "has no attribute 'says_yess'" in text and "did you mean 'says_yes'" in text


@pytest.mark.parametrize(
    "path, needle",
    [
        ("no_colon_here", "is not 'module:function'"),
        (f"{MOD}:NOT_A_FUNCTION", "not a function"),
        (f"{MOD}:takes_a_sample", "required argument 'inp'"),
        ("/no/such/file.py:score", "does not exist"),
    ],
)
def test_other_bad_paths(path, needle):
    assert needle in _one_line_error(path)


def test_module_that_fails_on_import(tmp_path):
    bad = tmp_path / "broken_reward.py"
    bad.write_text("import no_such_dependency_xyz\n")
    text = _one_line_error(f"{bad}:score")
    assert "ModuleNotFoundError" in text and "no_such_dependency_xyz" in text


def test_unsupported_types_and_empty_sources():
    from megatron_rl.rewards import NOT_SUPPORTED

    for kind in NOT_SUPPORTED:  # empty once every schema type is built
        cfg = RewardConfig(sources=[RewardSource(type=kind, path="x")])
        with pytest.raises(ConfigError, match=rf"reward.sources\[0\].type: '{kind}' is not supported.*math, format"):
            build_reward_functions(cfg)
    with pytest.raises(ConfigError, match="reward.sources is empty"):
        build_reward_functions(RewardConfig(sources=[]))


def test_registry_covers_the_schema_types():
    import typing

    from megatron_rl.rewards import NOT_SUPPORTED, REWARD_SOURCES

    types = set(typing.get_args(RewardSource.model_fields["type"].annotation))
    assert set(REWARD_SOURCES) | set(NOT_SUPPORTED) == types
    assert not set(REWARD_SOURCES) & set(NOT_SUPPORTED)
