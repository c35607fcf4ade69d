"""Reward functions the trainer tests name by file path (`.../trainer_reward_fns.py:NAME`)."""


def raise_value_error(response):
    raise ValueError("this reward function always fails")


def always_one(response):
    return 1.0


def count_sevens(response):
    """A dense signal an untrained model can follow: samples differ, so group advantages are nonzero."""
    return float(response.count("7"))


def sevens_per_step(steps):
    """Process supervision's per-step reward: the 7s written in each step."""
    return [float(step.count("7")) for step in steps]
