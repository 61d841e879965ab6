"""Building and training networks: the one skorch net builder and what trains through it.

Every training and fine-tuning run of the library goes through
:func:`build_net`: training a reference network (:func:`train_classifier`),
fine-tuning a repaired copy (:func:`fine_tune`), wrapping a trained module
(:func:`wrap_module`), the pruning-aware attack and Anti-Backdoor Learning.
The progress bar over epochs is wired there, once.
"""

from __future__ import annotations

import numpy as np
import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from torch import nn

from .._utils import resolve_device, seeded, torch_seed
from ._zoo import SmallCNN

__all__ = ["EpochProgressBar", "ImageClassifierNet", "ShiftOrNoise", "build_net", "fine_tune", "train_classifier", "wrap_module"]


class EpochProgressBar(Callback):
    """A skorch callback showing training progress as one tqdm bar over epochs, with the last loss.

    The bar itself is never pickled (``__getstate__`` drops it), so a net
    trained with it stays picklable, as with skorch's own ``ProgressBar``.

    Parameters
    ----------
    desc : str, default="training"
        Label of the bar.
    """

    def __init__(self, desc="training"):
        self.desc = desc

    def initialize(self):
        """Reset the bar (skorch calls this when the net initializes its callbacks).

        Returns
        -------
        self : EpochProgressBar
            The callback.
        """
        self.bar_ = None
        return self

    def on_train_begin(self, net, **kwargs):
        """Open a bar of ``net.max_epochs`` steps.

        Parameters
        ----------
        net : skorch.NeuralNet
            The net being trained.
        **kwargs : dict
            Ignored (skorch's callback interface).
        """
        from tqdm.auto import tqdm

        self.bar_ = tqdm(total=net.max_epochs, desc=self.desc, leave=False)

    def on_epoch_end(self, net, **kwargs):
        """Advance the bar and show the epoch's training loss.

        Parameters
        ----------
        net : skorch.NeuralNet
            The net being trained.
        **kwargs : dict
            Ignored (skorch's callback interface).
        """
        if self.bar_ is not None:
            loss = net.history[-1].get("train_loss")
            if loss is not None:
                self.bar_.set_postfix(loss=f"{loss:.3f}")
            self.bar_.update(1)

    def on_train_end(self, net, **kwargs):
        """Close the bar.

        Parameters
        ----------
        net : skorch.NeuralNet
            The net being trained.
        **kwargs : dict
            Ignored (skorch's callback interface).
        """
        if self.bar_ is not None:
            self.bar_.close()
            self.bar_ = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["bar_"] = None
        return state


class ImageClassifierNet(NeuralNetClassifier):
    """A skorch ``NeuralNetClassifier`` that takes images as every defense does.

    The nets backdoorlearn builds, wraps and returns (``repaired_model_``,
    ``model_``) are of this class, so they accept what the defense that made
    them accepted:

    - float64 arrays (scikit-learn's ``load_digits().images / 16``) are cast
      to float32, the parameters' type;
    - ``(n, H, W)`` arrays are grayscale images with one channel,
      ``(n, 1, H, W)``;
    - where ``input_shape_`` is set (a repair sets the shape of one image it
      saw), other image shapes are refused with a ``ValueError`` naming
      ``X``: a model with adaptive pooling would answer for any size;
    - with ``classes`` given, :meth:`predict` returns those labels (not the
      indices of the outputs), and a module returning another number of
      outputs than there are classes is refused.

    Parameters
    ----------
    module : nn.Module instance or class
        The network, as for skorch.
    *args : tuple
        Further positional arguments of ``skorch.NeuralNetClassifier``.
    criterion : torch criterion class, default=nn.CrossEntropyLoss
        The loss, as for skorch (cross-entropy on logits).
    train_split : callable or None, default=None
        The validation split of skorch; none by default, as
        :func:`build_net` uses.
    classes : array-like or None, default=None
        The class labels, one per output of the module.
    **kwargs : dict
        Further arguments of ``skorch.NeuralNetClassifier``.

    See Also
    --------
    build_net : Builds the nets of this class the way backdoorlearn trains.
    wrap_module : Wraps a trained module into one.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.models import SmallCNN, wrap_module
    >>> net = wrap_module(SmallCNN(1, 3), classes=["cat", "dog", "owl"])
    >>> net.predict(np.zeros((2, 8, 8))).dtype.kind  # float64 (n, H, W) in, class names out
    'U'
    """

    def __init__(self, module, *args, criterion=nn.CrossEntropyLoss, train_split=None, classes=None, **kwargs):
        super().__init__(module, *args, criterion=criterion, train_split=train_split, classes=classes, **kwargs)

    def get_dataset(self, X, y=None):
        """Wrap ``X`` (float32, a channel axis for ``(n, H, W)``) and ``y`` in a skorch dataset.

        Parameters
        ----------
        X : array-like or torch.Tensor
            Images.
        y : array-like, default=None
            Targets.

        Returns
        -------
        dataset : torch.utils.data.Dataset
            The skorch dataset of the converted inputs.
        """
        return super().get_dataset(self._images(X), y)

    def _images(self, X):
        if isinstance(X, torch.Tensor):
            if X.is_floating_point() and X.dtype != torch.float32:
                X = X.float()
        elif isinstance(X, np.ndarray) or (isinstance(X, (list, tuple)) and len(X) and np.ndim(X) > 1):
            X = np.asarray(X)
            if X.dtype.kind == "f" and X.dtype != np.float32:
                X = X.astype(np.float32)
            elif X.dtype.kind == "f" and not X.flags.writeable:
                X = X.copy()  # torch warns at the user for a read-only array
        else:
            return X
        if X.ndim == 3:
            X = X[:, None]
        shape = getattr(self, "input_shape_", None)
        if shape is not None and tuple(X.shape[1:]) != tuple(shape):
            raise ValueError(f"X in {type(self).__name__} must hold images of shape {tuple(shape)}, as the net "
                             f"was fitted on; got {tuple(X.shape[1:])}.")
        return X

    def predict_proba(self, X):
        """Class probabilities, one column per class.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            Images.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            The probabilities.
        """
        proba = super().predict_proba(X)
        if self.classes is not None and proba.ndim == 2 and proba.shape[1] != len(self.classes):
            raise ValueError(
                f"classes of {type(self).__name__} hold {len(self.classes)} labels but its module returns "
                f"{proba.shape[1]} outputs; give one class per output, in the outputs' order."
            )
        return proba

    def predict(self, X):
        """The class of each image: a label of ``classes`` where given, else the output's index.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            Images.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The predicted classes.
        """
        idx = self.predict_proba(X).argmax(axis=1)
        if self.classes is None:
            return idx
        return np.asarray(self.classes)[idx]


def build_net(
    module,
    *,
    classes=None,
    max_epochs=10,
    lr=1e-3,
    batch_size=64,
    device=None,
    optimizer=torch.optim.Adam,
    verbose=0,
    desc="training",
    callbacks=None,
    net_class=None,
    **kwargs,
):
    """Build an unfitted skorch ``NeuralNetClassifier`` set up the way backdoorlearn trains.

    Cross-entropy on logits (so ``predict_proba`` is the softmax of the
    module's output), Adam, no internal validation split, shuffled training
    batches, and a one-line tqdm progress bar over epochs when ``verbose``.
    The parameters that pass through to skorch keep skorch's names
    (``max_epochs``, ``lr``, ``batch_size``).

    Parameters
    ----------
    module : nn.Module instance or class
        The network; an instance is trained as is (not re-initialized).
    classes : array-like, default=None
        The class labels, so a net that is only initialized still knows them.
    max_epochs : int, default=10
        Epochs of one ``fit`` or ``partial_fit`` call.
    lr : float, default=1e-3
        Learning rate of the optimizer.
    batch_size : int, default=64
        Mini-batch size of skorch's training and prediction alike.
    device : str, torch.device or None, default=None
        Where the net trains: ``None`` is where a module instance lives (the
        CPU for a class), ``"auto"`` is CUDA when available.
    optimizer : torch optimizer class, default=torch.optim.Adam
        The optimizer; its parameters go in ``kwargs`` as
        ``optimizer__name=value``.
    verbose : int, default=0
        0 is silent; 1 shows a progress bar over epochs.
    desc : str, default="training"
        Label of the progress bar.
    callbacks : list of (str, Callback), default=None
        Extra skorch callbacks, before the progress bar.
    net_class : type, default=None
        A subclass of ``NeuralNetClassifier`` to build instead (Anti-Backdoor
        Learning's staged loss); ``None`` is ``NeuralNetClassifier``.
    **kwargs : dict
        Passed to the net class (``criterion__label_smoothing=0.1``,
        ``optimizer__weight_decay=0.2``, ...).

    Returns
    -------
    net : skorch.NeuralNetClassifier
        Not initialized.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.models import SmallCNN, build_net
    >>> net = build_net(SmallCNN(1, 3), classes=range(3), max_epochs=1)
    >>> X = np.random.default_rng(0).random((12, 1, 8, 8), dtype=np.float32)
    >>> net.fit(X, np.arange(12) % 3).predict(X).shape
    (12,)
    """
    cbs = list(callbacks or [])
    if verbose:
        cbs.append(("progress", EpochProgressBar(desc=desc)))
    kwargs.setdefault("criterion", nn.CrossEntropyLoss)
    return (net_class or ImageClassifierNet)(
        module,
        optimizer=optimizer,
        lr=lr,
        max_epochs=max_epochs,
        batch_size=batch_size,
        train_split=None,
        iterator_train__shuffle=True,
        classes=None if classes is None else list(np.asarray(classes).tolist()),
        device=resolve_device(device, module),
        callbacks=cbs or None,
        verbose=0,
        **kwargs,
    )


def wrap_module(module, classes, *, device=None, **net_params):
    """Wrap a trained torch module into a fitted skorch ``NeuralNetClassifier``.

    The module is used as is (no re-initialization, no copy): the returned
    net predicts exactly what the module does, with softmax probabilities, and
    supports ``predict``, ``predict_proba``, ``score``, further ``partial_fit``
    and joblib persistence.

    Parameters
    ----------
    module : nn.Module
        A trained network returning logits.
    classes : array-like
        Class labels, one per output of the module, in the order of its
        outputs; ``predict`` returns them (strings included). A module whose
        outputs are not as many as the classes is refused at its first
        forward pass (``predict``, ``predict_proba``), or here when
        ``module.n_classes`` says how many it has.
    device : str, torch.device or None, default=None
        Where the net runs; ``None`` is where ``module`` lives.
    **net_params : dict
        Passed to :func:`build_net` (``lr``, ``batch_size``, ...).

    Returns
    -------
    net : ImageClassifierNet
        A skorch ``NeuralNetClassifier``, initialized, with ``classes_`` set;
        it casts float64 images to float32 and reads ``(n, H, W)`` as one
        channel.

    Raises
    ------
    TypeError
        If ``module`` is not a torch module.
    ValueError
        If ``classes`` is empty, or differs in length from
        ``module.n_classes`` where the module declares it.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.models import SmallCNN, wrap_module
    >>> net = wrap_module(SmallCNN(1, 10), classes=range(10))
    >>> net.predict(np.zeros((2, 1, 8, 8), dtype=np.float32)).shape
    (2,)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}.")
    n_classes = len(np.asarray(classes).ravel()) if classes is not None else 0
    if n_classes == 0:
        raise ValueError(f"classes in wrap_module must list the module's classes; got {classes!r}.")
    declared = getattr(module, "n_classes", None)
    if isinstance(declared, int) and declared != n_classes:
        raise ValueError(
            f"classes in wrap_module must hold one label per output of the module ({declared}); got "
            f"{n_classes} labels."
        )
    net = build_net(module, classes=classes, device=device, **net_params)
    net.initialize()
    return net


def train_classifier(X, y, *, n_classes, module_params=None, max_epochs=20, lr=3e-3, batch_size=64,
                     device=None, random_state=None, verbose=0, desc="training"):
    """Train a :class:`~backdoorlearn.models.SmallCNN` through skorch, seeded locally.

    The recipe of :func:`~backdoorlearn.datasets.make_backdoor_benchmark`'s
    two models: a freshly initialized network, Adam, cross-entropy, shuffled
    mini-batches. The module's initialization and the batch order are drawn
    from ``random_state`` with the global torch generator restored after.

    Parameters
    ----------
    X : ndarray of shape (n_samples, C, H, W)
        Training images.
    y : ndarray of shape (n_samples,)
        Their labels, in ``0 .. n_classes - 1``.
    n_classes : int
        Number of output classes.
    module_params : dict, default=None
        Keyword arguments of :class:`~backdoorlearn.models.SmallCNN`
        (``channels``, ``hidden``, ``pooled_size``).
    max_epochs : int, default=20
        Training epochs.
    lr : float, default=3e-3
        Adam learning rate.
    batch_size : int, default=64
        Mini-batch size.
    device : str, torch.device or None, default=None
        Where the network trains (``None``: the CPU, where it is built).
    random_state : int, RandomState instance or None, default=None
        Seeds the initialization and the batch order.
    verbose : int, default=0
        1 shows a progress bar over epochs.
    desc : str, default="training"
        Label of the progress bar.

    Returns
    -------
    net : skorch.NeuralNetClassifier
        The fitted net.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.models import train_classifier
    >>> X = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)
    >>> net = train_classifier(X, np.arange(30) % 3, n_classes=3, max_epochs=1, random_state=0)
    >>> net.predict(X[:4]).shape
    (4,)
    """
    seed = torch_seed(random_state)
    with seeded(seed):
        module = SmallCNN(in_channels=X.shape[1], n_classes=n_classes, **(module_params or {}))
        net = build_net(module, classes=np.arange(n_classes), max_epochs=max_epochs, lr=lr,
                        batch_size=batch_size, device=device, verbose=verbose, desc=desc)
        net.fit(X, y)
    return net


class ShiftOrNoise:
    """Collate a fine-tuning batch and augment each image: a small shift or Gaussian noise.

    Each image is, with probability ``noise_prob``, perturbed by Gaussian
    noise of standard deviation ``noise_std``; otherwise it is translated by
    up to ``max_shift`` pixels along each axis (zero fill). Draws come from
    torch's global generator, which :func:`fine_tune` seeds, so runs repeat.
    Used as a skorch ``iterator_train__collate_fn`` (training batches only).

    Parameters
    ----------
    max_shift : int, default=1
        Largest translation in pixels (0: none).
    noise_std : float, default=0.0
        Standard deviation of the noise (0: none).
    noise_prob : float in [0, 1], default=0.5
        Probability that an image gets noise instead of a shift.
    """

    def __init__(self, max_shift=1, noise_std=0.0, noise_prob=0.5):
        self.max_shift = max_shift
        self.noise_std = noise_std
        self.noise_prob = noise_prob

    def __call__(self, batch):
        from torch.utils.data import default_collate

        X, y = default_collate(batch)
        if X.ndim != 4:
            return X, y
        n, _, h, w = X.shape
        out = X
        s = int(self.max_shift)
        if s > 0:
            padded = nn.functional.pad(X, (s, s, s, s))
            dy = torch.randint(0, 2 * s + 1, (n,)).tolist()
            dx = torch.randint(0, 2 * s + 1, (n,)).tolist()
            out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        if self.noise_std > 0 and self.noise_prob > 0:
            noisy = (torch.rand(n) < self.noise_prob).view(n, 1, 1, 1)
            out = torch.where(noisy, X + self.noise_std * torch.randn_like(X), out)
        return out, y


def fine_tune(module, X, y, classes, *, epochs, lr, batch_size, device, seed, verbose,
              callbacks=None, desc="fine-tuning", weight_decay=0.0, lr_schedule="constant",
              label_smoothing=0.0, augment=None):
    """Wrap ``module`` in a skorch net and train it ``epochs`` epochs (0: no training) with AdamW.

    The module is trained in place (it is already the caller's own copy).
    ``lr_schedule="cosine"`` anneals the learning rate from ``lr`` to 0 over
    the epochs; ``label_smoothing`` is that of the cross-entropy; ``augment``
    is a collate function for the training batches (e.g.
    :class:`ShiftOrNoise`). These three only shape this fine-tuning: the
    returned net carries none of them (a later ``partial_fit`` is plain AdamW
    at ``lr`` on the data as given), only ``callbacks`` and the progress bar.
    """
    from skorch.callbacks import LRScheduler

    cbs = list(callbacks or [])
    train_only = []
    if lr_schedule == "cosine" and epochs > 0:
        train_only.append(("lr_schedule", LRScheduler(policy="CosineAnnealingLR", T_max=int(epochs))))
    extra = {}
    if label_smoothing:
        extra["criterion__label_smoothing"] = float(label_smoothing)
    if augment is not None:
        extra["iterator_train__collate_fn"] = augment
    with seeded(seed):
        net = build_net(module, classes=classes, max_epochs=max(int(epochs), 1), lr=lr,
                        batch_size=batch_size, device=device, callbacks=cbs + train_only,
                        verbose=verbose, desc=desc, optimizer=torch.optim.AdamW,
                        optimizer__weight_decay=weight_decay, **extra)
        net.initialize()
        if epochs > 0:
            net.partial_fit(X, y)
    if train_only or extra:
        # Hand back a plain net: drop the schedule, the augmentation and the smoothing,
        # and restore the learning rate the schedule annealed.
        # (Set directly: skorch's set_params re-initializes callbacks_ from the old
        # list, and raises on an initialized net when only iterator parameters change.)
        kept = [(name, cb) for name, cb in net.callbacks or [] if name != "lr_schedule"]
        net.callbacks = kept or None
        net.initialize_callbacks()
        if augment is not None:
            net.iterator_train__collate_fn = None  # DataLoader's default collate
        if label_smoothing:
            net.set_params(criterion__label_smoothing=0.0)  # re-initializes criterion and optimizer
        net.set_params(lr=lr)
    return net
