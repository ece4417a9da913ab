"""A trained model as the target policy of ``topkrec ope --model DIR``.

The state of a logged row is built the way the pipeline builds it (DESIGN §1 "Transitions",
``topkrec.data.transitions.token_windows``): the row's user and the last ``hist_num`` history rows logged
for that user before the row's step (in time order, or file order without a time column; each row its own
step without ``step_col``), left-padded — the model's ``history`` setting decides which rows count (with a
reward column, rows with reward 0 are skipped impressions), and with feedback tokens each token carries the
row's event type (``event_col``, and the reward for valued types such as ``rating=4.5``; without an event
column every history row counts as the commonest event type of the model's training data). Raw user and
item ids are mapped through the model's maps; an unknown user gets the history-only state, an unknown
history item the pad index, and an unknown logged action probability 0 (the model cannot recommend it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from topkrec.errors import DataError

__all__ = ["model_target", "model_target_prob"]


def model_target_prob(
    model_dir: Path,
    logs: Path,
    action_col: str,
    user_col: str,
    time_col: str | None = None,
    k: int = 1,
    batch_size: int = 4096,
    reward_col: str | None = None,
    event_col: str | None = None,
    step_col: str | None = None,
) -> np.ndarray:
    """Probability of each row's logged action under the model's π: π(a|s), or 1 − (1 − π)^k for slates."""
    return model_target(
        model_dir, logs, action_col, user_col, time_col, k, batch_size, reward_col, event_col, step_col
    )[0]


def model_target(
    model_dir: Path,
    logs: Path,
    action_col: str,
    user_col: str,
    time_col: str | None = None,
    k: int = 1,
    batch_size: int = 4096,
    reward_col: str | None = None,
    event_col: str | None = None,
    step_col: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(target probability (n,), known (n,) bool): ``model_target_prob`` and which logged actions are in the
    model's catalogue (the others get probability 0)."""
    import torch

    from topkrec.ope.logs import read_table
    from topkrec.policy.artifact import load_agent

    if k < 1:
        raise DataError("--target-k must be at least 1")
    df = read_table(logs)
    for col in (action_col, user_col, time_col, reward_col, event_col, step_col):
        if col is not None and col not in df.columns:
            raise DataError(f"{logs} has no column {col!r}; its columns are: {', '.join(df.columns[:20])}")
    agent = load_agent(model_dir)
    cfg = agent.config
    users_raw = np.array([str(u) for u in df[user_col].to_list()], dtype=object)
    items_raw = np.array([str(i) for i in df[action_col].to_list()], dtype=object)
    user_index, item_index = agent.user_index, agent.item_index
    user = np.array([user_index.get(u, -1) for u in users_raw], dtype=np.int64)
    item = np.array([item_index.get(i, cfg.pad_index) for i in items_raw], dtype=np.int64)
    # group rows by raw user, in time (or file) order within a user; stable, so ties keep file order
    _, user_codes = np.unique(users_raw.astype(str), return_inverse=True)
    rows = np.arange(len(df))
    if time_col is not None:
        time_rank = df[time_col].rank("ordinal").to_numpy()
        order = np.lexsort((rows, time_rank, user_codes))  # last key is the primary one
    else:
        order = np.lexsort((rows, user_codes))
    history, history_event = _states(df, agent, user_codes, item, order, reward_col, event_col, step_col)
    probs_sorted = np.zeros(len(df))
    module = agent.module
    with torch.no_grad():
        for start in range(0, len(df), batch_size):
            sl = order[start : start + batch_size]
            hist = torch.as_tensor(history[start : start + batch_size])
            hist_event = torch.as_tensor(history_event[start : start + batch_size])
            s = module.encode(torch.as_tensor(user[sl]), hist, hist_event)
            logp = torch.log_softmax(module.head_logits("policy_head", s, hist, hist_event).float(), dim=-1)
            known = item[sl] != cfg.pad_index
            action = torch.as_tensor(np.where(known, item[sl], 0))
            p = logp.gather(1, action[:, None]).squeeze(1).exp().double().numpy()
            probs_sorted[start : start + len(sl)] = np.where(known, p, 0.0)
    probs = np.empty(len(df))
    probs[order] = probs_sorted
    if k > 1:
        probs = -np.expm1(k * np.log1p(-np.minimum(probs, 1.0 - 1e-16)))
    return probs, item != cfg.pad_index


def _states(
    df: Any,
    agent: Any,
    user_codes: np.ndarray,
    item: np.ndarray,
    order: np.ndarray,
    reward_col: str | None,
    event_col: str | None,
    step_col: str | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(history items, history event codes) (n, H) of the rows in ``order`` (grouped by user, time-sorted)."""
    from topkrec.data.dataset import event_type_name
    from topkrec.data.transitions import token_windows

    cfg = agent.config
    n = len(order)
    reward = df[reward_col].cast(float).to_numpy()[order] if reward_col is not None else np.ones(n)
    keep = (np.ones(n, dtype=bool) if cfg.history == "all" else reward != 0) & (item[order] != cfg.pad_index)
    event_index = {name: i for i, name in enumerate(cfg.event_types)}
    if event_col is not None:
        labels = np.array([str(e) for e in df[event_col].to_list()], dtype=object)[order]
        valued = any("=" in t for t in cfg.event_types)
        names = [event_type_name(str(b), float(r), valued) for b, r in zip(labels, reward, strict=True)]
        events = np.array([event_index.get(name, cfg.event_pad) for name in names], dtype=np.int64)
    else:
        default = agent.raw_config.get("data", {}).get("default_event")
        events = np.full(n, event_index.get(str(default), cfg.event_pad), dtype=np.int64)
    step = None
    if step_col is not None:
        step = df[step_col].cast(int).to_numpy()[order]
    return token_windows(user_codes[order], keep, item[order], events, step, cfg.hist_num, cfg.pad_index, cfg.event_pad)
