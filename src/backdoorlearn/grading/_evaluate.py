"""Grade a repaired model in the format of the CSAW HackML 2020 challenge.

The challenge scores a submission on clean test data (classification
accuracy) and on poisoned test sets whose labels are the attacker's target
(attack success: the share of poisoned inputs classified as the target). A
repaired network may answer ``N`` (the number of classes, 1283 for the
challenge's faces) for an input it refuses as poisoned: that answer counts
against the attack and, on clean data, against the accuracy.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from .._output import sha256_path, to_jsonable

__all__ = ["Submission", "evaluate_submission", "format_evaluation", "load_submission"]


class Submission:
    """Something to grade: a function from images to labels, and where it came from.

    Build it with :func:`load_submission` from a file; graders only call
    :meth:`predict`.

    Parameters
    ----------
    predict : callable
        ``predict(X) -> labels``: images of shape ``(n, C, H, W)``, float32,
        to ``n`` integer labels (``N``, the number of classes, to reject).
    kind : str
        ``"torchscript"``, ``"state_dict"``, ``"hdf5"``, ``"python"`` or
        ``"model"`` (an object in memory).
    path : str, default=None
        The file it was loaded from.
    n_outputs : int, default=None
        Number of a model's outputs (counted on the first images graded
        when not given; None for a Python ``predict``).
    sha256 : str, default=None
        SHA-256 of the file.

    See Also
    --------
    load_submission : Build a submission from a model file or a Python file.
    evaluate_submission : Grade a submission on clean and poisoned data.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.grading import Submission
    >>> sub = Submission(lambda X: np.zeros(len(X), dtype=int), kind="python")
    >>> sub.predict(np.zeros((3, 1, 8, 8), np.float32)).tolist()
    [0, 0, 0]
    """

    def __init__(self, predict, *, kind, path=None, n_outputs=None, sha256=None):
        self._predict = predict
        self.kind = kind
        self.path = path
        self.n_outputs = n_outputs
        self.sha256 = sha256
        self._adapter = None  # a model's adapter: its outputs are counted on the first images seen

    def predict(self, X):
        """Label ``X`` as the submission answers it.

        Parameters
        ----------
        X : ndarray of shape (n, C, H, W), float32
            Images to label.

        Returns
        -------
        labels : array-like of shape (n,)
            What the submission's function returns, unchecked: integer
            labels, ``N`` (the number of classes) for a rejected input.
            The graders check its shape, type and range.
        """
        return self._predict(X)

    def describe(self):
        """Say where the submission came from, for reports.

        Returns
        -------
        description : dict
            ``path``, ``kind``, ``sha256`` and ``n_outputs``, as given or
            found (None when unknown).
        """
        return dict(path=self.path, kind=self.kind, sha256=self.sha256, n_outputs=self.n_outputs)


def load_submission(path, *, arch=None, arch_kwargs=None, trust_code=False, device="cpu", batch_size=256):
    """Load a submission file: a model file (loaded safely) or a Python file with ``predict``.

    A model file is read with :func:`~backdoorlearn.models.load_model`
    (TorchScript, a state_dict with ``arch``, or a CSAW HackML Keras
    ``.h5``; nothing is unpickled) and answers the argmax of its logits. A
    ``.py`` file must define ``predict(X) -> labels``; importing it runs its
    author's code with the grader's permissions, so it is refused unless
    ``trust_code=True``.

    Parameters
    ----------
    path : str or path-like
        The submission.
    arch : str, default=None
        Architecture of a state_dict, ``"package.module:Class"``.
    arch_kwargs : str or dict, default=None
        Its keyword arguments (JSON or a dict).
    trust_code : bool, default=False
        Run a Python submission.
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where a model file runs.
    batch_size : int, default=256
        Images per forward pass of a model file.

    Returns
    -------
    submission : Submission
        Its ``predict`` answers the model's argmax (a model file) or calls
        the file's ``predict`` (a Python file); ``kind``, ``path`` and
        ``sha256`` say what was loaded.

    Raises
    ------
    ValueError
        If the file is a Python file and ``trust_code`` is False, does not
        define a callable ``predict``, or fails when imported; or if a model
        file cannot be loaded (see :func:`~backdoorlearn.models.load_model`).

    Examples
    --------
    >>> import os, tempfile
    >>> from backdoorlearn.grading import load_submission
    >>> path = os.path.join(tempfile.mkdtemp(), "predict.py")
    >>> with open(path, "w") as f:
    ...     _ = f.write("def predict(X):\\n    return [0] * len(X)\\n")
    >>> load_submission(path)
    Traceback (most recent call last):
    ...
    ValueError: submission '...predict.py' is a Python file: ...
    >>> load_submission(path, trust_code=True).kind
    'python'
    """
    name = os.fspath(path)
    p = Path(name)
    if not p.is_file():
        raise FileNotFoundError(f"submission {name!r} does not exist or is not a file.")
    if p.suffix == ".py":
        if arch is not None or arch_kwargs is not None:
            raise ValueError(f"arch and arch_kwargs apply to state_dict files; submission {name!r} is a Python file.")
        if not trust_code:
            raise ValueError(
                f"submission {name!r} is a Python file: importing it runs its author's code with your permissions, "
                "so it is refused unless you pass trust_code=True (--trust-code on the command line). A model file "
                "(TorchScript, a state_dict with --arch, a Keras .h5) is graded without running any code."
            )
        return Submission(_python_predict(p), kind="python", path=name, sha256=sha256_path(p))
    from ..models import ModelAdapter, load_model
    from ..models._io import _file_kind

    kind = _file_kind(name)
    module = load_model(name, arch=arch, arch_kwargs=arch_kwargs, device=device)
    adapter = ModelAdapter(module, defense="the grader", batch_size=batch_size)
    sub = Submission(adapter.predict, kind=kind, path=name, sha256=sha256_path(p))
    sub._adapter = adapter
    return sub


def _count_outputs(sub, X):
    """Fill in a model submission's number of outputs from one forward pass."""
    if sub.n_outputs is None and sub._adapter is not None:
        try:
            sub.n_outputs = int(sub._adapter.predict_proba(X[:1]).shape[1])
        except RuntimeError as exc:
            raise ValueError(f"the clean data (images of shape {tuple(X.shape[1:])}) do not fit the submission: "
                             f"{str(exc).strip().splitlines()[0]}") from None


def _python_predict(path):
    import hashlib

    module_name = "_backdoorlearn_submission_" + hashlib.sha1(os.fsencode(path.resolve())).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    folder = os.fspath(path.resolve().parent)
    sys.path.insert(0, folder)  # so it can import the helpers it ships beside it
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the submission's own code: any error is its author's
        raise ValueError(f"submission {os.fspath(path)!r} failed when imported: {type(exc).__name__}: {exc}") from exc
    finally:
        if sys.path and sys.path[0] == folder:
            del sys.path[0]
    predict = getattr(module, "predict", None)
    if not callable(predict):
        raise ValueError(f"submission {os.fspath(path)!r} must define a function predict(X) -> labels; "
                         f"it defines {sorted(n for n in vars(module) if not n.startswith('_'))[:10]}.")

    def run(X):
        try:
            return predict(X)
        except Exception as exc:
            raise ValueError(f"submission {os.fspath(path)!r}: predict(X) raised {type(exc).__name__}: {exc}") \
                from exc
    return run


# ---------------------------------------------------------------------- data
def _read_set(data, *, name, role, target=None):
    """``(X, y, y_true, info)`` from a path or a tuple; for poisoned sets ``y`` is the target label."""
    from ..datasets._data_files import _load

    y_true = None
    if isinstance(data, (str, os.PathLike)):
        X, y, kind = _load(data)
        info = dict(name=Path(os.fspath(data)).name, path=os.fspath(data), kind=kind, sha256=sha256_path(data))
        if kind == ".npz archive":
            with np.load(os.fspath(data), allow_pickle=False) as archive:
                if "y_true" in archive.files:
                    y_true = archive["y_true"]
    else:
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise ValueError(f"{name} must be a data file or a tuple (X, y){' or (X, y, y_true)' if role == 'poisoned' else ''}; "
                             f"got {type(data).__name__}.")
        X, y = data[0], data[1]
        y_true = data[2] if len(data) == 3 else None
        info = dict(name=name, path=None, kind="array", sha256=None)
    from .._utils import check_images, check_labels

    X = check_images(X, name=name, caller="evaluate")
    if y is None and role == "poisoned" and target is not None:
        y = np.full(len(X), int(target), dtype=np.int64)
    if y is None:
        what = ("the attack's target label of each input (HackML's poisoned files hold it as 'label'), or pass "
                "target" if role == "poisoned" else "the true label of each input")
        raise ValueError(f"{name} holds no labels; {role} test data need {what}.")
    y = check_labels(y, n_samples=len(X), name=f"the labels of {name}", caller="evaluate")
    if y_true is not None:
        y_true = check_labels(y_true, n_samples=len(X), name=f"y_true of {name}", caller="evaluate")
    return X, y, y_true, info


def _as_submission(submission):
    if isinstance(submission, Submission):
        return submission
    if isinstance(submission, (str, os.PathLike)):
        return load_submission(submission)
    from ..models import ModelAdapter

    try:
        adapter = ModelAdapter(submission, defense="evaluate_submission")
    except TypeError:
        if callable(submission):
            return Submission(submission, kind="python")
        raise
    sub = Submission(adapter.predict, kind="model")
    sub._adapter = adapter
    return sub


def _predictions(submission, X, n_classes, name):
    pred = submission.predict(X)
    try:
        pred = np.asarray(pred)
    except Exception as exc:  # pragma: no cover - numpy converts almost anything
        raise ValueError(f"the submission's predict returned something that is not an array: {exc}") from None
    if pred.ndim == 2 and pred.shape[0] == len(X) and pred.shape[1] > 1:
        raise ValueError(f"the submission's predict must return one label per input for {name}, shape "
                         f"({len(X)},); it returned shape {pred.shape}, scores rather than labels (take the argmax).")
    pred = pred.reshape(-1) if pred.ndim == 2 and 1 in pred.shape else pred
    if pred.shape != (len(X),):
        raise ValueError(f"the submission's predict must return one label per input for {name}, shape "
                         f"({len(X)},); it returned shape {pred.shape}.")
    if pred.dtype.kind not in "uif" or (pred.dtype.kind == "f" and not np.all(pred == np.round(pred))):
        raise ValueError(f"the submission's predict must return integer labels for {name}; got dtype {pred.dtype}.")
    pred = pred.astype(np.int64)
    bad = (pred < 0) | (pred > n_classes)
    if bad.any():
        raise ValueError(f"the submission's predict must return labels in [0, {n_classes}] for {name} ({n_classes} "
                         f"is the reject label N); it returned {pred[bad][0]}.")
    return pred


def evaluate_submission(submission, clean, poisoned=(), *, n_classes=None, target=None):
    """Grade a submission on clean and poisoned test data, as the CSAW HackML challenge does.

    Parameters
    ----------
    submission : Submission, str or path-like, model or callable
        What :func:`load_submission` returns; a model file (loaded safely);
        a model in memory (a torch module, a skorch net, an estimator with
        ``predict_proba``); or a function ``predict(X) -> labels``.
    clean : str, path-like or tuple (X, y)
        Clean test data: a data file (see
        :func:`~backdoorlearn.datasets.load_data_file`) or arrays.
    poisoned : sequence of str, path-like or tuple, default=()
        Poisoned test sets: files whose labels are the attack's target label
        of each input (the HackML layout), or tuples ``(X, y_target)`` or
        ``(X, y_target, y_true)``. A ``.npz`` file may hold ``y_true``, the
        inputs' true labels; inputs whose true label is the target are then
        left out of the attack success (as
        :func:`~backdoorlearn.metrics.attack_success_rate` does).
    n_classes : int, default=None
        ``N``: the number of classes, which is also the reject label.
        ``None`` takes the model's number of outputs for a model, else the
        largest clean label plus one. Give it for a model with an extra
        reject output of its own.
    target : int, default=None
        Target label for poisoned files that hold no labels (a folder of
        images).

    Returns
    -------
    result : dict
        JSON-ready: ``submission``, ``n_classes``, ``reject_label``,
        ``clean`` (``n``, ``accuracy``, ``rejected``: the share of clean
        inputs given the reject label), ``poisoned`` (one dict per set:
        ``n``, ``attack_success``, ``rejected``, and ``accuracy`` on the true
        labels when known), ``attack_success`` (the largest over the sets).

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.grading import evaluate_submission
    >>> X = np.zeros((4, 1, 8, 8), np.float32)
    >>> answers = lambda X: np.array([0, 1, 3, 3])[: len(X)]
    >>> result = evaluate_submission(answers, (X, [0, 1, 2, 2]), [(X, [2, 2, 2, 2])], n_classes=3)
    >>> result["clean"]["accuracy"], result["clean"]["rejected"]
    (0.5, 0.5)
    >>> result["poisoned"][0]["attack_success"], result["poisoned"][0]["rejected"]
    (0.0, 0.5)
    """
    sub = _as_submission(submission)
    if isinstance(poisoned, (str, os.PathLike)) or (isinstance(poisoned, tuple) and len(poisoned) in (2, 3)
                                                     and not isinstance(poisoned[0], (str, os.PathLike, tuple))):
        poisoned = [poisoned]
    X, y, _, clean_info = _read_set(clean, name="clean", role="clean")
    sets = [_read_set(p, name=f"poisoned set {k + 1}", role="poisoned", target=target)
            for k, p in enumerate(poisoned)]
    _count_outputs(sub, X)
    if n_classes is None:
        n_classes = sub.n_outputs if sub.n_outputs is not None else int(y.max()) + 1
    if not isinstance(n_classes, (int, np.integer)) or isinstance(n_classes, bool) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2; got {n_classes!r}.")
    n_classes = int(n_classes)
    if y.max() >= n_classes:
        raise ValueError(f"the clean labels go up to {y.max()}, but n_classes is {n_classes}: labels must lie in "
                         f"[0, {n_classes - 1}] ({n_classes} is the reject label).")
    if sub.n_outputs is not None and sub.n_outputs not in (n_classes, n_classes + 1):
        raise ValueError(f"the submission's model has {sub.n_outputs} outputs, but n_classes is {n_classes} "
                         f"(expected {n_classes} outputs, or {n_classes + 1} with a reject output).")
    for Xp, yp, _, info in sets:
        if Xp.shape[1:] != X.shape[1:]:
            raise ValueError(f"poisoned set {info['name']!r} holds images of shape {Xp.shape[1:]}; the clean data "
                             f"hold {X.shape[1:]}.")
        if yp.max() >= n_classes:
            raise ValueError(f"poisoned set {info['name']!r} has target labels up to {yp.max()}; n_classes is "
                             f"{n_classes}.")
    try:
        pred = _predictions(sub, X, n_classes, "the clean data")
    except RuntimeError as exc:
        raise ValueError(f"the clean data (images of shape {tuple(X.shape[1:])}) do not fit the submission: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    clean_report = dict(clean_info, n=int(len(X)), accuracy=float(np.mean(pred == y)),
                        rejected=float(np.mean(pred == n_classes)))
    poisoned_reports = []
    for Xp, yp, yt, info in sets:
        pp = _predictions(sub, Xp, n_classes, f"poisoned set {info['name']!r}")
        keep = np.ones(len(Xp), dtype=bool) if yt is None else yt != yp
        if not keep.any():
            raise ValueError(f"poisoned set {info['name']!r}: every input's true label is its target label.")
        entry = dict(info, n=int(keep.sum()), attack_success=float(np.mean(pp[keep] == yp[keep])),
                     rejected=float(np.mean(pp[keep] == n_classes)),
                     accuracy=None if yt is None else float(np.mean(pp[keep] == yt[keep])))
        poisoned_reports.append(entry)
    result = dict(
        report="backdoorlearn evaluate", submission=sub.describe(), n_classes=n_classes, reject_label=n_classes,
        clean=clean_report, poisoned=poisoned_reports,
        attack_success=max((p["attack_success"] for p in poisoned_reports), default=None),
    )
    return to_jsonable(result)


def format_evaluation(result):
    """The evaluation as the plain-text table ``backdoorlearn evaluate`` prints.

    Parameters
    ----------
    result : dict
        What :func:`evaluate_submission` returns.

    Returns
    -------
    text : str
        Lines joined by newlines: the submission and its reject label, then
        a table with one row for the clean data and one per poisoned set
        (inputs, accuracy, attack success, rejected fraction).

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.grading import evaluate_submission, format_evaluation
    >>> X = np.zeros((2, 1, 8, 8), np.float32)
    >>> result = evaluate_submission(lambda X: np.array([0, 2]), (X, [0, 1]), [(X, [1, 1])], n_classes=2)
    >>> print(format_evaluation(result).splitlines()[0])
    Submission: the submission (python); reject label N = 2
    """
    sub = result["submission"]
    n = result["reject_label"]
    what = sub.get("path") or "the submission"
    outs = f", {sub['n_outputs']} outputs" if sub.get("n_outputs") else ""
    lines = [f"Submission: {what} ({sub['kind']}{outs}); reject label N = {n}"]
    rows = [("data", "role", "inputs", "accuracy", "attack success", f"rejected (label {n})")]
    c = result["clean"]
    rows.append((c["name"], "clean", str(c["n"]), _pct(c["accuracy"]), "-", _pct(c["rejected"])))
    for p in result["poisoned"]:
        rows.append((p["name"], "poisoned", str(p["n"]), _pct(p.get("accuracy")), _pct(p["attack_success"]),
                     _pct(p["rejected"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines.append("  ".join(h.ljust(w) for h, w in zip(rows[0], widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows[1:]]
    return "\n".join(lines)


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"
