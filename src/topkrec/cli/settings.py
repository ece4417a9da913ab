"""Command-line options generated from the settings dataclasses (``topkrec.config``).

``settings_command(groups)`` decorates a command function that takes ``settings`` (a dict
``{section: config instance}``) besides its own options. The decorator adds one option per setting of
each group — name, type, default and help all read from the field's :func:`topkrec.config.setting`
declaration — plus ``--config FILE`` (TOML, e.g. a model directory's ``config.toml``), ``--preset NAME``
and ``--print-config``. Precedence: defaults < preset < config file < the flags given on the command line.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from topkrec.config.fields import SettingSpec, choices_of, coerce_value, flag_of, setting_fields, split_optional
from topkrec.config.resolve import SettingsGroup, resolve_settings, settings_toml

__all__ = ["SettingOption", "setting_options", "settings_command"]

_EXPLICIT_SOURCES = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


@dataclasses.dataclass(frozen=True)
class SettingOption:
    """One generated option: which group and setting it sets, and how."""

    param: str  # Python parameter name in the generated signature
    section: str
    name: str  # setting (field) name
    flags: tuple[str, ...]  # option declarations, e.g. ("--lr",) or ("--bf16/--no-bf16",)
    sets_none: bool = False  # the --no-cap style switch of an optional setting


def _option_type(tp: Any, spec: SettingSpec) -> type:
    inner, optional = split_optional(tp)
    if choices_of(tp, spec) is not None or optional or typing.get_origin(inner) is tuple:
        return str  # parsed by coerce_value: "none", "log-uniform", "256,128"
    if inner in (bool, int, float, str):
        return typing.cast(type, inner)
    return str


def _help(spec: SettingSpec, tp: Any) -> str:
    text = spec.help
    choices = choices_of(tp, spec)
    if choices:
        text += f" (one of: {', '.join(choices)})"
    _, optional = split_optional(tp)
    if optional and not spec.none_flag and choices is None:
        text += " ('none' to unset)"
    return text


def _shown_default(value: Any) -> Any:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value


def setting_options(groups: Sequence[SettingsGroup]) -> tuple[list[SettingOption], list[inspect.Parameter]]:
    """The options a command with ``groups`` gets, and their ``inspect.Parameter`` for typer."""
    options: list[SettingOption] = []
    params: list[inspect.Parameter] = []
    for group in groups:
        hints = typing.get_type_hints(group.cls)
        for f, spec in setting_fields(group.cls):
            if f.name in group.exclude:
                continue
            tp = hints[f.name]
            param = f"{group.prefix.replace('-', '_')}{f.name}"
            default = group.defaults.get(f.name, f.default)
            name = spec.flag or f.name.replace("_", "-")
            if split_optional(tp)[0] is bool:
                on, _, off = name.partition("/")
                decl = f"--{group.prefix}{on}/--{group.prefix}{off or 'no-' + on}"
            else:
                decl = flag_of(f, spec, group.prefix)
            decls = (decl, *(a for a in spec.aliases if not group.prefix))
            option = typer.Option(_shown_default(default), *decls, help=_help(spec, tp), show_default=True)
            options.append(SettingOption(param, group.section, f.name, decls))
            params.append(
                inspect.Parameter(
                    param, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=_option_type(tp, spec)
                )
            )
            if spec.none_flag and not group.prefix:
                none_param = f"{param}__none"
                options.append(SettingOption(none_param, group.section, f.name, (spec.none_flag,), sets_none=True))
                params.append(
                    inspect.Parameter(
                        none_param,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=typer.Option(False, spec.none_flag, help=f"Set {decl} to none.", show_default=False),
                        annotation=bool,
                    )
                )
    return options, params


def _explicit(ctx: Any, param: str) -> bool:
    source = ctx.get_parameter_source(param)
    return source is not None and getattr(source, "name", str(source)) in _EXPLICIT_SOURCES


def settings_command(
    groups: Sequence[SettingsGroup], presets: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: generate ``groups``' options for a command whose function takes ``settings``."""
    groups = tuple(groups)

    def deco(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func)
        hints = typing.get_type_hints(func)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.name != "settings"
        ]
        # Options the command requires (``typer.Option(...)``) are optional to the parser, so that
        # ``--print-config`` works without them; the wrapper asks for them on any other run.
        required: list[str] = []
        for i, p in enumerate(own):
            info = p.default
            if isinstance(info, typer.models.OptionInfo) and info.default is ...:
                loose = copy.copy(info)
                loose.default = None
                loose.help = f"{info.help or ''} Required, except with --print-config.".lstrip()
                required.append(p.name)
                own[i] = p.replace(default=loose, annotation=p.annotation | None)
        options, generated = setting_options(groups)
        clash = {p.name for p in own} & {p.name for p in generated}
        if clash:
            raise TypeError(f"{func.__name__}: parameters {sorted(clash)} clash with generated setting options")
        extra = [
            inspect.Parameter(
                "config_file",
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    None,
                    "--config",
                    help="TOML file of settings (\\[agent], \\[train], \\[pretrain] tables; "
                    "e.g. a model's config.toml). Flags given on the command line override it.",
                ),
                annotation=Path | None,
            ),
            inspect.Parameter(
                "print_config",
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(False, "--print-config", help="Print the resolved settings as TOML and exit."),
                annotation=bool,
            ),
        ]
        if presets:
            extra.append(
                inspect.Parameter(
                    "preset",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=typer.Option(
                        None, "--preset", help=f"Named settings under the config file and flags: {', '.join(presets)}."
                    ),
                    annotation=str | None,
                )
            )
        ctx_param = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        own_names = [p.name for p in own]

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            ctx = kwargs.pop("ctx")
            config_file = kwargs.pop("config_file")
            print_config = kwargs.pop("print_config")
            preset = kwargs.pop("preset", None)
            explicit: dict[str, dict[str, Any]] = {}
            for opt in options:
                value = kwargs.pop(opt.param)
                if not _explicit(ctx, opt.param):
                    continue
                group = next(g for g in groups if g.section == opt.section)
                if opt.sets_none:
                    if value:
                        explicit.setdefault(opt.section, {})[opt.name] = None
                    continue
                label = opt.flags[0].split("/")[0]
                explicit.setdefault(opt.section, {})[opt.name] = coerce_value(group.cls, opt.name, value, label)
            settings = resolve_settings(groups, explicit, config_file, preset, presets)
            if print_config:
                typer.echo(settings_toml(settings), nl=False)
                return None
            missing = [name for name in required if kwargs[name] is None]
            if missing:  # click's own error (usage line, status 2), from whichever click typer runs on
                exceptions = sys.modules[typer.BadParameter.__module__]
                param = next(p for p in ctx.command.params if p.name == missing[0])
                raise exceptions.MissingParameter(ctx=ctx, param=param)
            return func(**{k: kwargs[k] for k in own_names}, settings=settings)

        params = [*own, *generated, *extra, ctx_param]
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.settings_options = options  # type: ignore[attr-defined]  # for tests and docs
        wrapper.settings_groups = groups  # type: ignore[attr-defined]
        return wrapper

    return deco
