"""Training the agent: REINFORCE with the off-policy / top-K correction (DESIGN §3, §7, §8).

- :mod:`topkrec.train.loop` — ``train_agent``: build → resume → for each batch: step → meter → log/checkpoint;
- :mod:`topkrec.train.step` — one optimizer step (``TrainObjective``, ``train_step``);
- :mod:`topkrec.train.build` — the agent's initial weights, ``--resume``'s checks;
- optimisers in :mod:`topkrec.optim`; the model directory in :mod:`topkrec.policy.artifact`.
"""

from topkrec.optim import Optimizer, SparseDenseAdam, build_optimizer
from topkrec.policy.artifact import TrainerState
from topkrec.train.build import build_agent, init_output_bias
from topkrec.train.loop import TrainResult, train_agent
from topkrec.train.step import StepOutput, TrainObjective, train_step

__all__ = [
    "Optimizer",
    "SparseDenseAdam",
    "StepOutput",
    "TrainObjective",
    "TrainResult",
    "TrainerState",
    "build_agent",
    "build_optimizer",
    "init_output_bias",
    "train_agent",
    "train_step",
]
