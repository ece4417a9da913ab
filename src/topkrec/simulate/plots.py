"""Figures of the simulations (matplotlib, Agg backend; imported only when --plots is asked for)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_stateless(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """The paper's §6.1 bar charts: the learned π over the 10 items, one panel per learner, β for reference."""
    plt = _pyplot()
    policies = result["policies"]
    names = list(policies)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 2.8), sharey=True)
    axes = list(axes) if len(names) > 1 else [axes]
    n = len(result["reward"])
    for ax, name in zip(axes, names, strict=True):
        probs = policies[name]["probs"]
        ax.bar(range(1, n + 1), probs, color="tab:gray" if name == "behavior" else "tab:blue")
        ax.set_title(
            f"{name}\nE[r]={policies[name]['expected_reward']:.2f}, J_{result['k']}={policies[name]['topk_value']:.2f}",
            fontsize=9,
        )
        ax.set_xticks(range(1, n + 1))
        ax.set_xlabel("item")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("π(item)")
    fig.suptitle(f"{result['scenario']}: {result.get('description', '')}", fontsize=9)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['scenario']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_sequential(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """True value (rollouts, 95 % CI over seeds) of every policy, with its off-policy estimates beside it."""
    plt = _pyplot()
    policies = result["policies"]
    names = list(policies)
    fig, ax = plt.subplots(figsize=(0.85 * len(names) + 2.0, 3.6))
    xs = range(len(names))
    values = [policies[n]["true_value"] for n in names]
    lows = [policies[n]["true_value"] - policies[n]["ci_low"] for n in names]
    highs = [policies[n]["ci_high"] - policies[n]["true_value"] for n in names]
    ax.bar(xs, values, yerr=[lows, highs], capsize=4, color="tab:blue", alpha=0.8, label="true value (rollouts)")
    markers = {"ips": ("o", -0.22), "capped_ips": ("s", 0.0), "snips": ("^", 0.22)}
    for est, (marker, dx) in markers.items():
        pts = [(i + dx, policies[n].get("estimates", {}).get(est)) for i, n in enumerate(names)]
        pts = [(x, v["value"]) for x, v in pts if v]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color="k", zorder=3, label=est)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean reward per session")
    world = result.get("world", "default")
    ax.set_title(f"{result['scenario']} ({world} world): true value vs off-policy estimates", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['scenario']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
