"""metrics.json (DESIGN §9) and plots for one or several model directories."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from topkrec.data.dataset import Dataset
from topkrec.evaluate.evaluator import EvalConfig, evaluate_agents
from topkrec.io import write_json
from topkrec.policy.artifact import LoadedAgent, load_agent

logger = logging.getLogger(__name__)


def evaluate_model_dirs(
    dirs: dict[str | None, Path],
    dataset: Dataset,
    k: int = 10,
    device: torch.device | str = "cpu",
    baselines: bool = True,
    out: Path | None = None,
    plots_dir: Path | None = None,
    progress: bool = False,
    config: EvalConfig | None = None,
) -> dict[str, Any]:
    """Evaluate model dirs (a None name means "the model's --correction") and the baselines.

    Returns the metrics.json document: ``k``, ``models`` {name: DESIGN §9 keys + extras}, ``model_dirs``,
    ``training`` {name: steps/epochs/final train metrics}, ``dataset`` counts; writes it to ``out`` and,
    with ``plots_dir``, training_curves[_<name>].png and weight_histogram.png there.
    """
    from dataclasses import replace

    from topkrec.evaluate.plots import plot_training_curves, plot_weight_histograms
    from topkrec.policy.artifact import read_train_log

    cfg = replace(config or EvalConfig(), k=k)
    agents: dict[str, LoadedAgent] = {}
    for name, d in dirs.items():
        agent = load_agent(d, device=device)
        agents[name or agent.train_config.correction] = agent
    results = evaluate_agents(agents, dataset, cfg, baselines=baselines, progress=progress)
    training: dict[str, Any] = {}
    for name, agent in agents.items():
        log = read_train_log(agent.directory)
        training[name] = {
            "steps": log[-1]["step"] if log else 0,
            "epochs": log[-1].get("train/epoch", 0.0) if log else 0.0,
            "final": {k_: v for k_, v in log[-1].items() if k_ != "step"} if log else {},
            "train_config": agent.train_config.to_json(),
            "encoder": agent.config.encoder,
        }
    summary = dataset.summary()
    doc: dict[str, Any] = {
        "k": k,
        "models": {name: m.as_dict() for name, m in results.items()},
        "model_dirs": {name: str(agent.directory) for name, agent in agents.items()},
        "training": training,
        "dataset": {
            key: summary[key] for key in ("n_users", "n_items", "n_train_events", "n_test_events", "n_oov_test_events")
        },
        "notes": {
            "next_item": "every test event, history = previous hist_num items incl. train tail; OOV targets = miss",
            "ndcg_all": "top-K from each user's last train state vs the user's distinct in-catalogue test items",
            "ope": "immediate reward of logged test events; propensity = each model dir's β̂ (floored at "
            f"{cfg.behavior_floor}); popularity as π(a) ∝ train count; recent as softmax of its scores (newest "
            "history item 1 above the next; a near-deterministic ranking, so its IPS rests on a small ess); "
            "OOV events left out",
        },
    }
    if plots_dir is not None:
        plots: dict[str, str] = {}
        for name, agent in agents.items():
            suffix = "" if len(agents) == 1 else f"_{name}"
            p = plot_training_curves(
                read_train_log(agent.directory), Path(plots_dir) / f"training_curves{suffix}.png", f"training: {name}"
            )
            if p is not None:
                plots[f"training_curves{suffix}"] = str(p)
        weights: dict[str, np.ndarray] = {
            name: m.log_weights for name, m in results.items() if m.log_weights is not None and name != "behavior"
        }
        cap = next(iter(agents.values())).train_config.cap
        p = plot_weight_histograms(weights, Path(plots_dir) / "weight_histogram.png", cap=cap)
        if p is not None:
            plots["weight_histogram"] = str(p)
        doc["plots"] = plots
    if out is not None:
        write_json(Path(out), doc)
    return doc
