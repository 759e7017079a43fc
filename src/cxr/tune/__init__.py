"""Hyperparameter search with Optuna: the search space (YAML), the study, and its summary."""

from cxr.tune.space import SearchSpace, load_search_space
from cxr.tune.study import run_study
from cxr.tune.summary import TuneResult

__all__ = ["SearchSpace", "TuneResult", "load_search_space", "run_study"]
