"""The model adapter: the one place that knows how a model is held.

A defense never asks "is this a torch module, a skorch net or a scikit-learn
estimator?": it wraps what the user gave in :class:`ModelAdapter` and asks for
probabilities, logits, layers or activations.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import numbers
import warnings
from collections import OrderedDict

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from torch import nn

from .._utils import as_tensor, check_finite_array, check_module_dtype, module_device, resolve_device
from ._structure import CONV_LAYERS, trace
from ._training import wrap_module

__all__ = ["ModelAdapter", "eval_mode", "inference_copy", "model_fingerprint"]

_WHITE_BOX_NEEDS = (
    "a white-box model: a torch.nn.Module returning logits or a skorch "
    "NeuralNetClassifier"
)


def _is_skorch_net(model):
    try:
        from skorch import NeuralNet
    except ImportError:  # pragma: no cover - skorch is a dependency
        return False
    return isinstance(model, NeuralNet)


def _model_kind(model, defense):
    if isinstance(model, nn.Module):
        return "torch"
    if _is_skorch_net(model):
        return "skorch"
    if callable(getattr(model, "predict_proba", None)):
        return "sklearn"
    who = f"{defense} needs" if defense else "Expected"
    raise TypeError(
        f"{who} a classifier: a torch.nn.Module returning logits, a skorch "
        f"NeuralNetClassifier, or an estimator with predict_proba; got "
        f"{type(model).__name__}, which has no predict_proba."
    )


@contextlib.contextmanager
def eval_mode(module):
    """Put ``module`` in eval mode for a block and restore every submodule's flag after.

    A helper for the user's own code: it changes the module's flags in place
    for the block, so defenses do not use it (they run on an
    :func:`inference_copy`, which leaves the flags alone).

    Parameters
    ----------
    module : nn.Module
        The network.

    Yields
    ------
    module : nn.Module
        The same network, in eval mode until the block ends.

    Examples
    --------
    >>> from backdoorlearn.models import SmallCNN, eval_mode
    >>> net = SmallCNN().train()
    >>> with eval_mode(net):
    ...     print(net.training)
    False
    >>> net.training
    True
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def inference_copy(module):
    """A copy of ``module`` in eval mode that shares its parameters and buffers.

    Defenses run their forward passes on such a copy, so the user's module
    keeps its train/eval flags even while a defense runs: a thread training
    the same module meanwhile never sees eval mode. The copy is shallow: each
    submodule is copied with its own ``training`` flag (False) and its own
    hook dictionaries (hooks a defense registers on the copy never fire on
    the user's module), while parameters and buffers are the user's tensors
    (no memory is copied, and weights the user updates are seen). Batch
    normalization uses its running statistics and dropout is off in the
    copy's forward passes. A TorchScript module, whose flags live in C++
    and cannot be copied this way, is copied deeply instead.

    Parameters
    ----------
    module : nn.Module
        The network; never modified.

    Returns
    -------
    copy : nn.Module
        The copy, with every submodule's ``training`` flag False.

    Examples
    --------
    >>> from backdoorlearn.models import SmallCNN, inference_copy
    >>> net = SmallCNN().train()
    >>> view = inference_copy(net)
    >>> view.training, net.training
    (False, True)
    >>> view.fc1.weight is net.fc1.weight
    True
    """
    if isinstance(module, torch.jit.ScriptModule):
        copied = _deepcopy(module)
        copied.eval()
        return copied
    memo = {}

    def _copy(m):
        if m is None:
            return None
        if id(m) in memo:
            return memo[id(m)]
        if isinstance(m, torch.jit.ScriptModule):
            new = _deepcopy(m)
            new.eval()
            memo[id(m)] = new
            return new
        new = copy.copy(m)
        memo[id(m)] = new
        # fresh containers (parameter, buffer, module and hook dicts), same tensors
        for key, value in vars(m).items():
            if isinstance(value, (dict, set)):
                new.__dict__[key] = type(value)(value) if not isinstance(value, OrderedDict) else OrderedDict(value)
        new.__dict__["training"] = False
        new.__dict__["_modules"] = type(m._modules)((k, _copy(v)) for k, v in m._modules.items())
        return new

    return _copy(module)


class ModelAdapter:
    """One interface to a classifier held as a module, a skorch net or an estimator.

    A defense never asks which kind of model it was given: it asks the
    adapter for probabilities, logits, layers or activations, batched, numpy
    in and numpy out. White-box operations (logits, layers, activations)
    raise a ``TypeError`` naming the defense for a black-box estimator.

    Parameters
    ----------
    model : torch.nn.Module, skorch.NeuralNetClassifier or estimator
        A module should return logits. One whose outputs are probabilities
        (at its first forward pass through the adapter, every row
        non-negative and summing to 1, e.g. a final ``nn.Softmax``) is
        detected once, with a ``UserWarning``, and the logarithm of its
        outputs is used as its logits: a softmax applied twice would flatten
        every score the defenses compute. A copy a repair trains and returns
        (:meth:`module_copy`) carries a forward hook taking that logarithm,
        so the repaired net's cross-entropy and ``predict_proba`` stay
        right. A skorch net must be initialized or fitted; one trained with
        ``NLLLoss`` returns probabilities and is read the same way. Any other object needs ``predict_proba`` (a black box:
        only the black-box defenses accept it). Outputs holding NaN or
        infinity are refused with a ``ValueError``. Forward passes run on an
        :func:`inference_copy`: the module's train/eval flags are never
        changed, not even for the duration of a call.
    defense : str, default=None
        Name of the defense using the adapter, used in error messages.
    device : str, torch.device or None, default=None
        Where tensor work runs. ``None`` keeps a module's own device (a
        skorch net's ``device``). When it differs from where the user's
        module lives, the adapter works on a copy: the user's module is
        never moved.
    batch_size : int, default=256
        Inputs per forward pass.

    Attributes
    ----------
    kind : {"torch", "skorch", "sklearn"}
        How the model is held.
    model : object
        The model as given (never modified).

    See Also
    --------
    wrap_module : Turn a trained module into a fitted skorch net.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.models import ModelAdapter, SmallCNN
    >>> adapter = ModelAdapter(SmallCNN(in_channels=1, n_classes=10))
    >>> proba = adapter.predict_proba(np.zeros((4, 1, 8, 8), dtype=np.float32))
    >>> proba.shape, bool(np.allclose(proba.sum(axis=1), 1))
    ((4, 10), True)
    """

    def __init__(self, model, *, defense=None, device=None, batch_size=256):
        self.kind = _model_kind(model, defense)
        self.model = model
        self.defense = defense
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral) \
                or batch_size < 1:
            where = f" in {defense}" if defense else ""
            raise ValueError(f"batch_size{where} must be a positive integer; got {batch_size!r}.")
        self.batch_size = int(batch_size)
        if device is not None:
            resolve_device(device, caller=defense)  # an unknown or absent device fails here, not in torch
        self._requested_device = device
        self._runtime = None
        self._probabilities = None  # unknown until the first forward pass

    # ---------------------------------------------------------------- identity
    @property
    def is_white_box(self):
        """Whether the model is a torch module or a skorch net (not a black box)."""
        return self.kind in ("torch", "skorch")

    def require_white_box(self):
        """Raise a ``TypeError`` naming the defense unless the model is white box.

        Returns
        -------
        self : ModelAdapter
            The adapter, for chaining.
        """
        if not self.is_white_box:
            who = self.defense or "This operation"
            raise TypeError(
                f"{who} needs {_WHITE_BOX_NEEDS}; got {type(self.model).__name__}, a black "
                f"box that only offers predict_proba. Use a black-box defense "
                f"(STRIPDetector, BimodelClassifier, GuardedClassifier) instead."
            )
        return self

    @property
    def module(self):
        """The user's torch module (a reference, not a copy)."""
        self.require_white_box()
        if self.kind == "torch":
            return self.model
        module = getattr(self.model, "module_", None)
        if module is None:
            raise NotFittedError(
                f"{self.defense or 'The adapter'} got a skorch net that is not initialized; "
                "call net.initialize() or net.fit(X, y) first."
            )
        return module

    @property
    def device(self):
        """The device tensor work runs on."""
        if self._requested_device is not None:
            return resolve_device(self._requested_device, caller=self.defense)
        if self.kind == "skorch":
            return resolve_device(getattr(self.model, "device", "cpu") or "cpu", caller=self.defense)
        if self.kind == "torch":
            return str(module_device(self.model))
        return "cpu"

    @property
    def runtime_module(self):
        """The module that forward passes run on: an eval-mode copy on :attr:`device`.

        An :func:`inference_copy` of the user's module (its parameters and
        buffers, its train/eval flags untouched) when the module already
        lives on :attr:`device`; otherwise a deep copy moved there (moving a
        module is in place and would change the user's). Made once per
        module: the same object is returned until the user's module is
        replaced (a skorch net refitted).
        """
        module = self.module
        if self._runtime is None or self._runtime[0] is not module:
            check_module_dtype(module, name="model", caller=self.defense)
            target = torch.device(self.device)
            here = module_device(module)
            if here.type == target.type and (target.index is None or here == target):
                runtime = inference_copy(module)
            else:
                runtime = _deepcopy(module).to(target).eval()
            self._runtime = (module, runtime)
        return self._runtime[1]

    @property
    def outputs_probabilities(self):
        """True for a skorch net trained with NLLLoss, whose module returns probabilities."""
        if self.kind != "skorch":
            return False
        crit = self.model.criterion
        crit_cls = crit if isinstance(crit, type) else type(crit)
        return issubclass(crit_cls, nn.NLLLoss)

    # ---------------------------------------------------------------- forward passes
    def _batches(self, X, batch_size):
        bs = batch_size or self.batch_size
        for start in range(0, len(X), bs):
            yield X[start : start + bs]

    def forward_logits(self, xb):
        """Compute the logits of a tensor batch already on :attr:`device` (no grad handling).

        For use inside defenses' own torch loops; the forward pass runs on
        :attr:`runtime_module`, in eval mode, whatever mode the user's module
        is in. A skorch net trained with ``NLLLoss`` returns probabilities;
        their logarithm is returned instead. So is that of a module whose
        first batch through the adapter had rows all non-negative and summing
        to 1 (probabilities, e.g. a final ``nn.Softmax``; detected once, with
        a ``UserWarning``).

        Parameters
        ----------
        xb : torch.Tensor of shape (n, ...)
            Inputs on :attr:`device`.

        Returns
        -------
        logits : torch.Tensor of shape (n, n_classes)
            Attached to the graph when ``xb`` requires grad.
        """
        if xb.ndim == 3:  # (n, H, W) is grayscale, one channel: the library's one rule
            xb = xb.unsqueeze(1)
        try:
            out = self.runtime_module(xb)
        except RuntimeError as exc:
            raise self._explain(xb, exc) from exc
        if self._probabilities is None:
            self._probabilities = self._detect_probabilities(out)
        if self.returns_probabilities:
            return torch.log(out.clamp_min(1e-12))
        return out

    def _explain(self, xb, exc):
        """A ``ValueError`` naming ``X`` and what the module expects, for a forward pass torch refused."""
        who = f" in {self.defense}" if self.defense else ""
        shape = tuple(xb.shape)
        first = next((m for m in self.runtime_module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
        if isinstance(first, nn.Conv2d) and len(shape) == 4 and shape[1] != first.in_channels:
            return ModelInputError(
                f"X{who} must have {first.in_channels} channel(s) on axis 1, as the model's first convolution "
                f"takes; got {shape[1]} (images of shape {shape[1:]})."
            )
        if isinstance(first, nn.Linear) and len(shape) >= 2 and int(np.prod(shape[1:])) != first.in_features \
                and shape[-1] != first.in_features:
            return ModelInputError(
                f"X{who} must hold inputs of {first.in_features} values, as the model's first linear layer "
                f"takes; got inputs of shape {shape[1:]} ({int(np.prod(shape[1:]))} values)."
            )
        return ModelInputError(
            f"model{who} could not run on X of shape {shape} ({xb.dtype}, on {xb.device}): {exc}"
        )

    @property
    def returns_probabilities(self):
        """Whether the module's outputs are read as probabilities (their log is used as logits).

        True for a skorch net trained with ``NLLLoss`` and for a module whose
        first forward pass through the adapter returned rows that are all
        non-negative and sum to 1 (detected once, with a ``UserWarning``).
        """
        return self.outputs_probabilities or bool(self._probabilities)

    def _detect_probabilities(self, out):
        """Whether a module's first outputs are probabilities (non-negative rows summing to 1)."""
        if self.kind == "sklearn" or self.outputs_probabilities:
            return False
        if not (isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] > 0 and out.shape[1] > 1):
            return False
        with torch.no_grad():
            o = out.detach().float()
            simplex = bool(torch.isfinite(o).all()) and bool((o >= 0).all()) and bool(
                torch.allclose(o.sum(dim=1), torch.ones(len(o), device=o.device), atol=1e-4))
        if simplex:
            who = f" given to {self.defense}" if self.defense else ""
            warnings.warn(
                f"model{who} returns probabilities, not logits: its outputs are non-negative and sum to 1. "
                "Their logarithm is used as the logits (a second softmax would flatten every score); "
                "remove the final softmax to silence this warning.", UserWarning, stacklevel=4)
        return simplex

    def eval(self):
        """A context yielding :attr:`runtime_module`, already in eval mode.

        Kept for the defenses' ``with adapter.eval():`` blocks; nothing is
        switched, neither on the user's module nor on the copy.

        Returns
        -------
        context : contextmanager
            Yields the runtime module.
        """
        return contextlib.nullcontext(self.runtime_module)

    def _run(self, X, fn, batch_size=None):
        self.require_white_box()
        X = check_finite_array(X, name="X", caller=self.defense)
        device = torch.device(self.device)
        outs = []
        with self.eval(), torch.no_grad():
            for xb in self._batches(X, batch_size):
                t = as_tensor(xb).to(device)
                outs.append(fn(t).float().cpu().numpy())
        return self._check_width(self._check_finite_outputs(np.concatenate(outs, axis=0)))

    def _check_width(self, out):
        """Refuse outputs whose count differs from the classes the model declares (``classes_``)."""
        classes = self.classes_
        if classes is not None and out.ndim == 2 and out.shape[1] != len(classes):
            who = f" given to {self.defense}" if self.defense else ""
            raise ValueError(
                f"model{who} declares {len(classes)} classes (classes_) but returns {out.shape[1]} outputs; "
                "its classes must be one label per output."
            )
        return out

    def _check_finite_outputs(self, out):
        """Raise a ``ValueError`` naming the model when its outputs hold NaN or infinity."""
        if not np.isfinite(out).all():
            who = f" given to {self.defense}" if self.defense else ""
            n_bad = int((~np.isfinite(out)).reshape(len(out), -1).any(axis=1).sum())
            raise NonFiniteOutputError(
                f"model{who} must return finite outputs; it returned non-finite values (NaN or "
                f"infinity) for {n_bad} of {len(out)} input(s) (check its weights and the inputs' scale)."
            )
        return out

    def logits(self, X, batch_size=None):
        """Compute logits for ``X`` as a numpy array (white box only).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs of the shape the model takes.
        batch_size : int, default=None
            Inputs per forward pass; ``None`` is the adapter's.

        Returns
        -------
        logits : ndarray of shape (n_samples, n_classes)
            The model's logits, float32.
        """
        return self._run(X, self.forward_logits, batch_size)

    def predict_proba(self, X, batch_size=None):
        """Compute class probabilities for ``X``, batched, numpy in and numpy out.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs of the shape the model takes.
        batch_size : int, default=None
            Inputs per forward pass; ``None`` is the adapter's (at least 1024
            rows per call for a black-box estimator).

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            The probabilities, float32 (the softmax of a module's logits).
        """
        if self.kind == "sklearn":
            X = check_finite_array(X, name="X", caller=self.defense)
            bs = batch_size or self.batch_size
            parts = [np.asarray(self.model.predict_proba(xb)) for xb in self._batches(X, max(bs, 1024))]
            return self._check_width(
                self._check_finite_outputs(np.concatenate(parts, axis=0).astype(np.float32, copy=False)))
        return self._run(X, lambda t: torch.softmax(self.forward_logits(t), dim=1), batch_size)

    def predict(self, X, batch_size=None):
        """Predict the class of each input of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs of the shape the model takes.
        batch_size : int, default=None
            Inputs per forward pass; ``None`` is the adapter's.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The index of the most probable class; for a model whose
            ``classes_`` are not ``0..K-1``, its own label, looked up in
            ``classes_``.
        """
        idx = self.predict_proba(X, batch_size).argmax(axis=1)
        classes = self.classes_
        if classes is not None and not np.array_equal(classes, np.arange(len(classes))):
            return np.asarray(classes)[idx]
        return idx

    @property
    def classes_(self):
        """The classes the model knows, when it says so (skorch and scikit-learn)."""
        classes = None
        if self.kind == "sklearn":
            classes = getattr(self.model, "classes_", None)
        elif self.kind == "skorch":
            try:
                classes = self.model.classes_
            except (AttributeError, NotFittedError):
                classes = None
        return None if classes is None else np.asarray(classes)

    def n_classes(self, X_sample=None):
        """Count the classes: from ``classes_`` or one forward pass of ``X_sample``.

        Parameters
        ----------
        X_sample : array-like of shape (n, ...), default=None
            Inputs, of which the first is passed through a model that does
            not know its classes.

        Returns
        -------
        n_classes : int
            Number of classes.
        """
        classes = self.classes_
        if classes is not None:
            return len(classes)
        if X_sample is None:
            raise ValueError(
                f"{self.defense or 'The adapter'} cannot tell the number of classes of a bare "
                "module without a sample input."
            )
        return int(self.predict_proba(np.asarray(X_sample)[:1]).shape[1])

    # ---------------------------------------------------------------- layers
    def named_layers(self):
        """List the layers of the user's module (white box only).

        Returns
        -------
        layers : OrderedDict of str to nn.Module
            Layer name to submodule, in definition order.
        """
        return OrderedDict((n, m) for n, m in self.module.named_modules() if n)

    def get_layer(self, name, *, types=None, what="layer", param="layer"):
        """Look a layer up by name with a clear error; optionally check its type.

        Parameters
        ----------
        name : str
            The layer's name in :meth:`named_layers`.
        types : type or tuple of type, default=None
            Layer classes accepted; ``None`` accepts any.
        what : str, default="layer"
            What the layer must be, in the error message.
        param : str, default="layer"
            The parameter that named the layer, in the error message.

        Returns
        -------
        layer : nn.Module
            The submodule.
        """
        layers = self.named_layers()
        if name not in layers:
            raise ValueError(
                f"{param}={name!r} is not a layer of this model; available layers: "
                f"{', '.join(layers) or '(none)'}."
            )
        layer = layers[name]
        if types is not None and not isinstance(layer, types):
            raise ValueError(
                f"{param}={name!r} must name a {what}; it is a {type(layer).__name__}."
            )
        return layer

    def layer_graph(self, X_sample):
        """Trace one forward pass of ``X_sample`` and return the model's data-flow graph.

        Parameters
        ----------
        X_sample : array-like of shape (n, ...)
            Inputs the model takes; the first one is passed through.

        Returns
        -------
        graph : LayerGraph
            Every leaf module call and tensor function of the pass, linked by
            the tensors they exchange (see ``backdoorlearn.models._structure``).
        """
        self.require_white_box()
        if isinstance(self.module, torch.jit.ScriptModule):
            raise ValueError(f"{self.defense or 'The adapter'} cannot trace a TorchScript module (no forward "
                             "hooks); pass layer= or give the architecture as code.")
        X = check_finite_array(np.asarray(X_sample)[:1], name="X", caller=self.defense)
        if X.ndim == 3:  # (n, H, W): one channel, as in forward_logits
            X = X[:, None]
        with self.eval():
            return trace(self.runtime_module, as_tensor(X).to(self.device))

    def _need_sample(self, X_sample, what):
        if X_sample is None:
            raise ValueError(f"{self.defense or 'The adapter'} needs a sample input to find {what} of a "
                             f"{type(self.module).__name__} (it traces one forward pass); pass X_sample= "
                             "or layer=.")

    def default_conv_layer(self, X_sample=None):
        """Name the last convolution of the main path feeding the classifier.

        ``module.last_conv_name`` when the module declares it; otherwise,
        from one traced forward pass of ``X_sample``, the first convolution
        met walking back from the final ``nn.Linear`` along the main path
        (at a residual sum, the branch with more layers behind it: never a
        shortcut's convolution).

        Parameters
        ----------
        X_sample : array-like of shape (n, ...), default=None
            Inputs the model takes; needed unless the module declares
            ``last_conv_name``.

        Returns
        -------
        name : str
            The layer's name.
        """
        name = getattr(self.module, "last_conv_name", None)
        if name:
            return name
        self._need_sample(X_sample, "its last convolution")
        graph = self.layer_graph(X_sample)
        head = graph.head
        name = None if head is None else graph.upstream(head, CONV_LAYERS)
        if name is None:
            raise ValueError(f"{self.defense or 'The adapter'} found no convolution feeding the final "
                             "classifier layer of this model; pass layer=.")
        return name

    def default_penultimate_layer(self, X_sample=None):
        """Name the penultimate layer: the module whose output the final classifier layer reads.

        ``module.penultimate_name`` when the module declares it; otherwise,
        from one traced forward pass of ``X_sample``, the module producing
        the input of the last ``nn.Linear`` on the way to the logits
        (through dropout, flatten and reshapes): never the logits layer or
        a container holding it.

        Parameters
        ----------
        X_sample : array-like of shape (n, ...), default=None
            Inputs the model takes; needed unless the module declares
            ``penultimate_name``.

        Returns
        -------
        name : str
            The layer's name.
        """
        name = getattr(self.module, "penultimate_name", None)
        if name:
            return name
        self._need_sample(X_sample, "its penultimate layer")
        graph = self.layer_graph(X_sample)
        name = graph.penultimate()
        if name is None:
            what = ("has no nn.Linear classifier layer" if graph.head is None else
                    "computes the final classifier layer's input with a function, not a module")
            raise ValueError(f"{self.defense or 'The adapter'}: this model {what}, so it has no penultimate "
                             f"layer to watch; pass layer= (one of: {', '.join(self.named_layers())}).")
        return name

    @contextlib.contextmanager
    def capture(self, layer):
        """Collect the output tensors of ``layer`` on the runtime module during a block.

        Parameters
        ----------
        layer : str
            The layer's name.

        Yields
        ------
        store : list of torch.Tensor
            Each forward pass appends the layer's output (still attached to
            the graph, so gradient-based defenses can use it).
        """
        self.get_layer(layer)
        target = dict(self.runtime_module.named_modules())[layer]
        store = []
        handle = target.register_forward_hook(lambda _m, _i, out: store.append(out))
        try:
            yield store
        finally:
            handle.remove()

    def activations(self, X, layer, batch_size=None):
        """Compute the outputs of ``layer`` for ``X`` (forward hooks, batched).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs of the shape the model takes.
        layer : str
            The layer's name.
        batch_size : int, default=None
            Inputs per forward pass; ``None`` is the adapter's.

        Returns
        -------
        activations : ndarray of shape (n_samples, ...)
            The layer's output, float32.
        """
        with self.capture(layer) as store:
            self.logits(X, batch_size)
        if not store and len(X):
            raise ValueError(f"layer={layer!r} is a layer of this model that its forward pass never calls; "
                             f"pass one it calls.")
        return torch.cat([s.detach().float().cpu() for s in store], dim=0).numpy()

    # ---------------------------------------------------------------- copies and nets
    def copy(self):
        """Copy the model deeply and wrap the copy in a new adapter.

        Returns
        -------
        adapter : ModelAdapter
            Same device and batch size, around the copy.
        """
        adapter = ModelAdapter(
            _deepcopy(self.model),
            defense=self.defense,
            device=self._requested_device,
            batch_size=self.batch_size,
        )
        adapter._probabilities = self._probabilities  # detected once, for the copies too
        return adapter

    def module_copy(self):
        """Copy the torch module deeply, onto :attr:`device`.

        A module read as returning probabilities (see
        :attr:`returns_probabilities`) gets a forward hook that returns the
        logarithm of its outputs: the copy returns logits, with the same
        layers and ``state_dict``.

        Returns
        -------
        module : nn.Module
            The copy.
        """
        module = _deepcopy(self.module).to(torch.device(self.device))
        if self.returns_probabilities:
            if isinstance(module, torch.jit.ScriptModule):
                raise ValueError(
                    f"model given to {self.defense or 'the adapter'} is a TorchScript module returning "
                    "probabilities, which cannot be given a hook returning logits; script it without the "
                    "final softmax."
                )
            module.register_forward_hook(LogOutputs())
        return module

    def to_net(self, module=None, classes=None, **net_params):
        """Wrap ``module`` (default: a copy of this model's) into a fitted skorch net.

        Parameters
        ----------
        module : nn.Module, default=None
            The network; ``None`` is :meth:`module_copy`.
        classes : array-like, default=None
            Its classes; ``None`` is this model's ``classes_``.
        **net_params : dict
            Passed to :func:`wrap_module`.

        Returns
        -------
        net : skorch.NeuralNetClassifier
            Initialized, on :attr:`device`.
        """
        module = self.module_copy() if module is None else module
        if classes is None:
            classes = self.classes_
        if classes is None:
            raise ValueError("to_net needs classes= for a bare module.")
        return wrap_module(module, classes=classes, device=self.device, **net_params)


class ModelInputError(ValueError, RuntimeError):
    """A forward pass torch refused, explained: a ``ValueError`` (bad input) and a ``RuntimeError``.

    The second base keeps working the code that caught torch's own
    ``RuntimeError`` around a forward pass.
    """


class NonFiniteOutputError(ValueError, FloatingPointError):
    """A model returned NaN or infinity: a ``ValueError`` (bad model) and a ``FloatingPointError``.

    The second base keeps Neural Cleanse's contract, whose optimization
    raises ``FloatingPointError`` on non-finite logits.
    """


class LogOutputs:
    """A forward hook that turns a module's probability outputs into logits (their logarithm).

    Picklable (a class, not a closure), so a repaired net holding it can be
    saved with joblib or pickle.
    """

    def __call__(self, _module, _inputs, output):
        return torch.log(output.clamp_min(1e-12))


def _deepcopy(model):
    """``copy.deepcopy`` whose copied parameters are leaves, as the original's are.

    Deep-copying a loaded TorchScript module with autograd on yields parameters
    that are outputs of a clone, whose ``requires_grad`` flag cannot be set
    (Neural Cleanse freezes the weights it optimizes a trigger through). Copied
    under ``no_grad`` they are leaves; their flags are then set back to the
    original's.
    """
    if not isinstance(model, torch.jit.ScriptModule):
        return copy.deepcopy(model)
    with torch.no_grad():
        copied = copy.deepcopy(model)
    for original, param in zip(model.parameters(), copied.parameters()):
        param.requires_grad_(original.requires_grad)
    return copied



def model_fingerprint(model):
    """Hash a model's state dict (torch module or skorch net) with SHA-256, for "unchanged" checks.

    Parameters
    ----------
    model : nn.Module or skorch.NeuralNet
        The model.

    Returns
    -------
    digest : str
        Hexadecimal digest of the parameter and buffer names and values.

    Examples
    --------
    >>> from backdoorlearn.models import SmallCNN, model_fingerprint
    >>> net = SmallCNN()
    >>> before = model_fingerprint(net)
    >>> _ = net.fc1.weight.data.mul_(2)
    >>> model_fingerprint(net) == before
    False
    """
    module = ModelAdapter(model).module
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()
