"""Anti-Backdoor Learning: train a clean classifier on a poisoned training set."""

from __future__ import annotations

import copy
import inspect
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._docstring import fill_doc
from .._utils import DEVICE_CONSTRAINT, as_tensor, check_images, check_labels, resolve_device, seeded, torch_seed
from ..models import ImageClassifierNet, ModelAdapter, build_net, wrap_module

__all__ = ["AntiBackdoorLearner"]

# Rows of an isolated label farther than this many "core units" (the median
# distance of the label's nearest half to its core) from the core are
# backdoor-like: twice the typical spread of the core, chosen on the embedded
# benchmarks (see AntiBackdoorLearner's Notes).
_CORE_RADIUS = 2.0
_CORE_ITERATIONS = 20


class _ABLNet(ImageClassifierNet):
    """A skorch classifier whose training loss follows the current ABL stage.

    The criterion is built with ``reduction="none"`` so :meth:`get_loss` sees
    one loss per example:

    - ``"isolation"``: local gradient ascent (LGA), ``sign(l - gamma) * l``
      per example (Li et al. 2021, Eq. 3): an example whose loss falls below
      ``gamma`` is pushed back up, so only examples learned much faster than
      the clean task (the backdoor ones) can end up far below ``gamma``;
    - ``"fine_tune"`` and ``"recovery"``: the ordinary mean cross-entropy;
    - ``"unlearning"``: Eq. 4, descent on the clean examples and ascent on the
      isolated ones, which arrive with their label shifted by ``n_classes``.
      The ascent term is ``-log(1 - p_y)`` (computed from logits), which
      pushes ``p_y`` down like ``-CE`` but keeps a gradient where the network
      is saturated (``-CE`` has none when ``p_y ~ 1``, the state fine-tuning
      leaves the backdoor examples in) and is bounded below.

    Evaluation (``training=False``) always reports the mean cross-entropy.
    """

    def __init__(self, *args, stage="fine_tune", gamma=0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.gamma = gamma

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_true = torch.as_tensor(y_true, device=y_pred.device)
        n_classes = y_pred.shape[1]
        isolated = y_true >= n_classes
        y_true = y_true % n_classes
        losses = super().get_loss(y_pred, y_true, X=X, training=training)
        if not training or self.stage in ("fine_tune", "recovery"):
            return losses.mean()
        if self.stage == "isolation":
            return (torch.sign(losses - self.gamma) * losses).mean()
        # -log(1 - p_y) = logsumexp(z) - logsumexp(z without z_y)
        others = y_pred.scatter(1, y_true[:, None], float("-inf"))
        not_y = torch.logsumexp(y_pred, dim=1) - torch.logsumexp(others, dim=1)
        zero = losses.new_zeros(())
        clean_term = losses[~isolated].mean() if (~isolated).any() else zero
        isolated_term = not_y[isolated].mean() if isolated.any() else zero
        return clean_term + isolated_term


class _RecordStage(Callback):
    """Write the ABL stage of each epoch into the net's history."""

    def on_epoch_end(self, net, **kwargs):
        net.history.record("stage", net.stage)


def _build_module(module, module_params, n_channels, n_classes):
    """An nn.Module from a class (instantiated) or an instance (deep-copied)."""
    params = dict(module_params or {})
    if isinstance(module, nn.Module):
        if params:
            raise ValueError(
                "module_params only applies when module is a class; got an nn.Module "
                f"instance ({type(module).__name__}) and module_params={params!r}."
            )
        return copy.deepcopy(module)
    if isinstance(module, type) and issubclass(module, nn.Module):
        try:
            accepted = inspect.signature(module).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            accepted = {}
        # Fill in what the data tell, when the class takes these names (SmallCNN does).
        if "in_channels" in accepted:
            params.setdefault("in_channels", n_channels)
        if "n_classes" in accepted:
            params.setdefault("n_classes", n_classes)
        return module(**params)
    raise TypeError(
        "module must be a torch.nn.Module subclass or instance returning logits; got "
        f"{module!r} ({type(module).__name__})."
    )


@fill_doc
class AntiBackdoorLearner(ClassifierMixin, BaseEstimator):
    """Anti-Backdoor Learning (ABL): train a clean classifier on poisoned data.

    Backdoor examples are learned much faster than clean ones: their training
    loss collapses in the first epochs while the clean examples' loss falls at
    a steady pace. ABL turns this into a two-stage training [1]_:

    1. **Isolation** (``isolation_epochs``): train on the whole set with local
       gradient ascent (LGA), the per-example loss ``sign(loss - gamma) *
       loss``, which holds every example's loss near ``gamma``; the examples
       that still end far below it are the backdoor ones. The
       ``isolation_ratio`` fraction with the lowest loss is isolated
       (:attr:`isolated_indices_`).
    2. **Fine-tuning, unlearning, recovery**: train normally on the other
       examples (``fine_tune_epochs``), then unlearn (``unlearning_epochs``):
       push the isolated examples, and the kept rows that resemble them, away
       from their labels while descending on a clean anchor, which breaks the
       trigger-to-target correlation the network learned from the poisoned
       rows it kept; then train normally on the anchor
       (``recovery_epochs``) to win back the clean accuracy the ascent cost.

    Every stage trains through skorch (one net, its loss switched by stage;
    the stage of each epoch is in ``history_``). Needs the training set only:
    no clean data, no knowledge of the trigger or the target label. It is a
    classifier: ``predict``, ``predict_proba``, ``score``, and it works in
    ``cross_val_score`` like any scikit-learn classifier.

    Parameters
    ----------
    module : nn.Module subclass or instance
        The network, returning logits. A class is instantiated at fit with
        ``module_params``, plus ``in_channels`` and ``n_classes`` taken from
        the data when its constructor has parameters of those names (as
        :class:`~backdoorlearn.models.SmallCNN` has). An instance is
        deep-copied at every fit and trained from its current weights (the
        instance itself is never changed), like skorch's ``module``.
    isolation_ratio : float, default=0.01
        Fraction of the training set isolated as backdoor examples, in (0, 1).
        The paper's 1% works for poisoning rates well above it: a high ratio
        unlearns more clean examples and costs accuracy, a low one may miss
        the trigger.
    gamma : float, default=0.1
        LGA threshold on the per-example cross-entropy, >= 0. A deviation
        from the paper's 0.5, which suits CIFAR-10, whose clean loss stays
        high: the clean loss of the embedded data sets falls below 0.5 within
        two epochs, and a threshold above the clean loss isolates clean rows.
    isolation_epochs : int, default=12
        Epochs of LGA training before isolation (the paper uses 20 on
        CIFAR-10; the embedded data sets are learned sooner).
    fine_tune_epochs : int, default=30
        Epochs of ordinary training on the non-isolated examples (>= 0).
    unlearning_epochs : int, default=3
        Epochs of unlearning (>= 0).
    recovery_epochs : int, default=3
        Epochs of ordinary training on the anchor after unlearning (>= 0).
    lr : float, default=2e-3
        Adam learning rate of the isolation and fine-tuning stages, the rate
        the benchmark models train at.
    unlearning_lr : float, default=None
        Adam learning rate of the unlearning and recovery stages; ``None``
        uses ``lr / 2``: gradient ascent diverges faster than descent.
    module_params : dict, default=None
        Keyword arguments of ``module`` when it is a class.
    train_batch_size : int, default=32
        Mini-batch size of every stage (it changes the result), and the
        batch size of the returned ``model_``.
    {device}
    {random_state}
    {verbose}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels seen at fit.
    input_shape_ : tuple of int
        ``(C, H, W)`` of the training images.
    isolated_indices_ : ndarray of shape (n_isolated,)
        Rows of the training set isolated as backdoor examples, lowest loss
        first.
    isolation_losses_ : ndarray of shape (n_samples,)
        Per-example cross-entropy of the training set after the isolation
        stage (what the isolation ranks).
    anchor_mask_ : ndarray of shape (n_samples,), dtype bool
        Rows the unlearning and recovery stages descended on (see Notes).
    unlearned_indices_ : ndarray of shape (n_unlearned,)
        Rows the unlearning stage ascended on: :attr:`isolated_indices_`
        followed by the kept rows left out of the anchor (see Notes).
    model_ : skorch.NeuralNetClassifier
        The trained network, a fitted skorch net (``model_.module_`` is the
        torch module), ready for ``BimodelClassifier`` or saving.
    history_ : skorch.History
        Per-epoch training record; its ``"stage"`` key is ``"isolation"``,
        ``"fine_tune"``, ``"unlearning"`` or ``"recovery"``.

    See Also
    --------
    backdoorlearn.FinePruner : Repair a trained backdoored model with clean data.
    backdoorlearn.BimodelClassifier : Serve a backdoored model next to a repaired one.

    Notes
    -----
    Deviations from the paper and its code:

    - LGA is applied per example (the paper's Eq. 3), not to the batch mean
      as in its code.
    - Fine-tuning uses only the non-isolated examples; the isolated ones are
      unlearned, never learned again.
    - Unlearning follows Eq. 4 (descend on the clean set, ascend on the
      isolated one) with two changes. The ascent term is ``-log(1 - p_y)``
      rather than ``-CE``: after fine-tuning the isolated examples sit at
      ``p_y ~ 1``, where ``-CE`` has no gradient. And the clean set is an
      *anchor*: with 1% isolated of 10% poisoned, the kept rows still hold
      nine in ten poisoned examples, which would teach the backdoor again
      as fast as it is unlearned. The isolated rows point at the others: in
      the penultimate-layer activations after fine-tuning the clean rows of
      a label form a tight core and the backdoor rows lie far from it (as
      in Activation Clustering, Chen et al. 2018). For each label of the
      isolated rows, the core is the mean of the half of the kept rows
      nearest to it (started at their coordinate-wise median); when the
      isolated rows lie more than twice the core half's median distance
      from it, the kept rows beyond that radius leave the anchor and are
      unlearned with the isolated rows (:attr:`unlearned_indices_`). A label
      whose isolated rows are ordinary examples of it (a clean row isolated
      by mistake) is left alone.
    - Unlearning many rows costs clean accuracy, so a recovery stage
      (``recovery_epochs``), ordinary training on the anchor, follows; the
      anchor holds (almost) no backdoor rows, so it wins the accuracy back
      without teaching the backdoor again.
    - Adam replaces the paper's SGD, for the small budgets used here.

    ``benchmarks/bench_bbd_abl.py`` measures the result on the embedded
    benchmarks (``benchmarks/results/bbd_abl.txt``).

    References
    ----------
    .. [1] Y. Li, X. Lyu, N. Koren, L. Lyu, B. Li and X. Ma, "Anti-Backdoor
       Learning: Training Clean Models on Poisoned Data", NeurIPS 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import AntiBackdoorLearner, SmallCNN, Trigger
    >>> from backdoorlearn.attacks import BackdoorPoisoner
    >>> from backdoorlearn.datasets import load_digits
    >>> X, y = load_digits()
    >>> trigger = Trigger.patch((1, 8, 8), size=2, location="bottom-right", color=1.0)
    >>> Xp, yp = BackdoorPoisoner(trigger, target_label=0, poison_rate=0.1,
    ...                           random_state=0).fit_resample(X[:600], y[:600])
    >>> abl = AntiBackdoorLearner(SmallCNN, isolation_epochs=2, fine_tune_epochs=3,
    ...                           unlearning_epochs=1, random_state=0).fit(Xp, yp)
    >>> abl.isolated_indices_.shape
    (6,)
    >>> abl.predict(X[600:605]).shape
    (5,)
    """

    _parameter_constraints = {
        "module": "no_validation",  # checked in fit with a message naming both kinds
        "isolation_ratio": [Interval(numbers.Real, 0, 1, closed="neither")],
        "gamma": [Interval(numbers.Real, 0, None, closed="left")],
        "isolation_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "fine_tune_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "unlearning_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "recovery_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "unlearning_lr": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "module_params": [dict, None],
        "train_batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": DEVICE_CONSTRAINT,
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        module,
        *,
        isolation_ratio=0.01,
        gamma=0.1,
        isolation_epochs=12,
        fine_tune_epochs=30,
        unlearning_epochs=3,
        recovery_epochs=3,
        lr=2e-3,
        unlearning_lr=None,
        module_params=None,
        train_batch_size=32,
        device=None,
        random_state=None,
        verbose=0,
    ):
        self.module = module
        self.isolation_ratio = isolation_ratio
        self.gamma = gamma
        self.isolation_epochs = isolation_epochs
        self.fine_tune_epochs = fine_tune_epochs
        self.unlearning_epochs = unlearning_epochs
        self.recovery_epochs = recovery_epochs
        self.lr = lr
        self.unlearning_lr = unlearning_lr
        self.module_params = module_params
        self.train_batch_size = train_batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y):
        """Train with isolation, fine-tuning and unlearning.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            The (possibly poisoned) training images. Not modified.
        y : array-like of shape (n_samples,)
            Their labels (integers), poisoned ones included.

        Returns
        -------
        self : AntiBackdoorLearner
            The fitted learner.
        """
        self._validate_params()
        caller = type(self).__name__
        X = check_images(X, name="X", caller=caller, min_samples=2)
        y = check_labels(y, n_samples=len(X), caller=caller)
        n = len(X)
        classes, y_enc = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"y in {caller} must hold at least 2 classes; got only class {classes[0]}."
            )
        n_isolated = int(np.ceil(self.isolation_ratio * n))
        if n - n_isolated < len(classes):
            raise ValueError(
                f"{caller} needs more training samples: isolation_ratio={self.isolation_ratio} "
                f"isolates {n_isolated} of n_samples={n}, leaving fewer than one sample per "
                f"class ({len(classes)} classes) to train on."
            )
        y_enc = y_enc.astype(np.int64)

        seed = torch_seed(self.random_state)
        with seeded(seed):
            module = _build_module(self.module, self.module_params, X.shape[1], len(classes))
            device = resolve_device(self.device, module, caller=caller)
            self._check_module_outputs(module, X[:1], len(classes))
            net = self._build_net(module, classes, device)
            net.initialize()

            # Stage 1 (Sec. 4.1): LGA on the whole set, then rank by loss.
            self._run_stage(net, "isolation", X, y_enc, self.isolation_epochs, self.lr)
            losses = self._example_losses(net, X, y_enc)
            order = np.argsort(losses, kind="stable")
            isolated = order[:n_isolated]
            kept = np.ones(n, dtype=bool)
            kept[isolated] = False

            # Stage 2 (Sec. 4.2): learn the kept set ...
            self._run_stage(net, "fine_tune", X[kept], y_enc[kept], self.fine_tune_epochs, self.lr)
            # ... then unlearn (Eq. 4): ascend on the isolated examples while
            # descending on a clean anchor. The kept set still holds most of the
            # poisoned rows (isolation_ratio << poison rate); left in the anchor
            # they teach the backdoor back. The isolated rows point at them: in
            # the network's penultimate features the clean rows of a label form
            # a tight core and the backdoor rows lie far from it, so each label
            # whose isolated rows lie outside its core also has its kept
            # outliers left out of the anchor and unlearned with the isolated.
            features = self._features(net, X)
            flagged = self._core_outliers(features, y_enc, kept, isolated)
            anchor = kept & ~flagged
            unlearned = np.concatenate([isolated, np.flatnonzero(flagged)])
            idx = np.concatenate([np.flatnonzero(anchor), unlearned])
            y_unlearn = np.concatenate([y_enc[anchor], y_enc[unlearned] + len(classes)])
            unlearning_lr = self.lr / 2 if self.unlearning_lr is None else self.unlearning_lr
            self._run_stage(net, "unlearning", X[idx], y_unlearn, self.unlearning_epochs,
                            unlearning_lr)
            # Recovery: ordinary descent on the anchor, which holds (almost) no
            # backdoor rows, so it restores the clean accuracy the ascent cost
            # without teaching the backdoor again.
            self._run_stage(net, "recovery", X[anchor], y_enc[anchor], self.recovery_epochs,
                            unlearning_lr)

        self.classes_ = classes
        self.input_shape_ = tuple(X.shape[1:])
        self.isolation_losses_ = losses
        self.isolated_indices_ = isolated
        self.anchor_mask_ = anchor
        self.unlearned_indices_ = unlearned
        self.history_ = net.history
        self.model_ = wrap_module(net.module_, classes=classes, device=device,
                                  batch_size=self.train_batch_size)
        self.model_.input_shape_ = self.input_shape_
        return self

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_module_outputs(module, x, n_classes):
        with torch.no_grad():
            was_training = module.training
            module.eval()
            try:
                out = module(as_tensor(x))
            finally:
                module.train(was_training)
        if out.ndim != 2 or out.shape[1] != n_classes:
            raise ValueError(
                f"module must return logits of shape (n_samples, {n_classes}) for the "
                f"{n_classes} classes in y; it returned shape {tuple(out.shape)}."
            )

    def _build_net(self, module, classes, device):
        return build_net(
            module,
            net_class=_ABLNet,
            classes=range(len(classes)),
            max_epochs=1,
            lr=self.lr,
            batch_size=self.train_batch_size,
            device=device,
            callbacks=[("stage", _RecordStage())],
            verbose=self.verbose,
            desc="ABL",
            criterion__reduction="none",
            gamma=float(self.gamma),
        )

    @staticmethod
    def _run_stage(net, stage, X, y, epochs, lr):
        if epochs == 0 or len(X) == 0:
            return
        if stage == "unlearning":
            # Gradient ascent starts from fresh optimizer moments: the fine-tuning
            # stage's Adam state would keep pushing the descent direction.
            net.initialize_optimizer()
        net.stage = stage
        net.set_params(lr=lr, max_epochs=epochs)
        net.partial_fit(X, y)

    @staticmethod
    def _features(net, X):
        """Penultimate-layer activations of the training set (logits as a fallback)."""
        adapter = ModelAdapter(net.module_, batch_size=256)
        try:
            layer = adapter.default_penultimate_layer(X)
        except ValueError:
            return adapter.logits(X).astype(np.float64)
        feats = adapter.activations(X, layer)
        return feats.reshape(len(feats), -1).astype(np.float64)

    @staticmethod
    def _core_outliers(features, y, kept, isolated):
        """Kept rows far from their label's core, for the labels the isolated rows lie outside of.

        For each label carried by an isolated row: the core centre of the kept
        rows of that label starts at their coordinate-wise median and is
        refined to the mean of the half of the rows nearest to it; a row's
        distance to that centre is measured in units of the median distance of
        that nearest half. When the isolated rows of the label lie beyond
        ``_CORE_RADIUS`` such units (they are not ordinary examples of the
        label: a backdoor cluster), the kept rows of the label beyond it too
        are flagged.
        """
        flagged = np.zeros(len(y), dtype=bool)
        for label in np.unique(y[isolated]):
            rows = np.flatnonzero(kept & (y == label))
            if len(rows) < 2:
                continue
            f = features[rows]
            centre = np.median(f, axis=0)
            for _ in range(_CORE_ITERATIONS):
                dist = np.linalg.norm(f - centre, axis=1)
                new_centre = f[dist <= np.median(dist)].mean(axis=0)
                if np.allclose(new_centre, centre):
                    break
                centre = new_centre
            dist = np.linalg.norm(f - centre, axis=1)
            unit = np.median(dist[dist <= np.median(dist)])
            if unit <= 0:
                continue
            iso_rows = isolated[y[isolated] == label]
            iso_dist = np.linalg.norm(features[iso_rows] - centre, axis=1) / unit
            if np.median(iso_dist) > _CORE_RADIUS:
                flagged[rows[dist / unit > _CORE_RADIUS]] = True
        return flagged

    @staticmethod
    def _example_losses(net, X, y):
        logits = net.forward(X, training=False)
        return F.cross_entropy(logits.float(), torch.as_tensor(y), reduction="none").numpy()

    # ------------------------------------------------------------------ prediction
    def _check_X(self, X):
        check_is_fitted(self, "model_")
        return check_images(X, name="X", caller=type(self).__name__, image_shape=self.input_shape_)

    def predict_proba(self, X):
        """Class probabilities of the trained network.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            Images of the shape seen at fit.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Softmax of the network's logits, columns in ``classes_`` order.
        """
        X = self._check_X(X)
        return self.model_.predict_proba(X)

    def predict(self, X):
        """Predicted class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            Images of the shape seen at fit.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            A class of ``classes_`` per image.
        """
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        return tags
