"""A trained model as the target policy of ``topkrec ope --model DIR``.

The state of a logged row is built the way the pipeline builds it (DESIGN §1 "Transitions"): the
row's user and the ``hist_num`` items logged for that user before it (in time order, or file order
without a time column), left-padded. Raw user and item ids are mapped through the model's maps;
an unknown user gets the history-only state, an unknown history item the pad index, and an unknown
logged action probability 0 (the model cannot recommend it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from topkrec.errors import DataError

__all__ = ["model_target", "model_target_prob", "previous_items"]


def previous_items(user_codes: np.ndarray, items: np.ndarray, hist_num: int, pad: int) -> np.ndarray:
    """(n, hist_num) the items of the same user before each row (rows grouped by user, in order), oldest first."""
    n = items.shape[0]
    starts = np.flatnonzero(np.r_[True, user_codes[1:] != user_codes[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, n]))  # first row of each row's user
    offsets = np.arange(-hist_num, 0)  # positions t − H … t − 1
    pos = np.arange(n)[:, None] + offsets[None, :]
    valid = pos >= first[:, None]
    return np.where(valid, items[np.maximum(pos, 0)], pad)


def model_target_prob(
    model_dir: Path,
    logs: Path,
    action_col: str,
    user_col: str,
    time_col: str | None = None,
    k: int = 1,
    batch_size: int = 4096,
) -> np.ndarray:
    """Probability of each row's logged action under the model's π: π(a|s), or 1 − (1 − π)^k for slates."""
    return model_target(model_dir, logs, action_col, user_col, time_col, k, batch_size)[0]


def model_target(
    model_dir: Path,
    logs: Path,
    action_col: str,
    user_col: str,
    time_col: str | None = None,
    k: int = 1,
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """(target probability (n,), known (n,) bool): ``model_target_prob`` and which logged actions are in the
    model's catalogue (the others get probability 0)."""
    import torch

    from topkrec.ope.logs import read_table
    from topkrec.policy.artifact import load_agent

    if k < 1:
        raise DataError("--target-k must be at least 1")
    df = read_table(logs)
    for col in (action_col, user_col, time_col):
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
    history = previous_items(user_codes[order], item[order], cfg.hist_num, cfg.pad_index)
    probs_sorted = np.zeros(len(df))
    module = agent.module
    with torch.no_grad():
        for start in range(0, len(df), batch_size):
            sl = order[start : start + batch_size]
            s = module.encode(torch.as_tensor(user[sl]), torch.as_tensor(history[start : start + batch_size]))
            logp = module.policy_head.log_probs(s)
            known = item[sl] != cfg.pad_index
            action = torch.as_tensor(np.where(known, item[sl], 0))
            p = logp.gather(1, action[:, None]).squeeze(1).exp().double().numpy()
            probs_sorted[start : start + len(sl)] = np.where(known, p, 0.0)
    probs = np.empty(len(df))
    probs[order] = probs_sorted
    if k > 1:
        probs = -np.expm1(k * np.log1p(-np.minimum(probs, 1.0 - 1e-16)))
    return probs, item != cfg.pad_index
