"""Neural Cleanse: reverse engineer a trigger per label, flag the outliers."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from .._docstring import fill_doc
from .._utils import DEVICE_CONSTRAINT, check_images, check_label_value, check_labels
from ..metrics import attack_success_rate
from ..models import ModelAdapter
from ..models._batching import architecture_key, fastest_size
from ..triggers import Trigger
from ._decision import log_anomaly_scores, log_norm_thresholds
from ._reverse import Task, reverse_chunk, step_probe

__all__ = ["NeuralCleanse", "mad_anomaly_index"]

_MAD_CONSTANT = 1.4826  # consistency constant of the MAD for a normal distribution
_EARLY_STOP_THRESHOLD = 0.99  # reference code: the best norm must drop by 1% to count
_FORWARD_BUDGET = 2**18  # input values per forward pass when label_chunk_size=None
_FEWER_CHUNKS_MARGIN = 0.15  # label_chunk_size="auto": fewer chunks unless more cost >15% less (see _cheapest_chunking)
_SETTLE_THRESHOLD = 0.99  # settle_patience: an improvement of the best norm by less than 1% does not count
_DEFAULT_THRESHOLD = {"log-mad": 3.5, "mad": 2.0}


def mad_anomaly_index(l1_norms, reference=None):
    """Anomaly index of each norm: ``|L1 - median| / (1.4826 * MAD)`` (Neural Cleanse, IV).

    Parameters
    ----------
    l1_norms : array-like of shape (n_labels,)
        L1 norms of the reversed triggers.
    reference : array-like, default=None
        Norms the median and the MAD are estimated from (``mode="fast"``
        estimates them on a random sample of labels); ``None`` uses
        ``l1_norms`` itself.

    Returns
    -------
    indices : ndarray of shape (n_labels,)
        Never NaN: when the MAD is 0 (all reference norms equal), a norm equal
        to the median gets 0 and any other ``inf``.
    median : float
        Median of the reference norms.
    mad : float
        The scaled MAD, ``1.4826 * median(|L1 - median|)``.

    Examples
    --------
    >>> from backdoorlearn.inspection import mad_anomaly_index
    >>> idx, median, mad = mad_anomaly_index([10.0, 11.0, 9.0, 10.5, 2.0])
    >>> round(float(idx[-1]), 2), median
    (5.4, 10.0)
    """
    norms = np.asarray(l1_norms, dtype=np.float64)
    ref = norms if reference is None else np.asarray(reference, dtype=np.float64)
    median = float(np.median(ref))
    mad = float(_MAD_CONSTANT * np.median(np.abs(ref - median)))
    dev = np.abs(norms - median)
    if mad > 0:
        return dev / mad, median, mad
    return np.where(dev == 0, 0.0, np.inf), median, mad


@fill_doc
class NeuralCleanse(BaseEstimator):
    """Neural Cleanse: find whether a model is backdoored, which label and what trigger.

    For every label ``t`` (or every ``source -> target`` pair), find the
    smallest trigger ``(mask m, pattern p)`` that sends the defender's clean
    images of the other labels to ``t``::

        minimize  CE(f((1 - m) * x + m * p), t) + cost * |m|_1

    A backdoored label needs a far smaller mask than the others. The paper
    compares the L1 norms with their median absolute deviation (the anomaly
    index ``|L1 - median| / (1.4826 * MAD)``, reported as
    ``anomaly_indices_``); the labels flagged as infected are those whose log
    norm lies far below the other labels' (``decision_rule``), which holds
    across architectures, data and norm scales.

    Needs a white-box model (a torch module or a skorch net) and a few
    hundred clean images (no labels required; no poisoned training data).

    Parameters
    ----------
    init_cost : float, default=1e-3
        Weight of the L1 penalty when the optimization starts, the reference
        code's ``INIT_COST`` (see Notes for where the reference starts it).
    lr : float, default=0.1
        Adam learning rate, with betas (0.5, 0.9), as in the reference code.
    steps : int, default=100
        Most optimization steps per trigger. One step is one pass over the
        defender's images in mini-batches of ``train_batch_size`` (the
        reference's "step"; see ``samples_per_step``); the cost schedule and
        early stopping act once per step. The reference's GTSRB example
        runs up to 1000 steps; early stopping ends most labels long before
        either cap, and 100 keeps a label that never settles affordable.
    attack_success_threshold : float, default=0.99
        Attack success a reversed trigger must reach (on the mini-batches of
        a step) to count, as in the reference code.
    patience : int, default=5
        Steps above (below) the threshold before the cost goes up (down),
        the value of the reference's GTSRB example.
    cost_multiplier : float, default=1.5
        The cost is multiplied by ``cost_multiplier`` when raised and divided
        by ``cost_multiplier ** 1.5`` when lowered, the reference code's
        defaults.
    early_stop_patience : int, default=None
        Stop a trigger once the schedule has moved both ways and its best norm
        has not improved by 1% for this many steps. ``None`` means
        ``2 * patience``, the reference code's default.
    labels : array-like of int, default=None
        Target labels to analyse; ``None`` means all. At least 3 (the MAD).
    pairs : {"all"} or list of (int, int), default=None
        Partial (source-specific) backdoors (paper, Sec. VII-E): reverse a
        trigger per ``(source, target)`` pair from the source label's images
        only, and find the anomalous pair. ``"all"`` is every ordered pair of
        ``labels``. ``None`` analyses labels.
    mode : {"full", "fast"}, default="full"
        ``"fast"`` is the paper's low-cost scheme for many labels (Sec. V-B):
        ``fast_steps`` steps for every label, then the full optimization only
        for the ``fast_top_k`` smallest norms and ``fast_n_random`` other
        labels drawn at random. Only fully optimized labels can be flagged.
        The median and the MAD are estimated differently from the paper (see
        Notes).
    fast_steps : int, default=10
        Steps of the short optimization of ``mode="fast"``.
    fast_top_k : int, default=None
        Suspicious candidates kept by ``mode="fast"``; ``None`` means
        ``max(3, ceil(0.1 * n))``.
    fast_n_random : int, default=None
        Random candidates fully optimized to estimate the MAD; ``None``
        means ``max(5, ceil(0.2 * n))`` (at most the candidates left).
    decision_rule : {"log-mad", "mad"}, default="log-mad"
        How ``flagged_labels_`` are decided from the L1 norms.
        ``"log-mad"`` scores each candidate by how many robust standard
        deviations its log norm lies below the median of the *other*
        candidates' log norms (leave one out; the spread is 1.4826 x their
        MAD, at least 0.1, see :func:`log_anomaly_scores`); with ``pairs``,
        against the other pairs of the same source label. ``"mad"`` is the
        paper's rule (Sec. IV-C): the anomaly index of the raw norms, below
        the median. Deviation from the paper: on models whose clean labels'
        norms spread widely (on 28x28 and 32x32 images the hardest clean
        label can need a trigger several times larger than the easiest), the
        MAD of raw norms grows with that spread and hides a target several
        times smaller than the others; on the log scale a target stands out as a multiplicative
        outlier whatever the scale. Chosen on the model zoo's development
        entries (see the zoo page of the user guide). ``anomaly_index_`` and
        ``anomaly_indices_`` are the paper's figures under either rule.
    anomaly_threshold : float, default=None
        Candidates whose decision score exceeds it are flagged. ``None`` is
        3.5 for ``"log-mad"`` (chosen on the zoo's development entries) and
        the paper's 2 for ``"mad"``.
    n_restarts : int, default=1
        Independent optimizations per candidate from different random
        initialisations. The smallest norm reaching the threshold is kept
        (the problem is a minimization) and the spread of the model-level
        index over restarts is reported in ``restart_anomaly_indices_``.
    label_chunk_size : int, "auto" or None, default=None
        Triggers optimized together in one ``(K, ...)`` tensor (a memory
        bound and a speed setting; the result does not depend on it).
        ``None`` splits them evenly over ``n_jobs`` with at most about
        ``2**18`` input values per forward pass: every label of small images
        at once, a few labels of larger ones, whose feature maps would
        otherwise outgrow a CPU's caches. ``"auto"`` chooses K by
        measurement: a short timing probe (about a second at most) of one
        optimization mini-batch (stamping, forward pass, input gradient and
        Adam updates of ``K x train_batch_size`` stamped images) for K = 1,
        2, 4, ... up to one job's share of the triggers keeps the K whose
        chunks (and remainder chunk) take the least time for all triggers by
        the probe's times per trigger-step, preferring fewer chunks unless
        more cost over 15% less (each chunk has a per-step loop the probe
        does not time); the probe is cached per architecture, image shape,
        device, torch thread count and ``train_batch_size``, so it runs once
        per process for a model shape. It is not the default: on one CPU
        thread it was as fast as ``None`` on the 28x28 and 32x32 models of
        ``benchmarks/results/nc_speed.txt``, and on the digits model its
        probe sometimes ranks K=8 ahead of ``None``'s K=10, which runs about
        20% faster. An int is used as given; ``1`` is the
        one-label-at-a-time reference. The K used is ``label_chunk_size_``.
    settle_patience : int or None, default=None
        Stop a trigger once its smallest mask reaching the threshold (the
        best one, which is what is kept) has not shrunk by more than 1% for
        this many steps, even if its cost schedule has not moved both ways;
        the trigger leaves the batch, as with the early stop. ``None`` is
        off: only the reference code's early stop (see
        ``early_stop_patience``) ends a trigger before ``steps``, as in the
        reference code of Wang et al. [1]_; this rule is a deviation from it
        (see Notes). ``10`` (2 x ``patience``) left the flagged labels
        unchanged on the model zoo's development entries it was tried on
        and saved label-steps (``benchmarks/bench_nc_speed.py --settle-zoo
        development``). It stays off by default: on the 16 held-out digits
        entries it saved 16% of the label-steps but dropped one flag (a
        blend backdoor of a VGG-style net stopped being flagged;
        ``benchmarks/results/nc_settle_heldout.txt``). The steps it saved
        are in ``label_steps_saved_``.
    train_batch_size : int, default=32
        Images per trigger in each mini-batch of the optimization, the
        reference's ``BATCH_SIZE`` (a forward pass holds up to
        ``label_chunk_size * train_batch_size`` images).
    samples_per_step : int, default=None
        Images drawn per step (rounded up to whole mini-batches). ``None``
        is one pass over ``X``, so the cost schedule moves at the same pace
        whatever the number of defender images. The reference's GTSRB
        example draws 1000 per step whatever the data size; ``1000``
        reproduces its cadence, at that many images of work per step.
    {device}
    {n_jobs}
        Chunks of labels are dispatched to the jobs; seeds are drawn before
        dispatch, so the result does not depend on ``n_jobs``.
    {random_state}
    {verbose}

    Attributes
    ----------
    reversed_triggers_ : dict
        Label (or ``(source, target)`` pair) -> reversed :class:`Trigger`.
    labels_ : ndarray of shape (n_candidates,)
        Target label of each candidate.
    pairs_ : ndarray of shape (n_candidates, 2) or None
        ``(source, target)`` of each candidate with ``pairs``, else None.
    l1_norms_ : ndarray of shape (n_candidates,)
        L1 norm of each reversed mask (in ``mode="fast"``, the short-run norm
        for candidates that were not fully optimized).
    reversed_attack_success_ : ndarray of shape (n_candidates,)
        Attack success of each reversed trigger on the defender's images of
        the other labels (of the source label for pairs).
    anomaly_indices_ : ndarray of shape (n_candidates,)
        MAD anomaly index of each candidate (in ``mode="fast"``, of its
        calibrated norm when it was not fully optimized; see ``mode``).
    screening_l1_norms_ : ndarray of shape (n_candidates,) or None
        Norms after the short screening of ``mode="fast"``; None in full mode.
    anomaly_index_ : float
        Index of the smallest-norm candidate: the model-level figure of the
        paper (Fig. 3).
    flagged_labels_ : list of int
        Labels flagged as infected, most anomalous first (targets of the
        flagged pairs with ``pairs``).
    flagged_pairs_ : list of tuple or None
        Flagged ``(source, target)`` pairs with ``pairs``, else None.
    decision_scores_ : ndarray of shape (n_candidates,)
        The score ``decision_rule`` thresholds (larger = more anomalously
        small): the leave-one-out score of the log norms for ``"log-mad"``
        (``nan`` for a source with fewer than 3 pairs), the anomaly index
        signed by the side of the median for ``"mad"``.
    decision_threshold_ : float
        The threshold the scores were compared with.
    decision_norm_thresholds_ : ndarray of shape (n_candidates,)
        The same decision in the units of the norms: a fully optimized
        candidate is flagged when its norm lies below its entry (one value
        per candidate for ``"log-mad"``, whose reference leaves the candidate
        out; ``median - threshold * MAD`` for every candidate with ``"mad"``).
    backdoor_detected_ : bool
        Whether any label (pair) is flagged.
    median_l1_norm_, mad_ : float
        The median and the scaled MAD the indices use.
    restart_anomaly_indices_ : ndarray of shape (n_restarts,)
        ``anomaly_index_`` computed from each restart alone.
    fully_optimized_ : ndarray of shape (n_candidates,), bool
        Which candidates ran the full optimization (all but in fast mode).
    n_steps_ : ndarray of shape (n_candidates,)
        Optimization steps run per candidate (summed over restarts and, in
        fast mode, over both phases).
    label_steps_ : int
        Optimization steps run in all, summed over candidates: the work of
        the fit (``n_steps_.sum()``).
    settled_ : ndarray of shape (n_candidates,), bool
        Which candidates ``settle_patience`` stopped (in any restart or
        phase); all False when it is None.
    label_steps_saved_ : int
        Steps the settled candidates had left before their cap (``steps``,
        or ``fast_steps`` in the screening): what settling saved at most,
        since a settled trigger might have met the reference's early stop
        before the cap (a run with ``settle_patience=None`` tells the exact
        figure). 0 when it is None.
    label_chunk_size_ : int
        Triggers per chunk of the (full) optimization: ``label_chunk_size``
        as given (at most the number of triggers), or the K it chose.
    label_chunk_timings_ : dict or None
        With ``label_chunk_size="auto"``, the probe's seconds per
        trigger-step of each K it timed (the cached probe's when cached);
        otherwise None.
    n_classes_ : int
        Number of classes of the model.

    See Also
    --------
    ActivationFilter : Flag inputs that fire the reversed trigger's neurons.

    Notes
    -----
    Follows the reference implementation (``bolunwang/backdoor``,
    ``visualizer.py``): random initialization, a 2-D mask shared over the
    channels, tanh parametrisation of mask and pattern, Adam, the cost
    schedule and early stopping as there. The triggers of a chunk are
    optimized as one ``(K, ...)`` tensor with a separate cost schedule
    each; a trigger that stops early leaves the batch. Deviations:

    - the cost starts at ``init_cost``; the reference starts it at 0 and
      sets it to ``init_cost`` once the trigger has reached the threshold
      for ``patience`` steps (its ``RESET_COST_TO_ZERO``);
    - at most ``steps=100`` steps of one pass over ``X`` each, where the
      reference's example runs up to 1000 steps of 1000 images (see
      ``steps`` and ``samples_per_step``);
    - the pattern spans the value range of ``X`` (at least [0, 1]) rather
      than raw pixel values;
    - with ``settle_patience``, a trigger also stops once its best norm has
      not improved by more than 1% for that many steps, without the
      reference's condition that the cost schedule moved both ways first
      (the reference stops only then; a trigger whose cost only ever rose
      or only fell runs to the cap there). The kept trigger is still the
      smallest one that reached the threshold;
    - without ``y``, the images the model predicts as the target are left
      out of a target's batches (the reference uses every image); with
      ``y`` the true labels decide;
    - in ``mode="fast"``, Sec. V-B estimates the median and the MAD from
      the randomly drawn labels alone, a handful of norms with a few dozen
      labels. Here the random labels ran both phases, so the median of
      their full / screening norm ratio puts every screened label's norm on
      the full scale, and the median and the MAD come from all labels, as
      in full mode.

    References
    ----------
    .. [1] B. Wang, Y. Yao, S. Shan, H. Li, B. Viswanath, H. Zheng, B. Y. Zhao,
       "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural
       Networks", IEEE S&P 2019.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import NeuralCleanse, SmallCNN
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((40, 1, 8, 8), dtype=np.float32)
    >>> y = np.arange(40) % 4
    >>> nc = NeuralCleanse(steps=3, random_state=0).fit(SmallCNN(1, 4), X, y)
    >>> nc.l1_norms_.shape, sorted(nc.reversed_triggers_)
    ((4,), [0, 1, 2, 3])
    >>> bool(np.isfinite(nc.anomaly_indices_).all())
    True
    """

    _parameter_constraints = {
        "init_cost": [Interval(numbers.Real, 0, None, closed="left")],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "attack_success_threshold": [Interval(numbers.Real, 0, 1, closed="right")],
        "patience": [Interval(numbers.Integral, 1, None, closed="left")],
        "cost_multiplier": [Interval(numbers.Real, 1, None, closed="neither")],
        "early_stop_patience": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "labels": ["array-like", None],
        "pairs": [StrOptions({"all"}), list, tuple, None],
        "mode": [StrOptions({"full", "fast"})],
        "fast_steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "fast_top_k": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "fast_n_random": [Interval(numbers.Integral, 3, None, closed="left"), None],
        "decision_rule": [StrOptions({"log-mad", "mad"})],
        "anomaly_threshold": [Interval(numbers.Real, 0, None, closed="left"), None],
        "n_restarts": [Interval(numbers.Integral, 1, None, closed="left")],
        "label_chunk_size": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"}), None],
        "settle_patience": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "train_batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "samples_per_step": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "device": DEVICE_CONSTRAINT,
        "n_jobs": [numbers.Integral, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, init_cost=1e-3, lr=0.1, steps=100, attack_success_threshold=0.99, patience=5,
                 cost_multiplier=1.5, early_stop_patience=None, labels=None, pairs=None, mode="full",
                 fast_steps=10, fast_top_k=None, fast_n_random=None, decision_rule="log-mad",
                 anomaly_threshold=None, n_restarts=1, label_chunk_size=None, settle_patience=None,
                 train_batch_size=32, samples_per_step=None, device=None, n_jobs=None, random_state=None,
                 verbose=0):
        self.init_cost = init_cost
        self.lr = lr
        self.steps = steps
        self.attack_success_threshold = attack_success_threshold
        self.patience = patience
        self.cost_multiplier = cost_multiplier
        self.early_stop_patience = early_stop_patience
        self.labels = labels
        self.pairs = pairs
        self.mode = mode
        self.fast_steps = fast_steps
        self.fast_top_k = fast_top_k
        self.fast_n_random = fast_n_random
        self.decision_rule = decision_rule
        self.anomaly_threshold = anomaly_threshold
        self.n_restarts = n_restarts
        self.label_chunk_size = label_chunk_size
        self.settle_patience = settle_patience
        self.train_batch_size = train_batch_size
        self.samples_per_step = samples_per_step
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    def fit(self, model, X, y=None):
        """Reverse engineer a trigger per candidate and compute the anomaly indices.

        Parameters
        ----------
        model : torch.nn.Module or skorch.NeuralNetClassifier
            The model to inspect (white box); it is not modified.
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            The defender's clean images, in the model's input scale.
        y : array-like of shape (n_samples,), default=None
            Their labels. Without them the model's predictions decide which
            images belong to which label.

        Returns
        -------
        self : NeuralCleanse
            The fitted inspector.
        """
        self._validate_params()
        adapter, X, y = self._check_data(model, X, y)
        candidates = self._candidates(self.n_classes_)
        pools = [self._pool(c, y) for c in candidates]
        rng = check_random_state(self.random_state)
        # Seeds are drawn before any dispatch, so the result does not depend on n_jobs.
        seeds = rng.randint(0, 2**31 - 1, size=(self.n_restarts, len(candidates)))
        run = self._run_context(adapter, X, pools)
        screening, selected, random_part = self._screen(candidates, pools, seeds[0], run, rng)
        final, per_restart, n_steps = self._reverse(candidates, pools, seeds, selected, screening, run)
        est_norms = self._score(final, per_restart, screening, selected, random_part)
        keys = self._record(adapter, X, y, candidates, pools, final, n_steps, screening)
        self._flag(est_norms, keys)
        return self

    # ------------------------------------------------------------------ stages of fit
    def _check_data(self, model, X, y):
        """The white-box adapter and validated ``X``, ``y`` (predicted labels without ``y``)."""
        name = type(self).__name__
        adapter = ModelAdapter(model, defense=name, device=self.device).require_white_box()
        X = check_images(X, name="X", caller=name, min_samples=2)
        try:
            n_classes = adapter.n_classes(X[:1])
            adapter.logits(X[:2])
        except RuntimeError as exc:
            if isinstance(exc, ValueError):  # already explained by the adapter
                raise
            # the adapter names X for a channel or size mismatch and model for its dtype; what is left
            # is not known to be X's fault
            raise ValueError(
                f"model given to {name}.fit failed on X (images of shape {X.shape[1:]}, float32, on "
                f"{adapter.device}): {exc}"
            ) from exc
        if y is None:
            y = adapter.predict(X)
        else:
            y = check_labels(y, n_samples=X.shape[0], n_classes=n_classes, caller=f"{name}.fit")
        self.n_classes_ = n_classes
        return adapter, X, y

    def _run_context(self, adapter, X, pools):
        """What every optimization chunk needs: a frozen copy of the model, the data, the settings."""
        work = adapter.copy()  # the user's module is never touched (requires_grad, device)
        module = work.runtime_module
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return dict(adapter=work, X=X, cfg=self._config(X, pools), device=work.device)

    def _screen(self, candidates, pools, seeds, run, rng):
        """``mode="fast"`` (Sec. V-B): a short optimization of every candidate, then the selection.

        Returns the screening results (``None`` in full mode), the candidates
        to optimize fully (the ``fast_top_k`` smallest screening norms and
        ``fast_n_random`` others drawn at random) and the random ones.
        """
        n_cand = len(candidates)
        if self.mode != "fast":
            return None, np.arange(n_cand), None
        short = self._run_tasks([Task(self._target(c), p, int(s)) for c, p, s in zip(candidates, pools, seeds)],
                                run, steps=self.fast_steps, desc="fast screening")
        short_norms = np.array([r.l1_norm for r in short])
        top_k = min(self.fast_top_k or max(3, math.ceil(0.1 * n_cand)), n_cand)
        order = np.argsort(short_norms, kind="stable")
        top = order[:top_k]
        rest = order[top_k:]
        n_random = min(self.fast_n_random or max(5, math.ceil(0.2 * n_cand)), rest.size)
        random_part = np.sort(rng.choice(rest, size=n_random, replace=False)) if n_random else \
            np.empty(0, dtype=np.int64)
        return short, np.sort(np.concatenate([top, random_part])), random_part

    def _reverse(self, candidates, pools, seeds, selected, screening, run):
        """The full optimization of the selected candidates, ``n_restarts`` times each.

        Returns the kept result per candidate (the best restart; the
        screening result for candidates not selected), the results of each
        restart, and the steps run per candidate.
        """
        tasks = [Task(self._target(candidates[i]), pools[i], int(seeds[r, i]))
                 for r in range(self.n_restarts) for i in selected]
        results = self._run_tasks(tasks, run, steps=self.steps, desc="reverse engineering")
        per_restart = [results[r * len(selected):(r + 1) * len(selected)] for r in range(self.n_restarts)]
        n_steps = np.zeros(len(candidates), dtype=np.int64)
        settled = np.zeros(len(candidates), dtype=bool)
        saved = 0  # steps the settled triggers had left before their cap
        final = [None] * len(candidates)
        if screening is not None:
            final = list(screening)
            n_steps += [r.steps for r in screening]
            settled |= [r.settled for r in screening]
            saved += sum(self.fast_steps - r.steps for r in screening if r.settled)
        for j, i in enumerate(selected):
            final[i] = min((rr[j] for rr in per_restart), key=_rank)
            n_steps[i] += sum(rr[j].steps for rr in per_restart)
            settled[i] |= any(rr[j].settled for rr in per_restart)
            saved += sum(self.steps - rr[j].steps for rr in per_restart if rr[j].settled)
        self.settled_ = settled
        self.label_steps_ = int(n_steps.sum())
        self.label_steps_saved_ = int(saved)
        return final, per_restart, n_steps

    def _score(self, final, per_restart, screening, selected, random_part):
        """The MAD anomaly indices (Sec. IV-C), overall and per restart; returns the full-scale norms."""
        fully = np.zeros(len(final), dtype=bool)
        fully[selected] = True
        norms = np.array([r.l1_norm for r in final])
        ratio = None
        if screening is not None and random_part.size >= 3:
            # Deviation from Sec. V-B (see the class Notes): the random labels' full /
            # screening norm ratio puts the screened labels on the full scale.
            short_norms = np.array([r.l1_norm for r in screening])
            ratio = float(np.median(norms[random_part] / np.maximum(short_norms[random_part], 1e-12)))

        def scored(label_norms):
            # Full-scale norms (fully optimized, or screening norm x ratio) and the reference.
            if ratio is None:
                return label_norms, label_norms[fully]
            est = np.where(fully, label_norms, short_norms * ratio)
            return est, est

        est_norms, reference = scored(norms)
        self.anomaly_indices_, self.median_l1_norm_, self.mad_ = mad_anomaly_index(est_norms, reference)
        if self.mad_ == 0:
            warnings.warn("NeuralCleanse: all reference L1 norms are equal (MAD = 0); anomaly "
                          "indices are 0 or inf.", RuntimeWarning, stacklevel=3)
        restart_idx = []
        for rr in per_restart:
            rn = norms.copy()
            rn[selected] = [r.l1_norm for r in rr]
            est, ref = scored(rn)
            ai, _, _ = mad_anomaly_index(est, ref)
            restart_idx.append(float(ai[np.argmin(est)]))
        self.restart_anomaly_indices_ = np.array(restart_idx)
        self.anomaly_index_ = float(self.anomaly_indices_[np.argmin(est_norms)])
        self.l1_norms_ = norms
        self.fully_optimized_ = fully
        return est_norms

    def _record(self, adapter, X, y, candidates, pools, final, n_steps, screening):
        """The per-candidate attributes: labels, pairs, triggers and their attack success.

        Returns the key of each candidate in ``reversed_triggers_``: its label, or its
        ``(source, target)`` pair.
        """
        self.labels_ = np.array([self._target(c) for c in candidates], dtype=np.int64)
        self.pairs_ = np.array(candidates, dtype=np.int64) if self.pairs is not None else None
        keys = [tuple(int(v) for v in c) if self.pairs is not None else int(c) for c in candidates]
        self.reversed_triggers_ = {k: Trigger(r.mask, r.pattern, name=f"reversed {k}") for k, r in zip(keys, final)}
        self.reversed_attack_success_ = np.array([
            self._asr(adapter, X, y, pools[i], self.labels_[i], self.reversed_triggers_[keys[i]])
            for i in range(len(candidates))])
        self.n_steps_ = n_steps
        self.screening_l1_norms_ = None if screening is None else np.array([r.l1_norm for r in screening])
        return keys

    def _flag(self, est_norms, keys):
        """Flag the candidates whose decision score (``decision_rule``) exceeds the threshold."""
        self.decision_scores_ = self._decision_scores(est_norms)
        self.decision_threshold_ = float(self.anomaly_threshold if self.anomaly_threshold is not None
                                         else _DEFAULT_THRESHOLD[self.decision_rule])
        # Only fully optimized candidates can be flagged (all of them in full mode).
        if self.decision_rule == "mad":
            self.decision_norm_thresholds_ = np.full(
                len(est_norms), self.median_l1_norm_ - self.decision_threshold_ * self.mad_)
        else:
            self.decision_norm_thresholds_ = log_norm_thresholds(
                np.maximum(est_norms, 1e-12), self.decision_threshold_,
                groups=self._decision_groups())
        flagged = np.flatnonzero(self.fully_optimized_ & (self.decision_scores_ > self.decision_threshold_))
        flagged = flagged[np.argsort(-self.decision_scores_[flagged], kind="stable")]
        if self.pairs is not None:
            self.flagged_pairs_ = [keys[i] for i in flagged]
            self.flagged_labels_ = list(dict.fromkeys(int(self.labels_[i]) for i in flagged))
        else:
            self.flagged_pairs_ = None
            self.flagged_labels_ = [int(self.labels_[i]) for i in flagged]
        self.backdoor_detected_ = bool(flagged.size)

    # ------------------------------------------------------------------ helpers
    def _decision_scores(self, est_norms):
        """The score ``decision_rule`` thresholds: larger = more anomalously small."""
        if self.decision_rule == "mad":
            below = est_norms < self.median_l1_norm_
            return np.where(below, self.anomaly_indices_, -self.anomaly_indices_)
        return log_anomaly_scores(np.maximum(est_norms, 1e-12), groups=self._decision_groups())

    def _decision_groups(self):
        """Which candidates the log-mad rule compares with each other: a pair with its source's pairs."""
        return self.pairs_[:, 0] if self.pairs_ is not None else None

    def _candidates(self, n_classes):
        name = type(self).__name__
        if self.labels is None:
            labels = list(range(n_classes))
        else:
            arr = np.asarray(self.labels).ravel()
            labels = [check_label_value(v.item() if hasattr(v, "item") else v, n_classes,
                                        name="labels", caller=name) for v in arr]
            if len(set(labels)) != len(labels):
                raise ValueError(f"labels in {name} must not repeat; got {list(arr)}.")
        if self.pairs is None:
            cands = labels
        elif isinstance(self.pairs, str):
            cands = [(s, t) for t in labels for s in labels if s != t]
        else:
            cands = []
            for pair in self.pairs:
                if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                    raise ValueError(f"pairs in {name} must be 'all' or a list of (source, target) "
                                     f"tuples; got the element {pair!r}.")
                s = check_label_value(pair[0], n_classes, name="pairs (source)", caller=name)
                t = check_label_value(pair[1], n_classes, name="pairs (target)", caller=name)
                if s == t:
                    raise ValueError(f"pairs in {name} must have source != target; got {pair!r}.")
                cands.append((s, t))
        if len(cands) < 3:
            what = "pairs" if self.pairs is not None else "labels"
            raise ValueError(
                f"{name} needs at least 3 {what} to estimate the median absolute deviation; "
                f"got {len(cands)} (a model with {n_classes} classes, {what}={cands!r})."
            )
        return cands

    def _target(self, cand):
        return int(cand[1]) if self.pairs is not None else int(cand)

    def _pool(self, cand, y):
        if self.pairs is not None:
            pool = np.flatnonzero(y == cand[0])
            what = f"of the source label {cand[0]}"
        else:
            pool = np.flatnonzero(y != cand)
            what = f"of labels other than {cand}"
        if pool.size == 0:
            raise ValueError(f"X in {type(self).__name__}.fit has no image {what}; "
                             "Neural Cleanse needs some to reverse a trigger.")
        return pool

    def _config(self, X, pools):
        lo = min(0.0, float(X.min()))
        hi = max(1.0, float(X.max()))
        batch = min(self.train_batch_size, min(p.size for p in pools))
        # One step = as many mini-batches as one pass over X takes (or samples_per_step
        # images): the same cadence for the cost schedule whether a trigger's pool is all
        # other labels or one source.
        return dict(
            steps=self.steps, batch=batch,
            batches_per_step=max(1, math.ceil((self.samples_per_step or len(X)) / self.train_batch_size)),
            lr=float(self.lr), betas=(0.5, 0.9), init_cost=float(self.init_cost),
            threshold=float(self.attack_success_threshold), patience=int(self.patience),
            multiplier_up=float(self.cost_multiplier),
            multiplier_down=float(self.cost_multiplier) ** 1.5,
            early_stop=True,
            early_stop_patience=int(self.early_stop_patience or 2 * self.patience),
            early_stop_threshold=_EARLY_STOP_THRESHOLD, pattern_range=(lo, hi),
            settle_patience=None if self.settle_patience is None else int(self.settle_patience),
            settle_threshold=_SETTLE_THRESHOLD,
        )

    def _chunk_size(self, n_tasks, run, cfg):
        """Triggers per chunk (``label_chunk_size``) and the probe's timings (None without a probe)."""
        per_job = math.ceil(n_tasks / effective_n_jobs(self.n_jobs))
        size = self.label_chunk_size
        if size == "auto":
            # Time one mini-batch step of K triggers for K = 1, 2, 4, ... up to a job's share of
            # the tasks (cached per architecture, image shape, device, thread count and mini-batch
            # size), and keep the K whose chunking, remainder included, costs least.
            candidates = sorted({2**i for i in range(per_job.bit_length()) if 2**i < per_job} | {per_job})
            adapter, device = run["adapter"], run["device"]
            key = architecture_key(adapter.runtime_module, run["X"].shape[1:], device,
                                   f"nc:batch={cfg['batch']}:max={per_job}")
            probe = step_probe(adapter.forward_logits, run["X"], cfg["batch"], cfg["pattern_range"], device=device)
            sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
            _, timings = fastest_size(probe, candidates, key=key, sync=sync)
            return _cheapest_chunking(n_tasks, timings), dict(timings)
        if size is None:
            # Split over the jobs, and bound one forward pass to about _FORWARD_BUDGET input
            # values: on a CPU, larger batches of large images run slower per image (their
            # feature maps leave the caches); small images are batched whole.
            per_task = cfg["batch"] * int(np.prod(run["X"].shape[1:]))
            size = min(per_job, max(1, _FORWARD_BUDGET // per_task))
        return int(min(size, n_tasks)), None

    def _run_tasks(self, tasks, run, *, steps, desc):
        cfg = dict(run["cfg"], steps=int(steps))
        n_jobs = effective_n_jobs(self.n_jobs)
        size, timings = self._chunk_size(len(tasks), run, cfg)
        self.label_chunk_size_, self.label_chunk_timings_ = size, timings
        chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
        args = [(run["adapter"], run["X"], chunk, cfg, run["device"], self.verbose,
                 f"{desc} {k + 1}/{len(chunks)}") for k, chunk in enumerate(chunks)]
        if n_jobs > 1 and len(chunks) > 1:
            out = Parallel(n_jobs=self.n_jobs)(delayed(_run_chunk)(*a) for a in args)
        else:
            out = [_run_chunk(*a) for a in args]
        return [r for part in out for r in part]

    @staticmethod
    def _asr(adapter, X, y, pool, target, trigger):
        pred = adapter.predict(trigger.apply(X[pool]))
        return attack_success_rate(y[pool], pred, target)


def _cheapest_chunking(n_tasks, timings):
    """The chunk size K whose chunking of ``n_tasks`` triggers costs least by the probe's timings.

    ``timings`` maps the K probed to seconds per trigger-step. Chunks of K
    cost ``K * t(K)`` each and the remainder chunk of ``r`` triggers ``r *
    t(r)``, with ``t(r)`` the timing of the largest K probed not above ``r``
    (per-trigger time falls with K): a fastest K of 8 for 10 labels loses to
    one chunk of 10 when the chunk of 2 left over runs twice as slow per label.
    A larger K is kept unless a smaller one costs more than
    ``_FEWER_CHUNKS_MARGIN`` less: each chunk runs its own per-step loop
    (the cost schedules, the best-mask copies) that the probe does not time,
    and the triggers leaving a chunk as they stop shrink a small chunk to a
    slower K sooner than a large one. On the digits model the probe put
    K=4 and K=8 within 10% of K=10, whose real run was 20% faster; its
    timings vary by 10-15% from one probe to the next.
    """
    probed = sorted(timings)

    def cost(k):
        full, rest = divmod(n_tasks, k)
        t_rest = timings[max(p for p in probed if p <= rest)] if rest else 0.0
        return full * k * timings[k] + rest * t_rest

    cheapest = min(cost(k) for k in probed)
    return int(max(k for k in probed if cost(k) <= (1 + _FEWER_CHUNKS_MARGIN) * cheapest))


def _rank(result):
    # A trigger reaching the threshold beats one that never did; then the smaller norm.
    return (not result.reached, result.l1_norm)


def _run_chunk(adapter, X, tasks, cfg, device, verbose, desc):
    bar = None
    if verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg["steps"], desc=desc, leave=False)

    def progress(step, n_active):
        bar.update(1)
        bar.set_postfix(active=n_active)

    try:
        return reverse_chunk(adapter.forward_logits, X, tasks, cfg, device=device,
                             progress=progress if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
