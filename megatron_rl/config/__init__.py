"""Run configuration: the typed schema, YAML loading with includes and dotted overrides, and the
checks that fail a bad config in one line before any GPU is touched."""
from .checks import check_run
from .errors import ConfigError
from .layout import RankLayout
from .loader import CONFIGS_DIR, build_config, load_config, layout_summary, resolved_yaml, save_resolved
from .schema import GROUP_ESTIMATORS, RunConfig

__all__ = [
    "CONFIGS_DIR",
    "ConfigError",
    "GROUP_ESTIMATORS",
    "RankLayout",
    "RunConfig",
    "build_config",
    "check_run",
    "layout_summary",
    "load_config",
    "resolved_yaml",
    "save_resolved",
]
