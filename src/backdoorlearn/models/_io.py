"""Saving and loading model weights without unpickling untrusted code."""

from __future__ import annotations

import os

import torch

from ._adapter import ModelAdapter

__all__ = ["load_weights", "save_weights"]


def save_weights(model, path):
    """Save a model's ``state_dict`` (a torch module or a skorch net) to ``path``.

    Parameters
    ----------
    model : nn.Module or skorch.NeuralNet
    path : str or path-like

    Examples
    --------
    >>> import tempfile, os
    >>> from backdoorlearn.models import SmallCNN, load_weights, save_weights
    >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
    >>> save_weights(SmallCNN(1, 10), path)
    >>> module = load_weights(SmallCNN(1, 10), path)
    """
    module = ModelAdapter(model, defense="save_weights").module
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, os.fspath(path))


def load_weights(module, path, *, device="cpu", strict=True):
    """Load weights from ``path`` into ``module`` with ``torch.load(weights_only=True)``.

    A model file from a third party is the threat model itself: a full
    pickle can run arbitrary code when loaded. ``weights_only=True`` only
    rebuilds tensors and plain containers, so a tampered file fails to load
    instead of running.

    Parameters
    ----------
    module : nn.Module
        The architecture to load into (modified in place and returned).
    path : str or path-like
    device : str, default="cpu"
        Where the tensors are mapped.
    strict : bool, default=True
        Passed to ``load_state_dict``: every key must match.

    Returns
    -------
    module : nn.Module

    Examples
    --------
    >>> import tempfile, os
    >>> from backdoorlearn.models import SmallCNN, load_weights, save_weights
    >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
    >>> save_weights(SmallCNN(1, 10), path)
    >>> load_weights(SmallCNN(1, 10), path).classifier.out_features
    10
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module to load weights into; got {type(module).__name__}.")
    state = torch.load(os.fspath(path), map_location=device, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict; got {type(state).__name__}.")
    module.load_state_dict(state, strict=strict)
    return module
