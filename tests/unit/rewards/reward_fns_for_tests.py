"""User reward functions for the rewards tests, resolved by import path `reward_fns_for_tests:NAME`.

pytest's default (prepend) import mode puts this directory on sys.path when a test module beside it
is imported; the runner passes sys.path on to its worker processes.
"""
import os
import time

NOT_A_FUNCTION = 3


def says_yes(response):
    """1.0 when the response contains 'yes' (a bool return value, turned into a float)."""
    return "yes" in response


def all_arguments(prompt, response, answer, finish_reason, metadata):
    return float(metadata["value"]) + (finish_reason == "length")


def with_kwargs(**kwargs):
    return float(sorted(kwargs) == ["answer", "finish_reason", "metadata", "prompt", "response", "steps"])


def takes_a_sample(inp):
    return 1.0


def misbehaves(response):
    """By the response: 'boom' raises, 'hang' sleeps 60 s, 'stubborn' hangs and swallows the
    runner's timeout, 'die' kills its process, 'text' returns a string, 'nan' returns NaN; else 1."""
    if "boom" in response:
        raise ValueError("boom in the response")
    if "hang" in response:
        time.sleep(60)
    if "stubborn" in response:
        while True:
            try:
                time.sleep(60)
            except BaseException:  # noqa: BLE001 - the point: an uninterruptible function
                pass
    if "die" in response:
        os._exit(3)
    if "text" in response:
        return "1.0"
    if "nan" in response:
        return float("nan")
    return 1.0


def _cannot_rebuild():
    raise RuntimeError("this source cannot be rebuilt in a worker")


class FailsInWorker:
    """A source that works here but cannot be unpickled in a worker process."""

    name = "fails_in_worker"

    def __call__(self, inp):
        return 1.0

    def __reduce__(self):
        return (_cannot_rebuild, ())


def _slow_rebuild():
    time.sleep(30)
    return SlowToStart()


class SlowToStart:
    """A source whose worker takes 30 s to start (its unpickling sleeps)."""

    def __call__(self, inp):
        return 1.0

    def __reduce__(self):
        return (_slow_rebuild, ())
