"""The config schema's choices and the algorithm registries name the same things."""
import typing

from megatron_rl import algorithms as A
from megatron_rl.config import schema


def _choices(annotation) -> set:
    return set(typing.get_args(annotation))


def test_schema_literals_match_algorithm_registries():
    assert _choices(schema.AdvantageEstimator) == set(A.ADVANTAGE_ESTIMATORS)
    assert _choices(schema.LossAgg) == set(A.LOSS_AGG_MODES)
    assert _choices(schema.KLEstimator) == set(A.KL_ESTIMATORS)
    assert _choices(schema.RatioLevel) == set(A.RATIO_LEVELS)
    mismatch = schema.MismatchConfig.model_fields
    assert _choices(mismatch["level"].annotation) == set(A.MISMATCH_LEVELS)
    assert _choices(mismatch["mode"].annotation) == {"none", *A.MISMATCH_MODES}
    assert set(schema.GROUP_ESTIMATORS) <= set(A.ADVANTAGE_ESTIMATORS) - {"gae", "reinforce_plus_plus"}


def test_model_kernels_key_names_the_dispatcher_backends():
    from megatron_rl import kernels

    assert _choices(schema.ModelConfig.model_fields["kernels"].annotation) == set(kernels.BACKENDS)


def test_weight_sync_choices_are_the_transports():
    from megatron_rl import weight_sync

    choices = _choices(schema.RolloutConfig.model_fields["weight_sync"].annotation)
    assert choices - {"auto"} == set(weight_sync.TRANSPORTS)
