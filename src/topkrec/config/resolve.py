"""Resolving a command's settings: defaults < preset < config file < flags given on the command line."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topkrec.config.fields import SettingsError, setting_fields, settings_from_mapping, settings_to_mapping
from topkrec.config.toml import dumps_toml, read_toml

__all__ = ["KNOWN_SECTIONS", "SettingsGroup", "resolve_settings", "settings_markdown", "settings_toml"]

KNOWN_SECTIONS = ("agent", "train", "pretrain")
"""Tables a topkrec config file may hold; a command reads the ones it uses and ignores the others."""


@dataclass(frozen=True)
class SettingsGroup:
    """One settings dataclass as a command exposes it."""

    section: str
    """Table name in config files (``agent``, ``train``, ``pretrain``)."""
    cls: type
    prefix: str = ""
    """Option-name prefix in this command (``pretrain-`` in ``demo``: ``--pretrain-epochs``)."""
    exclude: frozenset[str] = frozenset()
    """Settings this command sets itself (``compare`` sets ``correction`` per variant)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """This command's own defaults, over the dataclass's (``demo`` pretrains 2 epochs)."""

    def names(self) -> list[str]:
        return [f.name for f, _ in setting_fields(self.cls) if f.name not in self.exclude]


def resolve_settings(
    groups: Sequence[SettingsGroup],
    explicit: Mapping[str, Mapping[str, Any]],
    config_file: Path | None = None,
    preset: str | None = None,
    presets: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """``{section: config instance}``: each group's defaults, then its command defaults, then ``preset``,
    then the config file's table, then the ``explicit`` values (flags given on the command line)."""
    presets = presets or {}
    if preset is not None and preset not in presets:
        raise SettingsError(f"unknown --preset {preset!r}; available: {', '.join(sorted(presets)) or 'none'}")
    doc: dict[str, Any] = {}
    source = ""
    if config_file is not None:
        doc = read_toml(config_file)
        source = str(config_file)
        unknown = sorted(set(doc) - set(KNOWN_SECTIONS))
        if unknown:
            raise SettingsError(
                f"{source}: unknown table{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"a topkrec config has {', '.join(f'[{s}]' for s in KNOWN_SECTIONS)}"
            )
    out: dict[str, Any] = {}
    for group in groups:
        values: dict[str, Any] = dict(group.defaults)
        if preset is not None:
            values.update(presets[preset].get(group.section, {}))
        table = doc.get(group.section, {})
        if not isinstance(table, dict):
            raise SettingsError(f"{source}: [{group.section}] must be a table of settings")
        from_file = settings_from_mapping(group.cls, table, f"{source} [{group.section}]")
        values.update({k: v for k, v in from_file.items() if k not in group.exclude})
        values.update(explicit.get(group.section, {}))
        out[group.section] = group.cls(**values)
    return out


def settings_toml(configs: Mapping[str, Any], header: str = "") -> str:
    """The ``config.toml`` text of resolved settings ``{section: config instance}``."""
    tables = {}
    for section, cfg in configs.items():
        if not dataclasses.is_dataclass(cfg):
            raise TypeError(f"{section}: expected a settings dataclass, got {type(cfg).__name__}")
        tables[section] = settings_to_mapping(cfg)
    return dumps_toml(tables, header)


def settings_markdown(groups: Sequence[SettingsGroup]) -> str:
    """A markdown table of ``groups``' settings (flag | default | meaning), as the docs show them."""
    import typing

    from topkrec.config.fields import SettingSpec, choices_of, flag_of

    lines = ["| flag | default | meaning |", "|---|---|---|"]
    for group in groups:
        hints = typing.get_type_hints(group.cls)
        for f, spec in setting_fields(group.cls):
            if f.name in group.exclude:
                continue
            assert isinstance(spec, SettingSpec)
            default = group.defaults.get(f.name, f.default)
            flag = flag_of(f, spec, group.prefix)
            if isinstance(default, bool):
                on, _, off = (spec.flag or f.name.replace("_", "-")).partition("/")
                flag = f"--{group.prefix}{on} / --{group.prefix}{off or 'no-' + on}"
                shown = f"--{group.prefix}{on}" if default else f"--{group.prefix}{off or 'no-' + on}"
            elif default is None:
                shown = "none"
            elif isinstance(default, float):
                shown = f"{default:.6g}"
            elif isinstance(default, tuple):
                shown = ",".join(str(v) for v in default)
            else:
                shown = str(default)
            text = spec.help
            choices = choices_of(hints[f.name], spec)
            if choices:
                text += f" One of: {', '.join(choices)}."
            if spec.none_flag:
                flag += f" / {spec.none_flag}"
            lines.append(f"| `{flag}` | `{shown}` | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
