"""Serving (DESIGN §6): ``Recommender`` (raw ids in and out), Boltzmann exploration with exact
propensities, and the FastAPI app of ``topkrec serve`` (``topkrec.serve.app``, imported on demand)."""

from topkrec.serve.exploration import ExplorationConfig, boltzmann_explore, inclusion_probabilities
from topkrec.serve.recommender import Recommendation, Recommender
from topkrec.serve.sessions import Session, Sessions

__all__ = [
    "ExplorationConfig",
    "Recommendation",
    "Recommender",
    "Session",
    "Sessions",
    "boltzmann_explore",
    "inclusion_probabilities",
]
