"""Settings declared once: a dataclass field carries its default, range, choices, flag and help text.

Every stage's configuration (``AgentConfig``, ``TrainConfig``, ``PretrainConfig``) is a frozen dataclass
whose fields are made with :func:`setting`. That one declaration is read by

- :func:`check_settings` (called from each config's ``__post_init__``): types, finiteness, ranges and
  choices, with errors that name the command-line flag;
- :mod:`topkrec.cli.settings`, which generates the command-line options of ``train``, ``compare``,
  ``demo`` and ``pretrain`` from the fields;
- :mod:`topkrec.config.toml`, which writes and reads the resolved settings as ``config.toml``.

A field made with plain ``dataclasses.field`` (or none) is *derived* (e.g. the dataset's ``n_items``):
saved with the model, never a flag, never in a config file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from topkrec.errors import TopkrecError

__all__ = [
    "SettingSpec",
    "SettingsError",
    "check_settings",
    "choices_of",
    "coerce_value",
    "flag_of",
    "setting",
    "setting_fields",
    "settings_from_mapping",
    "settings_to_mapping",
    "split_optional",
]


class SettingsError(TopkrecError):
    """A setting's value is of the wrong type, out of range, not finite or not one of its choices."""


@dataclass(frozen=True)
class SettingSpec:
    """What :func:`setting` records in a field's metadata."""

    help: str
    flag: str | None = None
    """Option name without the leading dashes (default: the field name with ``_`` → ``-``); for a bool,
    ``"on/off"`` names both switches (``"sparse-embeddings/dense-embeddings"``)."""
    aliases: tuple[str, ...] = ()
    """Other accepted option names (full, with dashes), kept for older command lines (``--embed-dim``)."""
    none_flag: str | None = None
    """A switch that sets an optional setting to None (``--no-cap``)."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    """Allowed values of a ``str`` setting; ``Literal`` fields get theirs from the annotation."""
    resume_locked: bool = False
    """Must not change between an interrupted run and its ``--resume``."""


def setting(
    default: Any,
    help: str,  # noqa: A002 - the natural name for a CLI help text
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    none_flag: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
    resume_locked: bool = False,
) -> Any:
    """A dataclass field that is a user setting (see the module docstring)."""
    spec = SettingSpec(help, flag, aliases, none_flag, ge, gt, le, lt, choices, resume_locked)
    return dataclasses.field(default=default, metadata={"setting": spec})


def setting_fields(cls: type) -> Iterator[tuple[dataclasses.Field[Any], SettingSpec]]:
    """The (field, spec) pairs of ``cls``'s settings, in declaration order (derived fields skipped)."""
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("setting")
        if isinstance(spec, SettingSpec):
            yield f, spec


def flag_of(f: dataclasses.Field[Any], spec: SettingSpec, prefix: str = "") -> str:
    """The option name of a setting, with dashes: ``--lr``, ``--pretrain-epochs``, ``--bf16`` (bool: the on switch)."""
    name = spec.flag or f.name.replace("_", "-")
    return f"--{prefix}{name.split('/')[0]}"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def split_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def choices_of(tp: Any, spec: SettingSpec) -> tuple[str, ...] | None:
    inner, _ = split_optional(tp)
    if typing.get_origin(inner) is Literal:
        return tuple(str(v) for v in typing.get_args(inner))
    return spec.choices


def _describe_range(spec: SettingSpec) -> str:
    parts = []
    if spec.gt is not None:
        parts.append(f"> {spec.gt:g}")
    if spec.ge is not None:
        parts.append(f">= {spec.ge:g}")
    if spec.lt is not None:
        parts.append(f"< {spec.lt:g}")
    if spec.le is not None:
        parts.append(f"<= {spec.le:g}")
    return " and ".join(parts)


def coerce_value(cls: type, name: str, value: Any, where: str = "") -> Any:
    """``value`` converted to the type of setting ``name`` of ``cls`` (from TOML, JSON or a flag's text).

    Accepts ints for floats, ``"none"`` for optional settings, ``-`` for ``_`` in choices
    (``log-uniform``), lists for tuples; refuses bools for numbers and anything else of the wrong type.
    """
    f = {fl.name: fl for fl in dataclasses.fields(cls)}[name]
    spec = f.metadata.get("setting") or SettingSpec(help="")
    tp = _hints(cls)[name]
    inner, optional = split_optional(tp)
    label = where or flag_of(f, spec)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() == "none"):
        if optional:
            return None
        raise SettingsError(f"{label} must be set (got none)")
    choices = choices_of(tp, spec)
    if choices is not None:
        text = str(value)
        if text not in choices and text.replace("-", "_") in choices:
            text = text.replace("-", "_")
        return text
    origin = typing.get_origin(inner)
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "yes", "no", "1", "0"):
            return value.lower() in ("true", "on", "yes", "1")
        raise SettingsError(f"{label} must be true or false (got {value!r})")
    if inner is int:
        return _coerce_int(value, label)
    if inner is float:
        if isinstance(value, bool):
            raise SettingsError(f"{label} must be a number (got {value!r})")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise SettingsError(f"{label} must be a number (got {value!r})")
    if origin is tuple:
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise SettingsError(f"{label} must be a list of integers like 256,128 (got {value!r})")
        return tuple(_coerce_int(v, label) for v in items)
    if inner is str:
        if isinstance(value, str):
            return value
        raise SettingsError(f"{label} must be text (got {value!r})")
    return value


def _coerce_int(value: Any, label: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise SettingsError(f"{label} must be an integer (got {value!r})")


def check_settings(obj: Any) -> None:
    """Validate every setting of the dataclass instance ``obj`` against its declaration.

    Raises one ``SettingsError`` listing every problem, each naming its flag, e.g.
    ``--lr must be > 0 and finite (got nan)``.
    """
    cls = type(obj)
    hints = _hints(cls)
    problems: list[str] = []
    for f, spec in setting_fields(cls):
        value = getattr(obj, f.name)
        label = flag_of(f, spec)
        tp = hints[f.name]
        inner, optional = split_optional(tp)
        if value is None:
            if not optional:
                problems.append(f"{label} must be set")
            continue
        choices = choices_of(tp, spec)
        if choices is not None:
            if value not in choices:
                problems.append(f"{label} must be one of {', '.join(choices)} (got {value!r})")
            continue
        if inner is bool:
            if not isinstance(value, bool):
                problems.append(f"{label} must be true or false (got {value!r})")
            continue
        if inner in (int, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{label} must be a number (got {value!r})")
                continue
            if inner is int and not isinstance(value, int):
                problems.append(f"{label} must be an integer (got {value!r})")
                continue
            if not math.isfinite(value):
                problems.append(f"{label} must be finite (got {value})")
                continue
            if not _in_range(value, spec):
                problems.append(f"{label} must be {_describe_range(spec)} (got {value:g})")
            continue
        if typing.get_origin(inner) is tuple:
            if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                problems.append(f"{label} must be a tuple of integers (got {value!r})")
            elif not all(_in_range(v, spec) for v in value):
                problems.append(f"every {label} value must be {_describe_range(spec)} (got {value})")
    if problems:
        raise SettingsError("; ".join(problems))


def _in_range(value: float, spec: SettingSpec) -> bool:
    return not (
        (spec.gt is not None and not value > spec.gt)
        or (spec.ge is not None and not value >= spec.ge)
        or (spec.lt is not None and not value < spec.lt)
        or (spec.le is not None and not value <= spec.le)
    )


def settings_to_mapping(obj: Any) -> dict[str, Any]:
    """The settings of ``obj`` (derived fields left out), tuples as lists: what ``config.toml`` holds."""
    out: dict[str, Any] = {}
    for f, _ in setting_fields(type(obj)):
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def settings_from_mapping(cls: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Keyword arguments for ``cls`` from a mapping of setting names (a config file's section).

    Unknown names are an error naming ``where`` (file and section) and the known names.
    """
    known = {f.name for f, _ in setting_fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(
            f"{where}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    return {k: coerce_value(cls, k, v, f"{where}: {k}") for k, v in values.items()}
