"""Display: the reversed triggers of a fitted NeuralCleanse, beside the original."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = ["TriggerDisplay"]


def _trigger_image(trigger):
    """The trigger as the stamp would paint it on a black image: ``mask * pattern``, HWC."""
    img = np.broadcast_to(trigger.mask * trigger.pattern, trigger.image_shape)
    img = np.clip(np.transpose(img, (1, 2, 0)), 0, 1)
    return img[..., 0] if img.shape[-1] == 1 else img


class TriggerDisplay:
    """Reversed triggers (mask times pattern) of Neural Cleanse beside the original.

    Build it with :meth:`from_estimator`; :meth:`plot` draws one panel per
    trigger, titled with the label, its L1 norm and its anomaly index,
    flagged labels in red.

    Parameters
    ----------
    triggers : dict
        Label (or pair) -> :class:`~backdoorlearn.Trigger`.
    l1_norms : dict
        Label -> L1 norm.
    anomaly_indices : dict
        Label -> anomaly index.
    flagged : list
        Flagged labels (pairs).
    original : Trigger, default=None
        The attacker's trigger, drawn first when known.

    Attributes
    ----------
    ax_ : ndarray of matplotlib Axes
        One axis per panel.
    figure_ : matplotlib Figure
        The figure holding them.

    See Also
    --------
    backdoorlearn.NeuralCleanse : Reverses the triggers drawn here.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import NeuralCleanse, SmallCNN, Trigger
    >>> from backdoorlearn.plotting import TriggerDisplay
    >>> X = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)
    >>> nc = NeuralCleanse(steps=2, random_state=0).fit(SmallCNN(1, 3), X, np.arange(30) % 3)
    >>> disp = TriggerDisplay.from_estimator(nc, original=Trigger.patch((1, 8, 8), size=2))
    >>> disp.ax_.shape
    (4,)
    """

    def __init__(self, triggers, l1_norms, anomaly_indices, flagged, original=None):
        self.triggers = triggers
        self.l1_norms = l1_norms
        self.anomaly_indices = anomaly_indices
        self.flagged = flagged
        self.original = original

    @classmethod
    def from_estimator(cls, estimator, *, original=None, labels=None, ax=None, plot=True):
        """Read the triggers of a fitted :class:`~backdoorlearn.NeuralCleanse` and plot them.

        Parameters
        ----------
        estimator : NeuralCleanse
            Fitted.
        original : Trigger, default=None
            The attacker's trigger, shown first for comparison.
        labels : list, default=None
            Labels (pairs) to show; ``None`` shows all, smallest norm first
            when there are more than 10 (the 10 smallest).
        ax : array of matplotlib Axes, default=None
            One axis per panel; ``None`` makes a new figure.
        plot : bool, default=True
            Draw now.

        Returns
        -------
        display : TriggerDisplay
        """
        check_is_fitted(estimator, "reversed_triggers_")
        keys = list(estimator.reversed_triggers_)
        norms = dict(zip(keys, estimator.l1_norms_))
        indices = dict(zip(keys, estimator.anomaly_indices_))
        if labels is None:
            labels = sorted(keys, key=lambda k: norms[k])[:10] if len(keys) > 10 else keys
        flagged = estimator.flagged_pairs_ if estimator.flagged_pairs_ is not None else estimator.flagged_labels_
        disp = cls({k: estimator.reversed_triggers_[k] for k in labels}, {k: norms[k] for k in labels},
                   {k: indices[k] for k in labels}, list(flagged), original=original)
        return disp.plot(ax=ax) if plot else disp

    def plot(self, ax=None):
        """Draw the panels.

        Parameters
        ----------
        ax : array of matplotlib Axes, default=None
            At least one axis per panel; ``None`` makes a new figure.

        Returns
        -------
        self : TriggerDisplay
            With ``ax_`` and ``figure_`` set.
        """
        import matplotlib.pyplot as plt

        panels = ([("original", self.original, None, None)] if self.original is not None else []) + [
            (k, t, self.l1_norms[k], self.anomaly_indices[k]) for k, t in self.triggers.items()]
        if ax is None:
            fig, ax = plt.subplots(1, len(panels), figsize=(1.6 * len(panels), 2.1), squeeze=False)
            ax = ax.ravel()
        else:
            ax = np.ravel(np.asarray(ax, dtype=object))
            if ax.size < len(panels):
                raise ValueError(f"ax must hold at least {len(panels)} axes; got {ax.size}.")
            fig = ax[0].figure
        for a, (key, trig, norm, index) in zip(ax, panels):
            img = _trigger_image(trig)
            a.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
            if norm is None:
                a.set_title(f"original\nL1 {trig.l1_norm:.1f}", fontsize=8)
            else:
                color = "tab:red" if key in self.flagged else "black"
                a.set_title(f"label {key}\nL1 {norm:.1f}, AI {index:.1f}", fontsize=8, color=color)
        self.ax_ = ax
        self.figure_ = fig
        return self
