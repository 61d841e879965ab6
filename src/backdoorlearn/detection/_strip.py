"""STRIP: run-time detection of trojaned inputs by strong intentional perturbation."""

from __future__ import annotations

import hashlib
import math
from numbers import Integral, Real

import numpy as np
import torch
from scipy.special import entr
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from .._docstring import fill_doc
from .._utils import DEVICE_CONSTRAINT, as_tensor
from ..models import ModelAdapter
from ._base import BaseDetector

__all__ = ["STRIPDetector"]

# Largest (inputs x pool) random-key matrix drawn at once when overlays are
# sampled without replacement.
_MAX_KEYS = 1 << 22
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
    {device}
    batch_size : int, default=1024
        Blended inputs per forward pass (bounds memory, not the result).
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

    The blends of ``batch_size // N`` whole inputs go through the model in
    one forward pass (one input's blends in pieces of ``batch_size`` rows
    when ``N`` is larger): the cost is the ``N`` forward passes per input
    that STRIP needs.

    References
    ----------
    .. [1] Y. Gao, C. Xu, D. Wang, S. Chen, D. C. Ranasinghe and S. Nepal,
       "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks",
       ACSAC 2019.

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
    """

    _parameter_constraints = {
        "model": "no_validation",
        "n_perturbations": [Interval(Integral, 1, None, closed="left")],
        "false_rejection_rate": [Interval(Real, 0, 1, closed="neither")],
        "threshold": [Real, None],
        "threshold_method": [StrOptions({"quantile", "normal"})],
        "superimposition": [StrOptions({"add", "blend"})],
        "clip_range": [StrOptions({"pool"}), tuple, None],
        "device": DEVICE_CONSTRAINT,
        "batch_size": [Interval(Integral, 1, None, closed="left")],
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
        device=None,
        batch_size=1024,
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
        self.device = device
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ hooks
    def _fit_detector(self, X):
        self._adapter = ModelAdapter(
            self.model, defense="STRIPDetector", device=self.device, batch_size=self.batch_size
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
        # Sec. V-B: benign entropies, each input blended with the *other*
        # pool images only (an input blended with itself is not perturbed).
        return self._entropy(self.pool_, np.arange(len(self.pool_)))

    def _score_samples(self, X):
        return self._entropy(X, self._find_in_pool(X))

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

        Row ``r``'s draws come from ``seeds[r]`` alone (see :func:`_row_seeds`).
        """
        m, n_pool, N = len(exclude), len(self.pool_), self.n_perturbations
        has = exclude >= 0
        if N < n_pool:
            # Without replacement: the N smallest of uniform keys, self ranked last.
            out = np.empty((m, N), dtype=np.int64)
            step = max(1, _MAX_KEYS // n_pool)
            for r0 in range(0, m, step):  # bounds the key matrix
                r1 = min(m, r0 + step)
                keys = _counter_random(seeds[r0:r1], n_pool)
                rows = np.flatnonzero(has[r0:r1])
                keys[rows, exclude[r0:r1][rows]] = np.iinfo(np.uint64).max
                out[r0:r1] = np.argpartition(keys, N - 1, axis=1)[:, :N]
            return out
        high = np.where(has, n_pool - 1, n_pool)[:, None]
        unit = (_counter_random(seeds, N) >> np.uint64(11)).astype(np.float64) * 2.0**-53
        draw = np.minimum((unit * high).astype(np.int64), high - 1)
        return draw + (has[:, None] & (draw >= exclude[:, None]))

    def _row_batches(self, X, exclude, seed):
        """Yield ``(i0, i1, overlays)``: inputs ``i0:i1`` and pool indices of shape (i1 - i0, k).

        Batches hold whole inputs (``batch_size // N`` of them), or one input's
        overlays in pieces of ``batch_size`` when ``N > batch_size``: an
        input's blends and their sum never depend on its neighbours.
        """
        N, bs = self.n_perturbations, self.batch_size
        per = max(1, bs // N)
        for i0 in range(0, len(X), per):
            i1 = min(len(X), i0 + per)
            overlays = self._draw_overlays(_row_seeds(X[i0:i1], seed), exclude[i0:i1])
            for s0 in range(0, N, bs if N > bs else N):
                yield i0, i1, overlays[:, s0 : s0 + bs]

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

    def _entropy(self, X, exclude):
        """Normalized mean entropy (Eq. 3-5) of each input of validated ``X``."""
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        n, N = len(X), self.n_perturbations
        sums = np.zeros(n, dtype=np.float64)
        batches = self._row_batches(X, np.asarray(exclude), seed)
        if self.verbose:
            from tqdm.auto import tqdm

            per = max(1, self.batch_size // N)
            total = math.ceil(n / per) * (math.ceil(N / self.batch_size) if N > self.batch_size else 1)
            batches = tqdm(batches, total=total, desc="STRIP", leave=False)
        adapter = self._adapter
        if adapter.is_white_box:
            device = torch.device(adapter.device)
            X_t = as_tensor(X).to(device)
            pool_t = torch.from_numpy(self.pool_).to(device)
            with adapter.eval(), torch.no_grad():
                for i0, i1, oi in batches:
                    xi = np.repeat(np.arange(i0, i1), oi.shape[1])
                    blend = self._superimpose(
                        X_t[torch.from_numpy(xi).to(device)], pool_t[torch.from_numpy(oi.ravel()).to(device)]
                    )
                    logp = torch.log_softmax(adapter.forward_logits(blend).float(), dim=1)
                    # per replica, over the classes (axis 1), in bits
                    h = -(logp.exp() * logp).sum(dim=1) / math.log(2)
                    sums[i0:i1] += h.double().cpu().numpy().reshape(i1 - i0, -1).sum(axis=1)
        else:
            for i0, i1, oi in batches:
                xi = np.repeat(np.arange(i0, i1), oi.shape[1])
                blend = self._superimpose(X[xi], self.pool_[oi.ravel()])
                p = adapter.predict_proba(blend, batch_size=len(blend))
                # entr(p) = -p ln p, 0 at p = 0; per replica, over the classes
                h = entr(p).sum(axis=1, dtype=np.float64) / math.log(2)
                sums[i0:i1] += h.reshape(i1 - i0, -1).sum(axis=1)
        return sums / N / math.log2(self.n_classes_)
