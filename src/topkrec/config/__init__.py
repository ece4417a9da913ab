"""Settings declared once (frozen dataclasses with :func:`setting` fields), config files, resolution.

See :mod:`topkrec.config.fields` for the declaration, :mod:`topkrec.config.resolve` for how a command's
settings are resolved (defaults < preset < ``--config`` file < flags) and :mod:`topkrec.config.toml` for
the ``config.toml`` every run writes beside its outputs.
"""

from topkrec.config.fields import (
    SettingsError,
    SettingSpec,
    check_settings,
    coerce_value,
    flag_of,
    setting,
    setting_fields,
    settings_from_mapping,
    settings_to_mapping,
    split_optional,
)
from topkrec.config.resolve import KNOWN_SECTIONS, SettingsGroup, resolve_settings, settings_toml
from topkrec.config.toml import CONFIG_TOML, dumps_toml, read_toml

__all__ = [
    "CONFIG_TOML",
    "KNOWN_SECTIONS",
    "SettingSpec",
    "SettingsError",
    "SettingsGroup",
    "check_settings",
    "coerce_value",
    "dumps_toml",
    "flag_of",
    "read_toml",
    "resolve_settings",
    "setting",
    "setting_fields",
    "settings_from_mapping",
    "settings_to_mapping",
    "settings_toml",
    "split_optional",
]
