from pathlib import Path

import pytest


@pytest.fixture
def write_yaml(tmp_path):
    """Write a YAML file under tmp_path and return its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write
