"""Each fixture under tests/fixtures/bad_configs breaks one rule; its first line says what the
one-line error must contain."""
import re

import pytest

from megatron_rl.config import ConfigError, load_config

from megatron_rl.config import CONFIGS_DIR

FIXTURES = CONFIGS_DIR.parent / "tests" / "fixtures" / "bad_configs"

BAD = sorted(FIXTURES.glob("*.yaml"))


def _expected(path):
    first = path.read_text().splitlines()[0]
    m = re.match(r"# expect: (.+)$", first)
    assert m, f"{path.name}: first line must be '# expect: <substring>'"
    return m.group(1).strip()


def test_enough_fixtures():
    assert len(BAD) >= 14


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_config_fails_in_one_line(path):
    expected = _expected(path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert expected in message
    # the line names a dotted key, a quoted top-level key, or (for file-level problems) the file
    assert re.search(r"\b[a-z_]+\.[a-z_]+|'[a-z_]+'|\.yaml|^model\b", message)
