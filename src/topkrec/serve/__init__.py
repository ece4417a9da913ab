"""Serving (DESIGN §6): ``Recommender`` (raw ids in and out), Boltzmann exploration with exact
propensities, and the FastAPI app of ``topkrec serve`` (``topkrec.serve.app``, imported on demand)."""

from topkrec.serve.exploration import ExplorationConfig, boltzmann_explore, inclusion_probabilities
from topkrec.serve.recommender import Recommendation, Recommender

__all__ = ["ExplorationConfig", "Recommendation", "Recommender", "boltzmann_explore", "inclusion_probabilities"]
