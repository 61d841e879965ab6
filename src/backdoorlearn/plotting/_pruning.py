"""The pruning curve: clean accuracy (and attack success) against the pruning ratio."""

from __future__ import annotations

import numpy as np

__all__ = ["PruningCurveDisplay"]


class PruningCurveDisplay:
    """Clean accuracy and, when monitored, attack success against the pruning ratio.

    The figure of the Fine-Pruning paper (Liu et al., 2018, Fig. 4) and of
    Neural Cleanse's neuron pruning (Fig. 9). Build it with
    :meth:`from_estimator` from a fitted
    :class:`~backdoorlearn.FinePruner` or :class:`~backdoorlearn.NeuronPruner`
    (their ``pruning_curve_``), or with :meth:`from_curve`.

    Parameters
    ----------
    prune_ratio : array-like of shape (n_points,)
        Fraction of the layer's units pruned.
    clean_accuracy : array-like of shape (n_points,)
        Clean accuracy (a rate) at each ratio.
    attack_success : array-like of shape (n_points,), default=None
        Attack success (a rate) at each ratio, when it was monitored.
    chosen_ratio : float, default=None
        The ratio the repair settled on, marked with a vertical line.
    name : str, default=None
        Title of the plot.

    Attributes
    ----------
    ax_ : matplotlib Axes
        The axes drawn on.
    figure_ : matplotlib Figure
        The figure holding ``ax_``.
    lines_ : dict of str to Line2D
        The curves drawn, by label.

    See Also
    --------
    backdoorlearn.FinePruner : Records the curve of fine-pruning.
    backdoorlearn.NeuronPruner : Records the curve of neuron pruning.

    Examples
    --------
    >>> from backdoorlearn.plotting import PruningCurveDisplay
    >>> d = PruningCurveDisplay([0, 0.5, 0.9], [0.98, 0.97, 0.6], [1.0, 0.9, 0.1])
    >>> d.attack_success.shape
    (3,)
    """

    def __init__(self, prune_ratio, clean_accuracy, attack_success=None, chosen_ratio=None, name=None):
        self.prune_ratio = np.asarray(prune_ratio, dtype=float)
        self.clean_accuracy = np.asarray(clean_accuracy, dtype=float)
        self.attack_success = None if attack_success is None else np.asarray(attack_success, dtype=float)
        if self.prune_ratio.shape != self.clean_accuracy.shape or (
                self.attack_success is not None and self.attack_success.shape != self.prune_ratio.shape):
            raise ValueError(
                "prune_ratio, clean_accuracy and attack_success must have the same length; got "
                f"{self.prune_ratio.shape}, {self.clean_accuracy.shape} and "
                f"{None if self.attack_success is None else self.attack_success.shape}."
            )
        self.chosen_ratio = chosen_ratio
        self.name = name

    @classmethod
    def from_curve(cls, curve, **kwargs):
        """Build the display from a ``pruning_curve_`` Bunch, without plotting.

        Parameters
        ----------
        curve : Bunch or dict
            ``prune_ratio``, ``clean_accuracy`` and optionally
            ``attack_success``.
        **kwargs : dict
            ``chosen_ratio`` and ``name``, as in the constructor.

        Returns
        -------
        display : PruningCurveDisplay
            Not yet plotted.
        """
        return cls(curve["prune_ratio"], curve["clean_accuracy"], curve.get("attack_success"), **kwargs)

    @classmethod
    def from_estimator(cls, estimator, *, ax=None, name=None):
        """Plot the pruning curve of a fitted ``FinePruner`` or ``NeuronPruner``.

        Parameters
        ----------
        estimator : FinePruner or NeuronPruner
            Fitted; its ``pruning_curve_`` holds the points it evaluated.
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure when ``None``.
        name : str, default=None
            Title; the estimator's class name and layer by default.

        Returns
        -------
        display : PruningCurveDisplay
        """
        curve = getattr(estimator, "pruning_curve_", None)
        if curve is None:
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                f"PruningCurveDisplay.from_estimator needs a fitted FinePruner or NeuronPruner; "
                f"{type(estimator).__name__} has no pruning_curve_ (call fit first)."
            )
        name = name or f"{type(estimator).__name__} on {estimator.layer_!r}"
        disp = cls.from_curve(curve, chosen_ratio=estimator.prune_ratio_, name=name)
        return disp.plot(ax=ax)

    def plot(self, ax=None):
        """Draw the curves.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure when ``None``.

        Returns
        -------
        self : PruningCurveDisplay
            With ``ax_``, ``figure_`` and ``lines_`` set.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        order = np.argsort(self.prune_ratio, kind="stable")
        x = 100 * self.prune_ratio[order]
        self.lines_ = {
            "clean accuracy": ax.plot(x, 100 * self.clean_accuracy[order], "o-", label="clean accuracy")[0],
        }
        if self.attack_success is not None:
            self.lines_["attack success"] = ax.plot(x, 100 * self.attack_success[order], "s--",
                                                    color="tab:red", label="attack success")[0]
        if self.chosen_ratio is not None:
            ax.axvline(100 * self.chosen_ratio, color="grey", linestyle=":", label="chosen")
        ax.set_xlabel("units pruned (%)")
        ax.set_ylabel("rate (%)")
        ax.set_ylim(-2, 102)
        ax.legend(loc="best")
        if self.name:
            ax.set_title(self.name)
        self.ax_ = ax
        self.figure_ = ax.figure
        return self
