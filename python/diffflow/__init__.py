"""Diffusion Normalizing Flow (DiffFlow; Zhang & Chen, NeurIPS 2021) for Python.

A scikit-learn-style estimator over the Rust library::

    from diffflow import DiffFlow
    est = DiffFlow(iters=1000).fit(X)          # X: numpy array [n_samples, n_features]
    log_p = est.score_samples(X_test)          # log-density by the probability-flow ODE
    Y = est.sample(1000, seed=1)               # samples with the backward SDE

Run folders are those of the ``diffflow`` command-line tool (``est.save(path)``,
``DiffFlow.load(path)``).
"""

from ._estimator import DiffFlow
from ._native import __version__

__all__ = ["DiffFlow", "__version__"]
