"""Shared validation, randomness and device helpers.

One place knows how an image array is checked (:func:`check_images`), how a
seed becomes local torch randomness (:func:`torch_seed`, :func:`seeded`) and
how ``device="auto"`` is resolved (:func:`resolve_device`).
"""

from __future__ import annotations

import contextlib
import copy
import numbers

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import check_random_state

__all__ = [
    "DEVICE_CONSTRAINT",
    "check_images",
    "as_tensor",
    "check_finite_array",
    "check_module_dtype",
    "check_label_value",
    "check_labels",
    "check_reject_label",
    "PrefitModelsMixin",
    "module_device",
    "resolve_device",
    "seeded",
    "torch_seed",
]


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    return f"{value!r} ({type(value).__name__})"


def check_finite_array(X, *, name="X", caller=None, dtype=np.float32, min_samples=1):
    """Convert ``X`` to a numeric array with at least one row and no NaN/inf.

    Used by black-box defenses, which accept any shape the model accepts.
    A read-only ``X`` is copied (torch warns at the user for one); the
    caller must not write into the result.
    """
    where = f" in {caller}" if caller else ""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if hasattr(X, "tocsr") or hasattr(X, "sparse"):
        raise TypeError(
            f"{name}{where} must be a dense numeric array: sparse input is not supported; got "
            f"{type(X).__name__} (call .toarray())."
        )
    try:
        raw = np.asarray(X)
        complex_data = raw.dtype.kind == "c"
        arr = None if complex_data else np.asarray(raw, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name}{where} must be a numeric array; got {type(X).__name__}."
        ) from exc
    if complex_data:
        raise ValueError(f"{name}{where} must hold real numbers: Complex data not supported.")
    if arr.ndim < 1:
        raise ValueError(f"{name}{where} must have a sample axis; got a scalar.")
    if arr.shape[0] < min_samples:
        raise ValueError(
            f"{name}{where} must contain at least {min_samples} sample(s); "
            f"got an array of shape {arr.shape}."
        )
    if arr.ndim > 1 and 0 in arr.shape[1:]:
        raise ValueError(
            f"{name}{where} must have samples of at least one value; got 0 feature(s) (shape={arr.shape}) while a "
            "minimum of 1 is required."
        )
    if not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"{name}{where} must not contain NaN or infinity; found {n_bad} such value(s)."
        )
    if not arr.flags.writeable:
        # torch (and skorch's datasets through it) warn at the user for a read-only array
        arr = arr.copy()
    return arr


def check_images(
    X,
    *,
    name="X",
    caller=None,
    n_channels=None,
    image_shape=None,
    min_samples=1,
):
    """Validate an image batch and return it as float32 ``(n, C, H, W)``.

    ``(n, H, W)`` input is read as grayscale with one channel. The returned
    array never shares memory with a float32 input that was reshaped, and the
    caller must not write into it (use ``.copy()`` where it needs to).

    Parameters
    ----------
    X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
        Images.
    name : str, default="X"
        Argument name used in error messages.
    caller : str, default=None
        Name of the calling class or function, used in error messages.
    n_channels : int, default=None
        Required channel count, if known.
    image_shape : tuple of int, default=None
        Required ``(C, H, W)``, if known (e.g. the shape seen at fit time).
    min_samples : int, default=1
        Fewest images accepted.

    Returns
    -------
    X : ndarray of shape (n_samples, C, H, W), dtype float32
    """
    arr = check_finite_array(X, name=name, caller=caller, min_samples=min_samples)
    where = f" in {caller}" if caller else ""
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    elif arr.ndim != 4:
        raise ValueError(
            f"{name}{where} must be images of shape (n_samples, C, H, W) or "
            f"(n_samples, H, W); got an array of shape {arr.shape} ({arr.ndim}-D)."
        )
    if n_channels is not None and arr.shape[1] != n_channels:
        raise ValueError(
            f"{name}{where} must have {n_channels} channel(s) on axis 1; "
            f"got {arr.shape[1]} (shape {arr.shape})."
        )
    if image_shape is not None and tuple(arr.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"{name}{where} must hold images of shape {tuple(image_shape)}; "
            f"got {tuple(arr.shape[1:])}."
        )
    return arr


def check_labels(y, *, n_samples=None, n_classes=None, name="y", caller=None):
    """Validate integer class labels and return them as an int64 array."""
    where = f" in {caller}" if caller else ""
    if y is None:
        raise ValueError(f"{name}{where} is required; got None.")
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(
            f"{name}{where} must be a 1-D array of integer labels; got shape {arr.shape}."
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise ValueError(
                f"{name}{where} must hold integer class labels; got dtype {arr.dtype}."
            )
    arr = arr.astype(np.int64)
    if n_samples is not None and arr.shape[0] != n_samples:
        raise ValueError(
            f"{name}{where} must have one label per sample ({n_samples}); got {arr.shape[0]}."
        )
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name}{where} must hold labels >= 0; got {arr.min()}.")
    if n_classes is not None and arr.size and arr.max() >= n_classes:
        raise ValueError(
            f"{name}{where} must hold labels in [0, {n_classes - 1}] for a model with "
            f"{n_classes} classes; got {arr.max()}."
        )
    return arr


def check_label_value(label, n_classes, *, name, caller=None):
    """Check one class label is an integer in ``[0, n_classes)`` (``>= 0`` when ``n_classes`` is None)."""
    where = f" in {caller}" if caller else ""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, numbers.Integral):
        raise TypeError(f"{name}{where} must be an integer class label; got {_describe(label)}.")
    if n_classes is None:
        if int(label) < 0:
            raise ValueError(f"{name}{where} must be a class label >= 0; got {label}.")
        return int(label)
    if not 0 <= int(label) < n_classes:
        raise ValueError(
            f"{name}{where} must be a class label in [0, {n_classes - 1}]; got {label}."
        )
    return int(label)


def check_reject_label(reject_label, classes, *, caller):
    """Check a rejection label against the classes: the same kind (number or string), not one of them.

    A string next to integer classes would turn ``classes_`` and every
    prediction into strings (``np.asarray([0, 1, "rejected"])``); a number next
    to string classes the other way round.
    """
    classes = np.asarray(classes)
    numeric = bool(np.issubdtype(classes.dtype, np.number)) and classes.dtype != bool
    is_num = isinstance(reject_label, numbers.Number) and not isinstance(reject_label, (bool, np.bool_))
    is_str = isinstance(reject_label, str)
    if (numeric and not is_num) or (not numeric and not is_str):
        want = "a number, as the classes are" if numeric else "a string, as the classes are"
        raise TypeError(
            f"reject_label in {caller} must be {want} ({classes.dtype}, {classes.tolist()[:5]}...); got "
            f"{_describe(reject_label)}. A label of another type would change the type of classes_ and of "
            "every prediction."
        )
    if reject_label in classes.tolist():
        raise ValueError(
            f"reject_label={reject_label!r} in {caller} is one of the model's classes {classes.tolist()}; a "
            "rejection must not look like an answer. Pick a label outside the classes, or leave it None."
        )
    return reject_label


#: The ``_parameter_constraints`` entry of every ``device`` parameter.
DEVICE_CONSTRAINT = [str, torch.device, None]


def module_device(module):
    """The device of ``module``'s first parameter (or buffer); the CPU when it has none."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def resolve_device(device, module=None, *, caller=None):
    """The device a run uses, as a string.

    ``None`` is where ``module`` lives (a torch module instance), else the
    CPU; ``"auto"`` is CUDA when available, else the CPU; any other value is
    checked (a torch device type that is available here: ``"tpu"`` is not a
    torch device, ``"mps"`` needs Apple's backend) and returned.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is None:
        return str(module_device(module)) if isinstance(module, torch.nn.Module) else "cpu"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    where = f" in {caller}" if caller else ""
    if not isinstance(device, str):
        raise TypeError(f"device{where} must be 'cpu', 'cuda', 'auto' or a torch device; got {_describe(device)}.")
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ValueError(
            f"device{where} must be 'cpu', 'cuda', 'cuda:N', 'auto' or another torch device type; got {device!r}."
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}{where} was requested but CUDA is not available here; use 'cpu' or 'auto'.")
    if kind not in ("cpu", "cuda"):
        backend = getattr(torch.backends, kind, None) or getattr(torch, kind, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ValueError(
                f"device={device!r}{where} was requested but torch has no {kind} device here; use 'cpu' or 'auto'."
            )
    return device


def as_tensor(X):
    """``torch.from_numpy`` of a C-contiguous copy where ``X`` is read-only.

    torch warns at the user for a non-writable array (its tensors are always
    writable); the user's array is never written either way.
    """
    arr = np.ascontiguousarray(X)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def check_module_dtype(module, *, name="model", caller=None):
    """Refuse a module whose floating-point parameters are not float32 (inputs are float32)."""
    where = f" given to {caller}" if caller else ""
    dtypes = {t.dtype for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()}
    other = sorted(str(d).replace("torch.", "") for d in dtypes if d != torch.float32)
    if other:
        raise TypeError(
            f"{name}{where} must have float32 parameters, as the images are float32; got {', '.join(other)} "
            f"parameters (call {name}.float() first)."
        )
    return module


def torch_seed(random_state):
    """Draw a 63-bit torch seed from ``random_state`` (None, int or RandomState)."""
    rng = check_random_state(random_state)
    return int(rng.randint(0, 2**31 - 1))


@contextlib.contextmanager
def seeded(seed):
    """Run a block with torch's RNG seeded to ``seed``, restoring the global state after.

    skorch and ``nn.Module`` initialisation draw from torch's global generator;
    forking it keeps a ``random_state`` local to one call: the user's global
    stream is left where it was.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class PrefitModelsMixin:
    """Estimators whose parameters named in ``_model_params`` hold prefit models.

    A defense's guarded model is fitted already and never modified, so:

    - ``clone`` (which ``GridSearchCV``, ``cross_validate`` and ``Pipeline``
      call on every parameter) passes those parameters to the clone by
      reference: scikit-learn's own ``clone`` would turn a fitted skorch net
      or ``MLPClassifier`` into an unfitted one (as
      ``sklearn.frozen.FrozenEstimator`` avoids);
    - ``get_params(deep=True)`` does not descend into them, and
      ``set_params(model__lr=...)`` is refused, so nothing reaches into the
      user's model.
    """

    _model_params = ()

    def __sklearn_clone__(self):
        params = self.get_params(deep=False)
        new = type(self)(**{k: (v if k in self._model_params else clone(v, safe=False))
                            for k, v in params.items()})
        for attr in ("_metadata_request", "_sklearn_output_config"):
            if hasattr(self, attr):
                setattr(new, attr, copy.deepcopy(getattr(self, attr)))
        return new

    def set_params(self, **params):
        """Set the parameters of this estimator, never those of a prefit model it holds.

        Parameters
        ----------
        **params : dict
            Estimator parameters; ``name__sub`` reaches into a nested
            estimator, except where ``name`` holds a prefit model.

        Returns
        -------
        self : object
            The estimator.
        """
        for key in params:
            head, nested, _ = key.partition("__")
            if nested and head in self._model_params:
                raise ValueError(
                    f"Invalid parameter {key!r} for {type(self).__name__}: {head!r} holds a prefit "
                    "model that defenses never modify; set its parameters on the model itself."
                )
        return super().set_params(**params)

    def get_params(self, deep=True):
        """Get the parameters of this estimator, without descending into a prefit model.

        Parameters
        ----------
        deep : bool, default=True
            Include the parameters of nested estimators, except the prefit
            models.

        Returns
        -------
        params : dict
            Parameter names mapped to their values.
        """
        params = super().get_params(deep=False)
        if deep:
            for name, value in list(params.items()):
                if name in self._model_params or isinstance(value, type) or not hasattr(value, "get_params"):
                    continue
                params.update((f"{name}__{k}", v) for k, v in value.get_params(deep=True).items())
        return params
