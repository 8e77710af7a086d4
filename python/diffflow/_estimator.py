"""The estimator: scikit-learn conventions over ``diffflow._native`` (all numerics, the
preprocessing and the run folders are the Rust library's)."""

import inspect
import numbers
import shutil
import sys
import tempfile
import time
import weakref

import numpy as np

from . import _native

MODELS = ("diffflow", "ddpm-l", "ddpm-ls", "cnf")


def _as_array(X, name):
    """``X`` as a float32/float64 numpy array (integers and booleans become float64);
    shapes, layouts and values are checked by the native module."""
    X = np.asarray(X)
    if X.dtype.kind in "biu":
        return X.astype(np.float64)
    if X.dtype.kind == "f" and X.dtype not in (np.float32, np.float64):
        return X.astype(np.float64)
    if X.dtype.kind != "f":
        raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    return X


class _Bar:
    """A one-line progress bar on stderr: iterations, loss, speed, time left."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.shown = 0.0
        self.val = None

    def __call__(self, info):
        now = time.monotonic()
        step, total = info["step"], info["total"]
        if "val" in info:
            self.val = info["val"]
        if now - self.shown < 0.2 and step < total:
            return
        self.shown = now
        rate = step / max(now - self.start, 1e-9)
        filled = int(30 * step / max(total, 1))
        val = "" if self.val is None else f" val {self.val:.4f}"
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {step}/{total} loss "
            f"{info['loss']:.4f}{val} {rate:.2f} it/s, {(total - step) / max(rate, 1e-9):.0f} s left "
        )
        self.stream.flush()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


class DiffFlow:
    """Density estimation and sampling with Diffusion Normalizing Flow, or its baselines
    DDPM and an FFJORD-style CNF, on numpy arrays ``[n_samples, n_features]``.

    The preprocessing is that of ``diffflow train --data FILE``: columns constant on the
    training points are dropped (and written back by :meth:`sample`), integer-valued
    columns are dequantised with ``U[0, 1)`` noise (``dequantize``), the rest standardised
    with the training points' statistics. Densities are in the caller's units.

    Parameters
    ----------
    model : {"diffflow", "ddpm-l", "ddpm-ls", "cnf"}
        DiffFlow; DDPM (VP SDE) trained by the trajectory loss or by the epsilon loss; CNF.
    preset : {"tabular", "quick", "paper-2d"}
        The named configuration the other parameters override (``tabular``: nets of width
        ``4d`` rounded to 32 in [64, 512], batch 256, N = 5, 10, 20, 3000 iterations).
    iters, batch, lr, width, depth : int, int, float, int, int or None
        Training iterations, batch size, learning rate, hidden width and layers (None: the
        preset's; a baseline's one net gets DiffFlow's two nets' parameters).
    steps : int or str or None
        Steps N of the time grid, or a progressive schedule such as ``"5,10@1000"``.
    g : float or str or None
        Diffusion coefficient: a constant, ``"linear:START:END"`` or ``"vp"``.
    seed : int
        Seed of everything random (same seed, same model and samples, whatever ``threads``).
    threads : int or None
        Worker threads (None: all cores). Results do not depend on it.
    dequantize : {"auto", "on", "off"}
        Uniform dequantisation of integer-valued columns.
    val_fraction : float
        Fraction of ``X`` held out for validation when ``fit`` gets no ``X_val``.
    validate_every, val_metric, patience : int, str, int
        With validation points: validate every K iterations (None: the preset's, 100 for
        ``tabular``) by ``"elbo"`` or ``"nll"``, keep the best model, stop after
        ``patience`` validations without improvement (0: never).
    weights : {"ema", "live"} or None
        Weights used for sampling and evaluation (None: the preset's).
    progress : bool or callable
        A progress bar on stderr during ``fit`` (True), nothing (False), or a callable
        receiving a dict per iteration (step, total, loss, n, lr, grad_norm; val and
        val_best after a validation).

    Attributes (after ``fit`` or ``load``)
    --------------------------------------
    model_ : the native model; ``n_features_in_``: columns of ``X``; ``dim_``: modelled
    columns; ``n_iter_``: iterations trained; ``run_dir_``: the run folder; ``notes_``: what
    the preprocessing did.

    Ctrl-C during ``fit`` stops training after the current iteration; the model trained so
    far is kept and ``KeyboardInterrupt`` is raised.
    """

    def __init__(
        self,
        model="diffflow",
        preset="tabular",
        iters=None,
        batch=None,
        steps=None,
        g=None,
        lr=None,
        width=None,
        depth=None,
        seed=0,
        threads=None,
        dequantize="auto",
        val_fraction=0.0,
        validate_every=None,
        val_metric=None,
        patience=0,
        weights=None,
        progress=True,
    ):
        self.model = model
        self.preset = preset
        self.iters = iters
        self.batch = batch
        self.steps = steps
        self.g = g
        self.lr = lr
        self.width = width
        self.depth = depth
        self.seed = seed
        self.threads = threads
        self.dequantize = dequantize
        self.val_fraction = val_fraction
        self.validate_every = validate_every
        self.val_metric = val_metric
        self.patience = patience
        self.weights = weights
        self.progress = progress

    # --- scikit-learn's parameter protocol -------------------------------------------

    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p for p in sig.parameters if p != "self")

    def get_params(self, deep=True):
        """The constructor's parameters as a dict."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Sets constructor parameters; returns the estimator."""
        names = self._get_param_names()
        for key, value in params.items():
            if key not in names:
                raise ValueError(
                    f"invalid parameter {key!r} for DiffFlow (valid: {', '.join(names)})"
                )
            setattr(self, key, value)
        return self

    def __sklearn_tags__(self):
        """scikit-learn's tags (scikit-learn 1.6 and later calls this; the package does not
        depend on scikit-learn): an unsupervised density estimator."""
        from sklearn.utils import Tags, TargetTags

        return Tags(
            estimator_type="density_estimator",
            target_tags=TargetTags(required=False),
            transformer_tags=None,
            regressor_tags=None,
            classifier_tags=None,
        )

    def __repr__(self):
        default = type(self)()
        changed = [
            f"{k}={v!r}" for k, v in self.get_params().items() if v != getattr(default, k)
        ]
        return f"DiffFlow({', '.join(changed)})"

    def _native_params(self):
        """The parameters as the native module takes them (numbers checked here)."""
        p = self.get_params()
        del p["progress"]
        if p["model"] not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {p['model']!r}")
        for key in ("iters", "batch", "width", "depth", "threads", "validate_every"):
            if p[key] is not None:
                p[key] = _count(key, p[key])
        p["seed"] = _count("seed", p["seed"])
        p["patience"] = _count("patience", p["patience"])
        for key in ("steps", "g"):
            if p[key] is not None:
                p[key] = str(p[key])
        if p["lr"] is not None:
            p["lr"] = float(p["lr"])
        p["val_fraction"] = float(p["val_fraction"])
        return p

    def _threads(self):
        if self.threads is None:
            return _native.default_threads()
        return _count("threads", self.threads)

    def _fitted(self):
        model = getattr(self, "model_", None)
        if model is None:
            raise RuntimeError("this DiffFlow is not fitted yet: call fit(X) or DiffFlow.load(path)")
        return model

    def _set_fitted(self, native, cleanup=None):
        old = getattr(self, "_cleanup", None)
        if old is not None:
            old()
        self._cleanup = cleanup
        self.model_ = native
        self.n_features_in_ = native.n_columns
        self.dim_ = native.dim
        self.n_iter_ = native.step
        self.run_dir_ = str(native.run_dir)
        self.notes_ = list(native.notes)

    # --- fitting -------------------------------------------------------------------------

    def fit(self, X, X_val=None, y=None):
        """Trains a new model on the rows of ``X`` (``X_val``: validation points for model
        selection, same columns). ``y`` is ignored. Returns the estimator."""
        X = _as_array(X, "X")
        X_val = None if X_val is None else _as_array(X_val, "X_val")
        params = self._native_params()
        run_dir = tempfile.mkdtemp(prefix="diffflow-")
        cleanup = weakref.finalize(self, shutil.rmtree, run_dir, True)
        bar = None
        if self.progress is True:
            bar = callback = _Bar()
        elif callable(self.progress):
            callback = self.progress
        else:
            callback = None
        try:
            native, interrupted = _native.fit(X, X_val, run_dir, params, callback)
        except BaseException:
            cleanup()
            raise
        finally:
            if bar is not None:
                bar.close()
        self._set_fitted(native, cleanup)
        if interrupted:
            raise KeyboardInterrupt(
                f"training interrupted after iteration {native.step}: the model trained "
                "so far is kept"
            )
        return self

    # --- densities -----------------------------------------------------------------------

    def score_samples(self, X):
        """Log-density of each row of ``X`` (data units) by the probability-flow ODE
        (Dormand-Prince, rtol = atol = 1e-5, exact divergence), as ``diffflow eval``
        computes ``-nll``. ``X`` has the columns of the training data or only the modelled
        ones. Returns an array [n_samples]."""
        return self._fitted().score_samples(_as_array(X, "X"), self._threads())

    def score(self, X, y=None):
        """Mean log-likelihood of the rows of ``X`` (nats per sample)."""
        return float(np.mean(self.score_samples(X)))

    def elbo(self, X, steps=None, trajectories=10, seed=None):
        """The evidence lower bound of each row of ``X`` (a lower bound on its log-density in
        expectation), averaged over ``trajectories`` forward trajectories on the run's grid
        of ``steps`` steps. Not for a CNF. Returns an array [n_samples]."""
        return self._fitted().elbo(
            _as_array(X, "X"),
            self._threads(),
            steps=None if steps is None else _count("steps", steps),
            trajectories=_count("trajectories", trajectories),
            seed=None if seed is None else _count("seed", seed),
        )

    # --- sampling ------------------------------------------------------------------------

    def sample(self, n=1, lam=None, steps=None, seed=None, solver="sde", quantize=False):
        """``n`` samples [n, n_features] (constant columns filled in) by SDE (16) with ``lam``
        (None: the model's, 1 = the backward SDE for DiffFlow and DDPM, 0 = the probability
        flow for a CNF) on ``steps`` steps, or the probability-flow ODE with ``solver``
        ``"rk4"`` or ``"dopri5"``; as ``diffflow sample`` draws them for the same seed
        (None: the estimator's). ``quantize`` rounds dequantised columns down."""
        return self._fitted().sample(
            _count("n", n),
            self._threads(),
            lam=None if lam is None else float(lam),
            steps=None if steps is None else _count("steps", steps),
            seed=None if seed is None else _count("seed", seed),
            solver=solver,
            quantize=bool(quantize),
        )

    # --- run folders ---------------------------------------------------------------------

    def save(self, path, force=False):
        """Writes the model as a run folder of the ``diffflow`` CLI (checkpoints,
        ``config.toml``, ``metrics.jsonl`` and the training arrays as ``.npy``): ``diffflow
        eval --run path`` and ``diffflow sample --run path`` work on it. ``force``
        overwrites a run there."""
        self._fitted().save(str(path), force=bool(force))
        return self

    @classmethod
    def load(cls, path, checkpoint=None, weights=None):
        """The run folder ``path`` (written by ``diffflow train`` or :meth:`save`) as a fitted
        estimator: the ``checkpoint`` "best" or "last" (default: best when there is one)
        with ``weights`` "ema" or "live" (default: the run's). Its parameters are those of
        the run's configuration (``preset`` stays the default)."""
        native = _native.load(str(path), checkpoint, weights)
        params = dict(native.params())
        est = cls(**{k: v for k, v in params.items() if k in cls._get_param_names()})
        est._set_fitted(native)
        return est


def _count(name, value):
    """``value`` as a non-negative int, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)
