"""Settings declared once: every field settable from every command that trains, config files, presets,
validation that names the flag, and the resolved config.toml that reproduces a run."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from support.agent_data import synth_dataset
from topkrec.cli import app
from topkrec.config import SettingsError, check_settings, flag_of, setting_fields, split_optional
from topkrec.config.fields import choices_of
from topkrec.embeddings.config import PretrainConfig
from topkrec.errors import ArtifactError, TopkrecError
from topkrec.policy.config import PRESETS, AgentConfig, TrainConfig

runner = CliRunner()

# (command, the arguments it requires, {section: (settings class, option prefix, excluded settings)})
COMMANDS: list[tuple[str, list[str], dict[str, tuple[type, str, set[str]]]]] = [
    ("train", ["--data", "D", "--out", "M"], {"agent": (AgentConfig, "", set()), "train": (TrainConfig, "", set())}),
    (
        "compare",
        ["--data", "D", "--out", "M"],
        {"agent": (AgentConfig, "", set()), "train": (TrainConfig, "", {"correction"})},
    ),
    (
        "demo",
        ["--out", "M"],
        {
            "agent": (AgentConfig, "", set()),
            "train": (TrainConfig, "", set()),
            "pretrain": (PretrainConfig, "pretrain-", set()),
        },
    ),
    ("pretrain", ["--data", "D", "--out", "E"], {"pretrain": (PretrainConfig, "", set())}),
]


def _other_value(cls: type, name: str) -> tuple[str, Any]:
    """A valid non-default value of setting ``name`` as (command-line text, expected resolved value)."""
    f = {fl.name: fl for fl in dataclasses.fields(cls)}[name]
    spec = f.metadata["setting"]
    tp = typing.get_type_hints(cls)[name]
    inner, optional = split_optional(tp)
    default = f.default
    choices = choices_of(tp, spec)
    if choices:
        other = next(c for c in choices if c != default)
        return other.replace("_", "-"), other  # dashes are accepted for underscores (log-uniform)
    if inner is bool:
        return "", not default
    if name == "device":
        return "cpu", "cpu"
    if typing.get_origin(inner) is tuple:
        return "64,16", (64, 16)
    if inner is int:
        value = 5 if default is None else default + 3
        return str(value), value
    if inner is float:
        if default in (None, 0.0):
            value = 0.5
        elif (spec.le is not None and default * 2 > spec.le) or (spec.lt is not None and default * 2 >= spec.lt):
            value = default / 2  # doubling would leave the allowed range (e.g. dropout 0.5, < 1)
        else:
            value = default * 2
        return repr(value), value
    raise AssertionError(f"no test value for {cls.__name__}.{name}")


def _flag_args(cls: type, name: str, prefix: str, text: str, value: Any) -> list[str]:
    f = {fl.name: fl for fl in dataclasses.fields(cls)}[name]
    spec = f.metadata["setting"]
    if isinstance(value, bool):
        on, _, off = (spec.flag or name.replace("_", "-")).partition("/")
        return [f"--{prefix}{on}" if value else f"--{prefix}{off or 'no-' + on}"]
    return [flag_of(f, spec, prefix), text]


def _print_config(command: str, args: list[str]) -> dict[str, Any]:
    r = runner.invoke(app, [command, *args, "--print-config"])
    assert r.exit_code == 0, (args, r.output)
    return tomllib.loads(r.output)


CASES = [
    pytest.param(command, required, section, cls, prefix, f.name, id=f"{command}-{section}.{f.name}")
    for command, required, groups in COMMANDS
    for section, (cls, prefix, excluded) in groups.items()
    for f, _ in setting_fields(cls)
    if f.name not in excluded
]


@pytest.mark.parametrize(("command", "required", "section", "cls", "prefix", "name"), CASES)
def test_every_setting_is_settable_from_every_command_that_trains(command, required, section, cls, prefix, name):
    text, value = _other_value(cls, name)
    doc = _print_config(command, [*required, *_flag_args(cls, name, prefix, text, value)])
    got = doc[section][name]
    assert (tuple(got) if isinstance(got, list) else got) == value


def test_every_command_exposes_exactly_its_groups_settings():
    """The generated options of each command are the settings of its groups (and nothing is left out)."""
    from topkrec.cli import agent, pretrain

    functions = {
        "train": agent.train_command,
        "compare": agent.compare_command,
        "demo": agent.demo_command,
        "pretrain": pretrain.pretrain_command,
    }
    for command, _, groups in COMMANDS:
        options = functions[command].settings_options
        got = {(o.section, o.name) for o in options}
        want = {(s, f.name) for s, (cls, _, ex) in groups.items() for f, _ in setting_fields(cls) if f.name not in ex}
        assert got == want, command


def test_optional_settings_take_none_and_the_no_cap_switch():
    base = ["--data", "D", "--out", "M"]
    assert _print_config("train", base)["train"]["cap"] == pytest.approx(math.exp(3.0))
    assert _print_config("train", [*base, "--no-cap"])["train"]["cap"] == "none"
    assert _print_config("train", [*base, "--cap", "none"])["train"]["cap"] == "none"
    assert _print_config("train", [*base, "--behavior-lr", "0.01"])["train"]["behavior_lr"] == 0.01
    assert _print_config("train", [*base, "--embed-dim", "12"])["agent"]["embed_size"] == 12  # the older name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "nan"], "--lr must be finite"),
        (["--lr", "inf"], "--lr must be finite"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--gamma", "2"], "--gamma must be >= 0 and <= 1"),
        (["--gamma", "nan"], "--gamma must be finite"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--temperature", "nan"], "--temperature must be finite"),
        (["--behavior-lr", "-1"], "--behavior-lr must be > 0"),
        (["--hidden", "0"], "--hidden must be >= 1"),
        (["--hist-num", "0"], "--hist-num must be >= 1"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (["--correction", "bogus"], "--correction must be one of none, is, topk"),
        (["--encoder", "lstm"], "--encoder must be one of concat, mean, gru, cfn"),
        (["--cap", "abc"], "--cap must be a number"),
        (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_flag(args, message):
    r = runner.invoke(app, ["train", "--data", "D", "--out", "M", *args, "--print-config"])
    assert r.exit_code != 0
    assert isinstance(r.exception, TopkrecError) and message in str(r.exception), r.output


def test_installed_command_reports_a_bad_setting_with_status_2(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "topkrec",
            "train",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "m"),
            "--lr",
            "nan",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: --lr must be finite (got nan)", r.stderr
    assert not (tmp_path / "m").exists()


def test_config_file_then_flags_then_preset_precedence(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[agent]\nencoder = "gru"\nhidden = 32\n\n[train]\nlr = 0.002\nepochs = 3\ncap = "none"\n')
    base = ["--data", "D", "--out", "M"]
    doc = _print_config("train", [*base, "--config", str(cfg), "--epochs", "7"])
    assert doc["agent"]["encoder"] == "gru" and doc["agent"]["hidden"] == 32
    assert doc["train"]["lr"] == 0.002 and doc["train"]["cap"] == "none"
    assert doc["train"]["epochs"] == 7  # the flag wins over the file
    seed = _print_config("train", [*base, "--preset", "seed"])
    assert (
        seed["train"]["lr"] == 1e-5 and seed["train"]["cap"] == 2.0 and seed["agent"]["trainable_embeddings"] is False
    )
    mixed = _print_config("train", [*base, "--preset", "seed", "--config", str(cfg)])
    assert mixed["train"]["lr"] == 0.002 and mixed["train"]["k"] == PRESETS["seed"]["train"]["k"]  # file over preset


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nlrr = 1\n", "unknown setting lrr"),
        ("[trian]\nlr = 1\n", "unknown table trian"),
        ("[train]\nlr = 'fast'\n", "lr must be a number"),
        ("[train]\nlr = -1\n", "--lr must be > 0"),
        ("[train\nlr = 1\n", "is not valid TOML"),
    ],
)
def test_config_file_errors_name_the_file_and_setting(tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = runner.invoke(app, ["train", "--data", "D", "--out", "M", "--config", str(cfg), "--print-config"])
    assert isinstance(r.exception, TopkrecError) and message in str(r.exception), r.output


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("settings") / "data"
    d.mkdir()
    synth_dataset(n_users=40, n_items=60, seed=2).save(d)
    return d


def _weights(model: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{f.stem}.{k}": v for f in model.glob("*_head.safetensors") for k, v in load_file(str(f)).items()}


def test_config_round_trip_file_run_written_config_same_run(data_dir, tmp_path):
    """A file → a run → its written config.toml → a second run with the same settings and weights."""
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        '[agent]\nencoder = "mean"\nhidden = 16\nembed_size = 8\n\n'
        '[train]\nlr = 0.003\nmax_steps = 4\nbatch_size = 32\ndevice = "cpu"\ncorrection = "is"\n'
    )
    first, second = tmp_path / "m1", tmp_path / "m2"
    r = runner.invoke(
        app, ["--no-progress", "train", "--data", str(data_dir), "--out", str(first), "--config", str(cfg)]
    )
    assert r.exit_code == 0, r.output
    written = first / "config.toml"
    doc = tomllib.loads(written.read_text())
    assert doc["agent"]["encoder"] == "mean" and doc["train"]["lr"] == 0.003 and doc["train"]["max_steps"] == 4
    r = runner.invoke(
        app, ["--no-progress", "train", "--data", str(data_dir), "--out", str(second), "--config", str(written)]
    )
    assert r.exit_code == 0, r.output
    assert (second / "config.toml").read_text() == written.read_text()
    one, two = _weights(first), _weights(second)
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    show = runner.invoke(app, ["config", "show", str(first)])
    assert show.exit_code == 0 and tomllib.loads(show.output) == doc
    assert runner.invoke(app, ["config", "diff", str(first), str(second)]).output.strip() == "no differences"
    third = tmp_path / "m3"
    r = runner.invoke(
        app,
        [
            "--no-progress",
            "train",
            "--data",
            str(data_dir),
            "--out",
            str(third),
            "--config",
            str(written),
            "--lr",
            "0.001",
        ],
    )
    assert r.exit_code == 0, r.output
    diff = runner.invoke(app, ["config", "diff", str(first), str(third)]).output.strip()
    assert diff == "[train] lr: 0.003 → 0.001"


def test_config_show_reads_a_model_dir_without_config_toml(data_dir, tmp_path):
    """Model directories written before config.toml existed are shown from their config.json."""
    model = tmp_path / "m"
    r = runner.invoke(
        app,
        ["--no-progress", "train", "--data", str(data_dir), "--out", str(model), "--max-steps", "1", "--device", "cpu"],
    )
    assert r.exit_code == 0, r.output
    want = tomllib.loads((model / "config.toml").read_text())
    (model / "config.toml").unlink()
    show = runner.invoke(app, ["config", "show", str(model)])
    assert show.exit_code == 0 and tomllib.loads(show.output) == want


def test_legacy_agent_config_json_is_read():
    legacy = {
        "n_users": 3,
        "n_items": 9,
        "embed_dim": 8,
        "hist_num": 4,
        "hidden": 5,
        "encoder": "gru",
        "softmax": "sampled",
        "head_options": {"negatives": 16, "normaliser": "estimate", "temperature": 0.5},
        "trainable_embeddings": True,
        "pad_index": 9,
    }
    cfg = AgentConfig.from_json(legacy)
    assert (cfg.embed_size, cfg.negatives, cfg.sampled_logp, cfg.temperature) == (8, 16, "estimate", 0.5)
    assert cfg.extra_head_options == {} and AgentConfig.from_json(cfg.to_json()) == cfg


def test_configs_validate_wherever_they_are_made():
    with pytest.raises(SettingsError, match="--k must be >= 1"):
        TrainConfig(k=0)
    with pytest.raises(SettingsError, match="--batch-size must be >= 2"):
        PretrainConfig(batch_size=1)
    with pytest.raises(SettingsError, match="--hidden must be an integer|--hidden must be a number"):
        AgentConfig(hidden=1.5)  # type: ignore[arg-type]
    for cls in (AgentConfig, TrainConfig, PretrainConfig):
        check_settings(cls())  # the defaults are valid


def test_a_diverging_run_stops_with_the_step_and_writes_no_nan_checkpoint(tmp_path):
    from topkrec.train import train_agent

    ds = synth_dataset(n_users=30, n_items=50, seed=1)
    ds.returns = ds.returns.copy()
    ds.returns[:] = float("inf")
    with pytest.raises(TopkrecError, match=r"diverged: the loss became NaN or infinite at step 1\b"):
        cfg = TrainConfig(lr=1e-3, device="cpu", weights="return")  # the infinite returns are π's weights
        train_agent(ds, tmp_path / "m", AgentConfig(hidden=8, embed_size=4), cfg)
    assert not (tmp_path / "m").exists()


def test_non_finite_weights_and_unfinished_runs_on_load(data_dir, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    from topkrec.policy.artifact import load_agent

    model = tmp_path / "m"
    r = runner.invoke(
        app,
        ["--no-progress", "train", "--data", str(data_dir), "--out", str(model), "--epochs", "2", "--device", "cpu"],
    )
    assert r.exit_code == 0, r.output
    state = json.loads((model / "trainer_state.json").read_text())
    (model / "trainer_state.json").write_text(json.dumps({**state, "finished": False, "epoch": 1}))
    with caplog.at_level("WARNING"):
        load_agent(model)
    assert "did not finish" in caplog.text and "--resume" in caplog.text
    tensors = load_file(str(model / "policy_head.safetensors"))
    tensors["bias"][0] = float("nan")
    save_file(tensors, str(model / "policy_head.safetensors"))
    with pytest.raises(ArtifactError, match="NaN or infinite"):
        load_agent(model)
    raw = json.loads((model / "config.json").read_text())
    for broken, message in (
        ({**raw, "agent": {**raw["agent"], "hidden": -1}}, "--hidden must be >= 1"),
        ({k: v for k, v in raw.items() if k != "agent"}, "no 'agent' section"),
        ({**raw, "format_version": 99}, "format_version 99"),
    ):
        (model / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ArtifactError, match=message):
            load_agent(model)
