"""Item heads: a softmax over the catalogue given a state (DESIGN §3).

- :mod:`topkrec.heads.base` — the contract (``ItemHead``, ``HeadOutput``) and the registry (``make_head``,
  ``register_head``, ``HEADS``);
- :mod:`topkrec.heads.full` — ``full``: the exact softmax, trained through :mod:`topkrec.kernels`;
- :mod:`topkrec.heads.sampled` — ``sampled``: shared negatives with log-Q correction;
- :mod:`topkrec.heads.adaptive` — ``adaptive``: ``nn.AdaptiveLogSoftmaxWithLoss`` over frequency-ordered ids.

Importing this package registers the three kinds.
"""

from topkrec.heads.adaptive import AdaptiveSoftmaxHead, default_cutoffs
from topkrec.heads.base import HEADS, HeadOutput, ItemHead, make_head, register_head
from topkrec.heads.full import FullSoftmaxHead
from topkrec.heads.sampled import SampledSoftmaxHead, set_proposal_counts

__all__ = [
    "HEADS",
    "AdaptiveSoftmaxHead",
    "FullSoftmaxHead",
    "HeadOutput",
    "ItemHead",
    "SampledSoftmaxHead",
    "default_cutoffs",
    "make_head",
    "register_head",
    "set_proposal_counts",
]
