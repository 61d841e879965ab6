"""STRIP: run-time detection of trojaned inputs by strong intentional perturbation."""

from __future__ import annotations

import contextlib
import hashlib
import math
from numbers import Integral, Real

import numpy as np
import torch
from scipy.special import entr
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._docstring import fill_doc
from .._utils import DEVICE_CONSTRAINT, as_tensor
from ..models import ModelAdapter
from ..models._batching import DEFAULT_SIZES, architecture_key, faster_layout, fastest_size
from ._base import BaseDetector

__all__ = ["STRIPDetector"]

# Largest (inputs x pool) random-key matrix drawn at once when overlays are
# sampled without replacement.
_MAX_KEYS = 1 << 22
# Blends scored per chunk of inputs (bounds the overlay-index and entropy arrays).
_CHUNK_BLENDS = 1 << 16
# Logits kept before their entropies are taken at once (bounds that buffer to 4 MiB).
_LOGIT_VALUES = 1 << 20
# Blends per call of a black-box predict_proba under batch_size="auto" (no probe:
# an estimator's cost per call is mostly its own Python overhead).
_BLACK_BOX_BATCH = 1024
# Blends per timed call of the memory-layout probe (before the batch size is chosen).
_LAYOUT_PROBE_SIZE = 128
# Fixed odd multipliers for the exact-duplicate lookup (see _row_keys).
_KEY_SEED = 20191209
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _row_keys(X, chunk=1024):
    """A 64-bit key per row, equal for bit-identical rows (integer arithmetic, exact)."""
    flat = np.ascontiguousarray(X, dtype=np.float32).reshape(len(X), -1).view(np.uint32)
    mult = np.random.RandomState(_KEY_SEED).randint(1, 2**31 - 1, size=flat.shape[1]).astype(np.uint64)
    mult |= np.uint64(1)
    keys = np.empty(len(flat), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(flat), chunk):  # bounds the uint64 copy
            part = flat[start : start + chunk].astype(np.uint64)
            keys[start : start + chunk] = (part * mult).sum(axis=1, dtype=np.uint64)
    return keys


def _row_seeds(X, seed):
    """A 64-bit seed per row: a keyed BLAKE2b digest of ``seed`` and the row's float32 bytes.

    The overlays of an input are drawn from its own seed, so they depend on
    ``random_state`` and on the input, never on the other rows of the call.
    """
    flat = np.ascontiguousarray(X, dtype=np.float32).reshape(len(X), -1)
    key = int(seed).to_bytes(8, "little")
    digests = b"".join(hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest() for row in flat)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _counter_random(seeds, n):
    """``(len(seeds), n)`` uint64 draws, counter-based: entry ``j`` of row ``r`` is splitmix64(seed_r, j)."""
    with np.errstate(over="ignore"):
        z = seeds[:, None] + (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _entropy_bits(logits):
    """Entropy in bits (float64 numpy) of the softmax of each row of a logits tensor."""
    logp = torch.log_softmax(logits.float(), dim=1)
    # per replica, over the classes (axis 1)
    h = -(logp.exp() * logp).sum(dim=1) / math.log(2)
    return h.double().cpu().numpy()


class _BlendWork:
    """Reused buffers of one STRIP call: two image batches and a span of logits.

    A blend is gathered into ``xbuf`` with ``index_select(out=)`` and its
    overlay into ``obuf``, then added in place: in the layout of ``X``
    (``channels_last`` stays so) and without allocating per batch, which on
    a CPU takes several times as long as the gather itself. Buffers belong
    to one call, never to the estimator, so concurrent calls stay safe.
    """

    def __init__(self, X, batch, n_classes, span=None):
        nhwc = X.dim() == 4 and not X.is_contiguous() and X.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        shape = (batch, *X.shape[1:])
        self.xbuf = torch.empty(shape, dtype=X.dtype, device=X.device, memory_format=fmt)
        self.obuf = torch.empty(shape, dtype=X.dtype, device=X.device, memory_format=fmt)
        self.logits = torch.empty((span or batch, n_classes), dtype=torch.float32, device=X.device)

    def logits_of(self, strip, X, pool, xi, oi, out):
        """Write into ``out`` the logits of the blends ``X[xi[j]] + pool[oi[j]]``; return ``out``."""
        m = len(xi)
        x, o = self.xbuf[:m], self.obuf[:m]
        torch.index_select(X, 0, xi, out=x)
        torch.index_select(pool, 0, oi, out=o)
        out.copy_(strip._adapter.forward_logits(strip._superimpose(x, o)))
        return out


@fill_doc
class STRIPDetector(BaseDetector):
    """STRIP: flag inputs whose predictions stay certain under superimposition.

    Each input is superimposed with ``n_perturbations`` clean images drawn
    from the pool seen at :meth:`fit`; the model classifies the blends and the
    Shannon entropy (log base 2) of each blend's predicted distribution is
    averaged over the blends (Gao et al., 2019, Sec. IV-B, Eq. 3-5). A trigger
    dominates the blends, so a trojaned input keeps a low entropy, while a
    clean input becomes ambiguous. The threshold is learned from the entropies
    of benign inputs at a chosen false rejection rate (Sec. V-B).

    STRIP is a **black-box** defense: it only uses the model's class
    probabilities, so any model the adapter accepts works (a torch module
    returning logits, a skorch net, or any estimator with ``predict_proba``,
    e.g. an ``MLPClassifier`` on flattened images; ``X`` is then whatever
    shape the estimator takes).

    {detector_convention}

    Parameters
    ----------
    model : torch.nn.Module, skorch.NeuralNetClassifier or classifier
        The deployed (possibly backdoored) classifier, already trained: a
        module returning logits, a skorch net, or any estimator with
        ``predict_proba``. It is never modified, not even its train/eval
        flags, and ``clone`` keeps it by reference (a fitted model stays
        fitted inside ``GridSearchCV``). A module returning probabilities
        instead of logits is detected and their logarithm used as logits,
        with a warning (see :class:`~backdoorlearn.ModelAdapter`); a model
        returning NaN or infinity is refused with a ``ValueError``.
    n_perturbations : int, default=100
        Number ``N`` of superimposed replicas per input (the paper's ``N``;
        it uses 100). Costs ``N`` forward passes per input.
    false_rejection_rate : float, default=0.01
        Wanted fraction of benign inputs flagged (FRR), in (0, 1): the
        threshold is the benign entropies' quantile at this rate.
    threshold : float, default=None
        A fixed threshold on :meth:`score_samples` (normalized entropy, in
        [0, 1]); overrides the learned one. Must be finite (a NaN would flag
        nothing).
    threshold_method : {"quantile", "normal"}, default="quantile"
        ``"quantile"``: empirical quantile of the benign scores.
        ``"normal"``: ``mean - z * std`` of a normal fitted to them, as the
        paper does (Sec. V-B).
    superimposition : {"add", "blend"}, default="add"
        How an overlay is superimposed on an input. ``"add"`` is the paper's
        code, ``cv2.addWeighted(background, 1, overlay, 1, 0)``: the pixel-wise
        sum; ``"blend"`` is the 50/50 average ``0.5 * x + 0.5 * overlay``.
        Either result is then clipped to ``clip_range``.
    clip_range : "pool", tuple of (float, float) or None, default="pool"
        Value range the blends are clipped to. ``"pool"``: the smallest and
        largest value in the fitted pool (``[0, 1]`` for images in [0, 1], the
        saturation that ``cv2.addWeighted`` applies to ``uint8`` images);
        ``None``: no clipping. The paper's code adds float images without
        clipping (``None``); ``"pool"`` is the default because it accepted
        fewer triggered inputs on the model zoo's development entries
        overall (``benchmarks/bench_strip_clip.py``), though not on most of
        its coloured signs models.
    early_stopping : bool, default=False
        Score each input with an adaptive number of blends instead of always
        ``n_perturbations``: a sequential test against ``threshold_`` adds
        ``stopping_round`` blends at a time and stops once the running mean
        entropy is far from the threshold given its standard error (see
        Notes), or at ``n_perturbations``. The paper always uses a fixed
        ``N`` (100); this mode is this library's departure from it, off by
        default. :meth:`fit` always uses the fixed ``N`` (the threshold is
        the paper's); :meth:`score_samples_and_counts` returns how many blends
        each input took.
    stopping_round : int, default=10
        Blends added per round of ``early_stopping``: the fewest an input
        gets (twice as many before it is flagged).
    stopping_z : float, default=2.5
        How many standard errors from the threshold the running mean must be
        for ``early_stopping`` to stop; larger is more cautious (more
        blends, answers closer to the fixed ``N``).
    {device}
    batch_size : int or "auto", default="auto"
        Blends per forward pass. It bounds memory and sets the speed, never
        the answer (up to the model's float rounding, see Notes). ``"auto"``
        picks it by measurement: at fit, a short timing probe (a fraction of
        a second) runs the model on real blends of the pool in batches of
        16 to 1024 and keeps the size with the least time per blend, cached
        per architecture, input shape, device and torch thread count, so a
        process probes once per model shape. The fastest size depends on the
        model, the image size and the machine: on a CPU, small images often
        run faster per image in batches of a few hundred than in batches of
        1024, and on a GPU larger batches win
        (``benchmarks/bench_strip_speed.py`` prints the figures). For a
        black-box estimator ``"auto"`` is 1024 blends per ``predict_proba``
        call, without a probe (its cost per call is mostly its own
        overhead). An int is used as given. The size used is ``batch_size_``.
        Under ``"auto"`` the probe also chooses the blends' memory layout
        (``memory_format_``).
    {random_state}
        With the input itself, it seeds each input's overlays: with an int,
        an input gets the same score whatever rows it is scored with, in any
        order and in any call; with ``None`` a fresh seed is drawn per call.
    {verbose}

    Attributes
    ----------
    pool_ : ndarray of shape (n_benign, ...)
        The benign inputs seen at fit: overlays are drawn from them.
    benign_scores_ : ndarray of shape (n_benign,)
        Normalized entropy of each pool input, each blended with overlays
        drawn from the rest of the pool (never with itself).
    threshold_ : float
        Inputs with a score below it are flagged.
    n_classes_ : int
        Number of classes the model outputs (entropies are divided by
        ``log2(n_classes_)``).
    clip_range_ : tuple of (float, float) or None
        The clipping range used.
    batch_size_ : int
        Blends per forward pass: ``batch_size``, or the probe's choice under
        ``"auto"``.
    memory_format_ : {"contiguous", "channels_last"}
        Memory layout of the blends given to the model. Under
        ``batch_size="auto"``, for a torch model on images with several
        channels, a probe first times ``channels_last`` (NHWC), on which
        PyTorch's CPU convolution and pooling kernels can run much faster,
        against the usual layout, 128 blends per call, and keeps it where it
        is more than 10% faster and gives the same entropies up to float
        rounding; otherwise ``"contiguous"``. The model itself is not
        changed.
    input_shape_ : tuple of int
        Shape of one input, as at fit.
    n_features_in_ : int
        Number of values in one input.

    See Also
    --------
    backdoorlearn.GuardedClassifier : Serve a model behind this detector.
    backdoorlearn.plotting.EntropyHistogramDisplay : Plot the entropy histograms.

    Notes
    -----
    The entropy of one input is ``H = (1/N) * sum_n -sum_i p_ni log2 p_ni``:
    per blended replica ``n``, over the classes ``i``, then averaged over the
    ``N`` replicas (Eq. 3-5). :meth:`score_samples` returns
    ``H / log2(n_classes_)``, in [0, 1]; multiply by ``log2(n_classes_)`` for
    bits, the paper's unit (its MNIST threshold 0.026 bits at 1% FRR is
    0.0078 here).

    Overlays are drawn uniformly from the pool, without replacement when the
    pool holds more than ``n_perturbations`` inputs (else with replacement),
    and never the input itself: at fit by position, afterwards by looking up
    inputs that are bit-identical to a pool image. The draws of an input come
    from its own seed, a keyed BLAKE2b digest of its float32 bytes under a
    key drawn from ``random_state``, so an input's answer never depends on
    the other inputs of the call or on its position among them (the
    ``random_state`` plays the part of a secret key: an attacker who knows
    it can compute the overlays an input will get).

    The overlays of each input are drawn in an order in which every prefix
    is itself a uniform draw: the first ``k`` are those that
    ``n_perturbations=k`` draws. Blends go through the model
    ``batch_size_`` at a time, across input boundaries, and each input's
    entropies are summed once they are all known, so the batching never
    changes how a score is summed: the cost is the ``N`` forward passes per
    input that STRIP needs. A CPU's matrix kernels may round a blend's logits
    differently in batches of different sizes (a difference in the last
    float32 digits), so scores made with different ``batch_size_`` values
    agree to about ``1e-6``, not always bit for bit.

    With ``early_stopping=True``, after every ``k = stopping_round, 2 *
    stopping_round, ...`` blends of an input, the running mean ``m_k`` and
    standard deviation ``s_k`` of its normalized blend entropies are
    compared with the threshold ``t``: the input stops once ``|m_k - t| >
    stopping_z * max(s_k, |t|) * sqrt((1 - k / N) / k)`` (for ``m_k < t``,
    a flag, only from ``k = 2 * stopping_round`` on), and its score is
    ``m_k``. The question is whether the ``N - k`` blends not drawn could
    still carry the fixed-``N`` mean across ``t``: given the first ``k``,
    that mean's standard error is ``s_k * sqrt((1 - k / N) / k)`` (the
    finite-population correction of the running mean's ``s_k / sqrt(k)``),
    so late looks stop sooner than a test of the true mean would. The
    floor ``|t|`` on ``s_k`` and the later first look at a flag keep a clean
    input whose first blends all happen to be confident from being flagged
    before the rare ambiguous blends that lift its mean over ``t`` had a
    chance to appear. The defaults were chosen on the model zoo's
    development entries (``benchmarks/bench_strip_stopping.py``). An input
    that never stops gets all ``n_perturbations`` blends and the fixed-``N``
    score (the same overlays, in the same order, summed the same way);
    every input is tested on its own, so its answer does not depend on the
    other inputs of the call.

    References
    ----------
    .. [1] Y. Gao, C. Xu, D. Wang, S. Chen, D. C. Ranasinghe and S. Nepal,
       "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks",
       ACSAC 2019 (fixed ``N = 100`` perturbations per input).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from backdoorlearn import STRIPDetector, SmallCNN
    >>> _ = torch.manual_seed(0)  # the untrained model's weights
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((40, 1, 8, 8), dtype=np.float32)
    >>> strip = STRIPDetector(SmallCNN(1, 10), n_perturbations=8, random_state=0).fit(X)
    >>> strip.score_samples(X[:3]).shape
    (3,)
    >>> strip.predict(X[:3])
    array([0, 0, 0])
    >>> strip.batch_size_ in (16, 32, 64, 128, 256, 512, 1024)
    True
    """

    _parameter_constraints = {
        "model": "no_validation",
        "n_perturbations": [Interval(Integral, 1, None, closed="left")],
        "false_rejection_rate": [Interval(Real, 0, 1, closed="neither")],
        "threshold": [Real, None],
        "threshold_method": [StrOptions({"quantile", "normal"})],
        "superimposition": [StrOptions({"add", "blend"})],
        "clip_range": [StrOptions({"pool"}), tuple, None],
        "early_stopping": ["boolean"],
        "stopping_round": [Interval(Integral, 1, None, closed="left")],
        "stopping_z": [Interval(Real, 0, None, closed="neither")],
        "device": DEVICE_CONSTRAINT,
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        model,
        *,
        n_perturbations=100,
        false_rejection_rate=0.01,
        threshold=None,
        threshold_method="quantile",
        superimposition="add",
        clip_range="pool",
        early_stopping=False,
        stopping_round=10,
        stopping_z=2.5,
        device=None,
        batch_size="auto",
        random_state=None,
        verbose=0,
    ):
        self.model = model
        self.n_perturbations = n_perturbations
        self.false_rejection_rate = false_rejection_rate
        self.threshold = threshold
        self.threshold_method = threshold_method
        self.superimposition = superimposition
        self.clip_range = clip_range
        self.early_stopping = early_stopping
        self.stopping_round = stopping_round
        self.stopping_z = stopping_z
        self.device = device
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ hooks
    def _fit_detector(self, X):
        adapter_batch = self.batch_size if isinstance(self.batch_size, Integral) else _BLACK_BOX_BATCH
        self._adapter = ModelAdapter(
            self.model, defense="STRIPDetector", device=self.device, batch_size=adapter_batch
        )
        n_classes = int(self._adapter.predict_proba(X[:1]).shape[1])
        if n_classes < 2:
            raise ValueError(
                f"STRIPDetector needs a classifier with at least 2 classes; the model "
                f"outputs {n_classes} probability column(s)."
            )
        self.n_classes_ = n_classes
        self.clip_range_ = self._resolve_clip(X)
        self.pool_ = np.array(X, dtype=np.float32, copy=True)
        keys = _row_keys(self.pool_)
        self._key_order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[self._key_order]
        # the layout first, at a middle size: the sizes are then timed in it
        self.memory_format_ = self._choose_memory_format()
        self.batch_size_ = self._choose_batch_size()
        # Sec. V-B: benign entropies, each input blended with the *other*
        # pool images only (an input blended with itself is not perturbed),
        # always with the fixed N: the threshold is the paper's.
        return self._entropy(self.pool_, np.arange(len(self.pool_)), adaptive=False)[0]

    def _score_samples(self, X):
        return self._entropy(X, self._find_in_pool(X), adaptive=self.early_stopping)[0]

    # ------------------------------------------------------------------ public
    def score_samples_and_counts(self, X):
        """Compute the scores of :meth:`score_samples` and the number of blends each input took.

        With ``early_stopping=False`` every count is ``n_perturbations``;
        with ``early_stopping=True`` it is where the sequential test stopped
        (a multiple of ``stopping_round``, or ``n_perturbations``). Nothing
        is stored on the estimator: concurrent calls are safe.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs, of the per-sample shape seen at fit.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            As :meth:`score_samples` returns them (higher = more benign).
        counts : ndarray of shape (n_samples,)
            Blends (forward passes) spent on each input, int64.

        Examples
        --------
        >>> import numpy as np
        >>> import torch
        >>> from backdoorlearn import STRIPDetector, SmallCNN
        >>> _ = torch.manual_seed(0)
        >>> X = np.random.default_rng(0).random((60, 1, 8, 8), dtype=np.float32)
        >>> strip = STRIPDetector(SmallCNN(1, 10), n_perturbations=40, early_stopping=True,
        ...                       random_state=0).fit(X)
        >>> scores, counts = strip.score_samples_and_counts(X[:4])
        >>> bool(((counts >= 10) & (counts <= 40) & (counts % 10 == 0)).all())
        True
        """
        check_is_fitted(self, "threshold_")
        X = self._check_X(X, reset=False)
        scores, counts = self._entropy(X, self._find_in_pool(X), adaptive=self.early_stopping)
        return self._check_scores(scores), counts

    # ------------------------------------------------------------------ helpers
    def _resolve_clip(self, X):
        if self.clip_range is None:
            return None
        if isinstance(self.clip_range, str):
            return float(X.min()), float(X.max())
        try:
            lo, hi = (float(v) for v in self.clip_range)
        except (TypeError, ValueError):
            lo = hi = None
        if lo is None or not lo < hi:
            raise ValueError(
                "The 'clip_range' parameter of STRIPDetector must be 'pool', None or a "
                f"tuple (low, high) with low < high; got {self.clip_range!r}."
            )
        return lo, hi

    def _as_blend_tensor(self, X, device, memory_format=None):
        """``X`` as a float tensor on ``device`` in ``memory_format`` (default ``memory_format_``).

        Gathers and in-place blends of a ``channels_last`` tensor stay
        ``channels_last``, so converting the inputs and the pool once makes
        every blend of the call NHWC without a copy.
        """
        t = as_tensor(X).to(device)
        if (memory_format or self.memory_format_) == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _probe_blends(self, size):
        """What a timing probe runs: ``run(size, memory_format)`` blends pool images, never one with itself.

        Each call gathers and blends ``size`` images into reused buffers and
        returns their logits (a view of a reused buffer): the per-batch work
        of :meth:`_fill`, whose entropies are taken once per span of batches.
        """
        device = torch.device(self._adapter.device)
        rows = np.arange(size) % len(self.pool_)
        xi = torch.from_numpy(rows).to(device)
        oi = torch.from_numpy((rows + 1) % len(self.pool_)).to(device)
        pools, work = {}, {}

        def run(k, memory_format=None):
            fmt = memory_format or self.memory_format_
            if fmt not in pools:
                pools[fmt] = self._as_blend_tensor(self.pool_, device, fmt)
            if (k, fmt) not in work:
                work[k, fmt] = _BlendWork(pools[fmt], k, self.n_classes_)
            w = work[k, fmt]
            return w.logits_of(self, pools[fmt], pools[fmt], xi[:k], oi[:k], w.logits[:k])

        sync = torch.cuda.synchronize if device.type == "cuda" else None
        return run, device, sync

    def _choose_batch_size(self):
        """``batch_size`` when an int; under ``"auto"`` the probe's choice (a fixed size for a black box)."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        adapter = self._adapter
        if not adapter.is_white_box:
            return _BLACK_BOX_BATCH
        run, device, sync = self._probe_blends(max(DEFAULT_SIZES))
        key = architecture_key(adapter.module, self.input_shape_, device, f"strip {self.memory_format_}")
        with adapter.eval(), torch.no_grad():
            size, _ = fastest_size(run, DEFAULT_SIZES, key=key, sync=sync)
        return int(size)

    def _choose_memory_format(self):
        """``"channels_last"`` where a probe at 128 blends finds it clearly faster, under ``batch_size="auto"``.

        Only for a white-box model on images with several channels (for one
        channel both layouts are the same), and only when the two layouts
        give the same entropies up to float rounding on the probe's blends
        (checked on every fit: the timing is cached per architecture, the
        answers are this model's).
        """
        adapter = self._adapter
        if self.batch_size != "auto" or not adapter.is_white_box or len(self.input_shape_) != 3 \
                or self.input_shape_[0] < 2:
            return "contiguous"
        blends, device, sync = self._probe_blends(_LAYOUT_PROBE_SIZE)

        def run(size, channels_last):
            return blends(size, "channels_last" if channels_last else "contiguous")

        key = architecture_key(adapter.module, self.input_shape_, device, "strip layout")
        with adapter.eval(), torch.no_grad():
            faster, _ = faster_layout(run, _LAYOUT_PROBE_SIZE, key=key, sync=sync)
            if faster and not np.allclose(_entropy_bits(run(_LAYOUT_PROBE_SIZE, True)),
                                          _entropy_bits(run(_LAYOUT_PROBE_SIZE, False)), rtol=0, atol=1e-4):
                faster = False  # the module computes something else in that layout: keep the usual one
        return "channels_last" if faster else "contiguous"

    def _find_in_pool(self, X):
        """Pool index of each input that is bit-identical to a pool image, else -1."""
        keys = _row_keys(X)
        pos = np.searchsorted(self._sorted_keys, keys)
        pos = np.minimum(pos, len(self._sorted_keys) - 1)
        found = self._sorted_keys[pos] == keys
        idx = np.where(found, self._key_order[pos], -1)
        # confirm the key matches (a collision is all but impossible)
        hit = np.flatnonzero(found)
        if len(hit):
            same = (X[hit] == self.pool_[idx[hit]]).reshape(len(hit), -1).all(axis=1)
            idx[hit[~same]] = -1
        return idx

    def _draw_overlays(self, seeds, exclude):
        """Pool indices of shape (len(exclude), N), never the excluded index of each row.

        Row ``r``'s draws come from ``seeds[r]`` alone (see :func:`_row_seeds`),
        in an order that makes every prefix a uniform draw too: the first
        ``k`` columns are what ``n_perturbations=k`` would draw, so the
        sequential test of ``early_stopping`` reads the fixed-N overlays in
        order.
        """
        m, n_pool, N = len(exclude), len(self.pool_), self.n_perturbations
        has = exclude >= 0
        if N < n_pool:
            # Without replacement: the N smallest of uniform keys, self ranked
            # last, sorted by key (a prefix is the k smallest).
            out = np.empty((m, N), dtype=np.int64)
            step = max(1, _MAX_KEYS // n_pool)
            for r0 in range(0, m, step):  # bounds the key matrix
                r1 = min(m, r0 + step)
                keys = _counter_random(seeds[r0:r1], n_pool)
                rows = np.flatnonzero(has[r0:r1])
                keys[rows, exclude[r0:r1][rows]] = np.iinfo(np.uint64).max
                chosen = np.argpartition(keys, N - 1, axis=1)[:, :N]
                order = np.argsort(np.take_along_axis(keys, chosen, axis=1), axis=1, kind="stable")
                out[r0:r1] = np.take_along_axis(chosen, order, axis=1)
            return out
        high = np.where(has, n_pool - 1, n_pool)[:, None]
        unit = (_counter_random(seeds, N) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        draw = np.minimum((unit * high).astype(np.int64), high - 1)
        return draw + (has[:, None] & (draw >= exclude[:, None]))

    def _superimpose(self, x, overlay):
        """Blend in place into ``x``, a fresh gathered copy (numpy array or torch tensor)."""
        x += overlay
        if self.superimposition == "blend":
            x *= 0.5  # (x + o) / 2, exactly 0.5 * x + 0.5 * o
        if self.clip_range_ is not None:
            lo, hi = self.clip_range_
            if isinstance(x, np.ndarray):
                np.clip(x, lo, hi, out=x)
            else:
                x.clamp_(lo, hi)
        return x

    def _blend_entropies_black_box(self, X, pool, xi, oi):
        """Entropy in bits (float64) of each blend ``X[xi[j]] + pool[oi[j]]`` of numpy arrays, in one call."""
        blend = self._superimpose(X[xi], pool[oi])
        p = self._adapter.predict_proba(blend, batch_size=len(blend))
        # entr(p) = -p ln p, 0 at p = 0; per replica, over the classes
        return entr(p).sum(axis=1, dtype=np.float64) / math.log(2)

    def _fill(self, H, rows, c0, c1, overlays, i0, X, pool, device):
        """Fill ``H[rows, c0:c1]`` with the entropies of those blends, ``batch_size_`` per model call.

        ``X`` and ``pool`` are tensors on ``device`` for a white-box model
        (called inside ``adapter.eval()`` and ``no_grad``; the blends keep
        the layout of ``X``, see :meth:`_as_blend_tensor`), numpy arrays for
        a black box. For a torch model each batch is gathered and blended
        into two reused buffers and its logits are kept; the entropies of a
        span of batches (up to ``_LOGIT_VALUES`` logits) are then taken at
        once, so the per-call cost beside the forward pass is two gathers
        and an add, not a dozen small tensor operations.
        """
        k = c1 - c0
        r = np.repeat(rows, k)
        c = np.tile(np.arange(c0, c1), len(rows))
        bs = self.batch_size_
        if not self._adapter.is_white_box:
            for b0 in range(0, len(r), bs):
                rb, cb = r[b0 : b0 + bs], c[b0 : b0 + bs]
                H[rb, cb] = self._blend_entropies_black_box(X, pool, i0 + rb, overlays[rb, cb])
            return
        xi = torch.from_numpy(i0 + r).to(device)
        oi = torch.from_numpy(overlays[r, c]).to(device)
        span = min(len(r), max(1, _LOGIT_VALUES // (self.n_classes_ * bs)) * bs)
        work = _BlendWork(X, min(bs, len(r)), self.n_classes_, span)
        for s0 in range(0, len(r), span):
            s1 = min(len(r), s0 + span)
            for b0 in range(s0, s1, bs):
                b1 = min(s1, b0 + bs)
                work.logits_of(self, X, pool, xi[b0:b1], oi[b0:b1], work.logits[b0 - s0 : b1 - s0])
            H[r[s0:s1], c[s0:s1]] = _entropy_bits(work.logits[: s1 - s0])

    def _stopped(self, H, k, threshold):
        """Which rows of ``H[:, :k]`` (normalized entropies) are far enough from ``threshold`` to stop.

        ``|mean - threshold| > stopping_z * max(std, |threshold|) * sqrt((1 - k / N) / k)``,
        and for a mean below the threshold (a flag) ``k >= 2 *
        stopping_round``. A clean input can have a few rare high-entropy
        blends that its first ones miss: they are then all near 0 (sample std
        near 0) while its mean over N blends lies above the threshold. The
        floor on the std and the later first look at a flag keep such inputs
        from being flagged early; accepting early risks nothing similar (a
        triggered input has no rare *low*-entropy blends that would pull a
        high running mean down).
        """
        mean = H[:, :k].mean(axis=1)
        std = H[:, :k].std(axis=1, ddof=1) if k > 1 else np.zeros(len(H))
        std = np.maximum(std, abs(threshold))
        # the standard error of the fixed-N mean given these k blends (finite-population correction)
        se = std * math.sqrt(max(0.0, 1.0 - k / self.n_perturbations) / k)
        far = np.abs(mean - threshold) > self.stopping_z * se
        return far & ((mean > threshold) | (k >= 2 * self.stopping_round))

    def _entropy(self, X, exclude, *, adaptive):
        """Normalized mean entropy (Eq. 3-5) and blend count of each input of validated ``X``.

        Each chunk of inputs gets its ``(n, N)`` overlay indices at once; the
        blends go through the model ``batch_size_`` at a time, across input
        boundaries, into an ``(n, N)`` table of entropies whose rows are
        summed at the end: a score never depends on how the blends were
        batched (up to the model's own rounding, see Notes).
        """
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        n, N = len(X), self.n_perturbations
        exclude = np.asarray(exclude)
        norm = math.log2(self.n_classes_)
        scores = np.empty(n, dtype=np.float64)
        counts = np.full(n, N, dtype=np.int64)
        if adaptive:
            threshold = float(self.threshold_)
            if not np.isfinite(threshold):
                raise ValueError(f"threshold_ of STRIPDetector must be finite; got {self.threshold_!r}.")
            step = self.stopping_round
        else:
            step = N
        per = max(1, _CHUNK_BLENDS // N)
        adapter = self._adapter
        if adapter.is_white_box:
            device = torch.device(adapter.device)
            X_all, pool = self._as_blend_tensor(X, device), self._as_blend_tensor(self.pool_, device)
            context = adapter.eval()
        else:
            device, X_all, pool = None, X, self.pool_
            context = contextlib.nullcontext()
        bar = None
        if self.verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="STRIP", unit="input", leave=False)
        try:
            with context, torch.no_grad():
                for i0 in range(0, n, per):
                    i1 = min(n, i0 + per)
                    overlays = self._draw_overlays(_row_seeds(X[i0:i1], seed), exclude[i0:i1])
                    H = np.empty((i1 - i0, N), dtype=np.float64)
                    active, k = np.arange(i1 - i0), 0
                    while len(active):
                        k1 = min(N, k + step)
                        self._fill(H, active, k, k1, overlays, i0, X_all, pool, device)
                        k = k1
                        if k == N:
                            done, active = active, active[:0]
                        else:
                            stop = self._stopped(H[active, :k] / norm, k, threshold)
                            done, active = active[stop], active[~stop]
                        # the same sum, over the same k values, as with n_perturbations=k
                        scores[i0 + done] = H[done, :k].sum(axis=1) / k
                        counts[i0 + done] = k
                        if bar is not None:
                            bar.update(len(done))
        finally:
            if bar is not None:
                bar.close()
        return scores / norm, counts
