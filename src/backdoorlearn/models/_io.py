"""Saving and loading models without unpickling untrusted code.

A model file from a third party is the threat model itself. Three kinds of
file are read, told apart by their content and never by their name: a
TorchScript archive, a ``torch.save`` state_dict (read with
``weights_only=True``) paired with an architecture the caller names, and the
Keras HDF5 files of the CSAW HackML DeepID (read with h5py, which reads
arrays only). Nothing here calls ``pickle.load`` on a user's file.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._utils import resolve_device
from ._adapter import ModelAdapter
from ._deepid import DeepID

__all__ = ["load_keras_h5", "load_model", "load_weights", "save_weights"]

_ZIP_SIGNATURE = b"PK\x03\x04"
# torch.save's legacy (pre-1.6, non-zip) format starts with this pickled magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_ARCH_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def save_weights(model, path):
    """Save a model's ``state_dict`` (a torch module or a skorch net) to ``path``.

    Only the tensors are saved, moved to the CPU, so the file loads on a
    machine without the training device and through
    :func:`load_weights` (``torch.load(weights_only=True)``), which only
    rebuilds tensors and plain containers.

    Parameters
    ----------
    model : nn.Module or skorch.NeuralNet
        The model whose weights are saved; a skorch net contributes its
        ``module_``. It is not modified.
    path : str or path-like
        File to write (overwritten if it exists).

    See Also
    --------
    load_weights : Load the file back into a module of the same architecture.

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
        File holding a ``state_dict``, such as one :func:`save_weights`
        wrote.
    device : str, default="cpu"
        Where the tensors are mapped.
    strict : bool, default=True
        Passed to ``load_state_dict``: every key must match. With
        ``False``, the keys that match are loaded; a file of which no key
        matches is refused (it would load nothing).

    Returns
    -------
    module : nn.Module
        The same ``module``, holding the loaded weights.

    Raises
    ------
    TypeError
        If ``module`` is not a ``torch.nn.Module``.
    ValueError
        If the file does not hold a state dict, or with ``strict=False``
        holds none of the module's keys.

    See Also
    --------
    save_weights : Write the file this function reads.
    load_model : Load a model file of any supported format.

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
    if not strict:
        # a file of another architecture (or with prefixed keys) would load nothing, silently
        expected = set(module.state_dict())
        if expected and not expected & set(state):
            raise ValueError(
                f"{path} holds no weight of this {type(module).__name__} (strict=False loads the keys that "
                f"match, and none does): the module has {sorted(expected)[:3]}..., the file "
                f"{sorted(map(str, state))[:3]}...; is it another architecture, or are its keys prefixed?"
            )
    module.load_state_dict(state, strict=strict)
    return module


# --------------------------------------------------------------------------- one entry point
def load_model(path, *, arch=None, arch_kwargs=None, device="cpu"):
    """Load a model file safely, telling its format apart by its content.

    The entry point for a model that someone else trained (a model-intake
    pipeline, a command line, a grader): no file is unpickled, so a tampered
    file fails to load instead of running code. Three kinds are read:

    - a **TorchScript archive** (``torch.jit.script(model).save(path)`` or
      ``torch.jit.trace``), loaded with ``torch.jit.load``;
    - a **state_dict** saved with ``torch.save(model.state_dict(), path)``
      (zip or legacy format; skorch's ``save_params`` writes one), read with
      ``torch.load(weights_only=True)`` into the architecture ``arch``;
    - a **Keras HDF5 file of the CSAW HackML DeepID**, weights only or full
      model, read by :func:`load_keras_h5`.

    A whole pickled module (``torch.save(model, path)``) is refused, since
    loading it would run whatever code the pickle names.

    Parameters
    ----------
    path : str or path-like
        The model file.
    arch : str or callable, default=None
        The architecture a state_dict is loaded into (required for a
        state_dict, refused for the other kinds, which carry their own): an
        import path ``"package.module:Class"``, or the class itself. A
        function returning an ``nn.Module`` (a model factory) is accepted in
        the place of a class. Importing the path runs that module's code,
        which is the caller's code, not the file's.
    arch_kwargs : str or dict, default=None
        Keyword arguments for ``arch``, as a dict or a JSON object such as
        ``'{"in_channels": 1, "n_classes": 10}'``.
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where the loaded module is placed. ``"auto"`` picks CUDA when
        available.

    Returns
    -------
    module : nn.Module
        The model in eval mode, returning logits. A TorchScript archive
        comes back as a ``torch.jit.ScriptModule``.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If the file is of no kind above (the kinds expected are named), is
        truncated or corrupt, holds a pickled object rather than weights,
        does not fit ``arch`` (missing and unexpected keys and shape
        mismatches are listed), or if ``arch`` cannot be imported or built.
    TypeError
        If ``arch`` names something that is not an ``nn.Module`` class or a
        function returning one.

    See Also
    --------
    load_keras_h5 : The Keras HDF5 reader, with its checks.
    load_weights : Load a state_dict into a module you already hold.

    Notes
    -----
    A TorchScript archive holds code as well as weights. The code runs in
    TorchScript's interpreter, not in Python, and its data is read by
    TorchScript's own restricted unpickler; still, treat an archive from an
    unknown source as a program. A loaded ScriptModule takes no forward
    hooks, so defenses that read a layer's activations (Fine-Pruning, the
    activation filter) need the weights as a state_dict and the architecture
    as code; black-box defenses such as STRIP only call it.

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from backdoorlearn.models import SmallCNN, load_model
    >>> net = SmallCNN(in_channels=1, n_classes=10).eval()
    >>> path = os.path.join(tempfile.mkdtemp(), "weights.pt")
    >>> torch.save(net.state_dict(), path)
    >>> loaded = load_model(path, arch="backdoorlearn.models:SmallCNN",
    ...                     arch_kwargs='{"in_channels": 1, "n_classes": 10}')
    >>> x = torch.rand(4, 1, 8, 8)
    >>> bool(torch.allclose(loaded(x), net(x)))
    True
    >>> load_model(path)
    Traceback (most recent call last):
    ...
    ValueError: path '...weights.pt' holds a state_dict (weights only): pass arch='package.module:Class' ...
    """
    name = os.fspath(path)
    device = resolve_device(device)
    kind = _file_kind(name)
    if kind != "state_dict" and (arch is not None or arch_kwargs is not None):
        raise ValueError(
            f"arch and arch_kwargs apply to state_dict files only; path {name!r} is a "
            f"{_KIND_NAMES[kind]}, which carries its own architecture."
        )
    if kind == "torchscript":
        return _load_torchscript(name, device)
    if kind == "hdf5":
        return load_keras_h5(name, device=device)
    if arch is None:
        raise ValueError(
            f"path {name!r} holds a state_dict (weights only): pass arch='package.module:Class' "
            "(and arch_kwargs as JSON) naming the architecture to load it into."
        )
    state = _read_state_dict(name)
    module, label = _build_arch(arch, arch_kwargs)
    _check_fits(module, state, name, label)
    module.load_state_dict(state, strict=True)
    return module.to(device).eval()


_KIND_NAMES = {"torchscript": "TorchScript archive", "hdf5": "HDF5 (Keras) file", "state_dict": "torch.save file"}


def _file_kind(name):
    """``"torchscript"``, ``"state_dict"`` or ``"hdf5"`` from the file's bytes, else a ValueError."""
    if not Path(name).is_file():
        raise FileNotFoundError(f"path {name!r} does not exist or is not a file.")
    with open(name, "rb") as fh:
        head = fh.read(64)
    expected = (
        "expected a TorchScript archive, a state_dict written by torch.save, or a Keras HDF5 file of the "
        "CSAW HackML DeepID"
    )
    if head.startswith(_ZIP_SIGNATURE):
        try:
            with zipfile.ZipFile(name) as archive:
                entries = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ValueError(
                f"path {name!r} starts like a zip archive (TorchScript or torch.save) but cannot be read as "
                f"one: it is truncated or corrupt ({exc})."
            ) from None
        # torch writes every entry under one top-level folder; TorchScript adds its code/ and constants.pkl.
        if any(re.fullmatch(r"[^/]+/code/.+", e) for e in entries) and any(
            re.fullmatch(r"[^/]+/constants\.pkl", e) for e in entries
        ):
            return "torchscript"
        if any(re.fullmatch(r"[^/]+/data\.pkl", e) for e in entries):
            return "state_dict"
        shown = ", ".join(entries[:6]) + (f", ... ({len(entries)} entries)" if len(entries) > 6 else "")
        hint = ""
        if "config.json" in entries and any(e.endswith(".weights.h5") for e in entries):
            hint = " It looks like a Keras 3 '.keras' archive, which is not read here."
        elif entries and all(e.endswith(".npy") for e in entries):
            hint = " It looks like a numpy .npz archive (data, not a model)."
        raise ValueError(f"path {name!r} is a zip archive of an unsupported kind ({expected}); entries: {shown}.{hint}")
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "state_dict"
    if _has_hdf5_signature(name):
        return "hdf5"
    if head[:1] == b"\x80":
        raise ValueError(
            f"path {name!r} is a Python pickle, which is refused: unpickling can run arbitrary code ({expected}). "
            "Save the weights with torch.save(model.state_dict(), path) instead."
        )
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(name):
        raise ValueError(
            f"path {name!r} looks like a safetensors file, which is not read here ({expected}); convert it "
            "with torch.save(safetensors.torch.load_file(path), 'weights.pt')."
        )
    what = "an empty file" if not head else f"its first bytes are {head[:16]!r}"
    raise ValueError(f"path {name!r} is not a model file of a supported kind ({expected}); {what}.")


def _load_torchscript(name, device):
    try:
        with warnings.catch_warnings():
            # torch deprecates torch.jit.load in favour of torch.export; the archive at hand is
            # TorchScript, so the warning tells the caller nothing to act on.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated",
                                    category=DeprecationWarning)
            module = torch.jit.load(name, map_location=device)
    except RuntimeError as exc:
        raise ValueError(f"path {name!r} is a TorchScript archive that cannot be loaded: {exc}") from None
    return module.eval()


def _read_state_dict(name):
    try:
        state = torch.load(name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        names = f" (it names {found.group(1)})" if found else ""
        # Not chained: torch's message suggests weights_only=False, which is exactly what must not happen.
        raise ValueError(
            f"path {name!r} holds a pickled Python object{names}, not weights only: loading it could run "
            "arbitrary code, so it is refused. Save the weights instead, torch.save(model.state_dict(), path), "
            "and load them with arch='package.module:Class'; or save a TorchScript archive, "
            "torch.jit.script(model).save(path)."
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise ValueError(f"path {name!r} cannot be read as a torch.save file: truncated or corrupt ({exc}).") from None
    if not isinstance(state, Mapping) or not state:
        raise ValueError(
            f"path {name!r} must hold a state_dict (a dict of parameter name to tensor); "
            f"it holds {'an empty dict' if isinstance(state, Mapping) else type(state).__name__}."
        )
    not_tensors = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        hint = ""
        if any(k in state for k in ("state_dict", "model_state_dict", "model")):
            hint = " It looks like a training checkpoint: save its state_dict on its own."
        raise ValueError(
            f"path {name!r} must hold a state_dict (a dict of parameter name to tensor); the entries "
            f"{_few(map(repr, not_tensors))} are not tensors.{hint}"
        )
    return state


def _build_arch(arch, arch_kwargs):
    """Instantiate ``arch`` with ``arch_kwargs``; returns the module and a label for messages."""
    if arch_kwargs is None:
        kwargs = {}
    elif isinstance(arch_kwargs, str):
        try:
            kwargs = json.loads(arch_kwargs)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"arch_kwargs must be a JSON object such as '{{\"n_classes\": 10}}'; got {arch_kwargs!r} ({exc})."
            ) from None
    elif isinstance(arch_kwargs, Mapping):
        kwargs = dict(arch_kwargs)
    else:
        raise TypeError(f"arch_kwargs must be a dict or a JSON string; got {type(arch_kwargs).__name__}.")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(
            f"arch_kwargs must give keyword arguments, a JSON object such as '{{\"n_classes\": 10}}'; "
            f"got {arch_kwargs!r}."
        )
    if isinstance(arch, str):
        label = repr(arch)
        if not _ARCH_PATH.fullmatch(arch):
            raise ValueError(
                "arch must be an import path 'package.module:Class' (for example "
                f"'backdoorlearn.models:SmallCNN'); got {arch!r}."
            )
        module_name, qualname = arch.split(":")
        try:
            target = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"arch={arch!r}: the module {module_name!r} cannot be imported ({exc}).") from exc
        for part in qualname.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise ValueError(f"arch={arch!r}: the module {module_name!r} has no attribute {qualname!r}.") from None
    elif isinstance(arch, nn.Module):
        raise TypeError(
            "arch must name an architecture (an import path or a class), not a module instance; to load "
            "weights into a module you hold, use backdoorlearn.models.load_weights(module, path)."
        )
    else:
        target, label = arch, getattr(arch, "__qualname__", repr(arch))
    is_module_class = inspect.isclass(target) and issubclass(target, nn.Module)
    if not is_module_class and not inspect.isfunction(target):
        raise TypeError(
            f"arch={label} must be a torch.nn.Module subclass (or a function returning a module); "
            f"it is {target!r}."
        )
    try:
        module = target(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"arch={label} could not be built with arch_kwargs={kwargs!r}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise TypeError(f"arch={label} returned a {type(module).__name__}, not a torch.nn.Module.")
    return module, label


def _check_fits(module, state, name, label):
    """Raise a ValueError listing every key and shape that ``state`` and ``module`` disagree on."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} is {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the architecture"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys (in the architecture, not in the file): {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys (in the file, not in the architecture): {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_few(shapes)}")
    for prefix, origin in (("module.", "nn.DataParallel or DistributedDataParallel"), ("_orig_mod.", "torch.compile")):
        if unexpected and all(k.startswith(prefix) for k in unexpected) and (
            {k[len(prefix):] for k in unexpected} >= set(missing)
        ):
            problems.append(f"the file's keys carry the prefix {prefix!r} of a model wrapped by {origin}: "
                            "save the inner module's state_dict")
            break
    if problems:
        raise ValueError(f"path {name!r} does not fit the architecture arch={label}: " + "; ".join(problems) + ".")


def _few(items, limit=8):
    items = list(items)
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# --------------------------------------------------------------------------- Keras HDF5 (CSAW HackML)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_H5_DATASET_BYTES = 256 * 2**20  # the HackML output kernel is 0.8 MiB; leaves room for 100k+ classes
_MAX_H5_ATTRIBUTE_BYTES = 16 * 2**20
_MAX_H5_DEPTH = 16
_MAX_H5_OBJECTS = 100_000
# Filters built into HDF5 and h5py (deflate, shuffle, fletcher32, szip, nbit, scaleoffset, lzf):
# any other makes HDF5 look for a plugin library to load.
_BUILTIN_H5_FILTERS = {1, 2, 3, 4, 5, 6, 32000}


def _has_hdf5_signature(name):
    # HDF5 puts its signature at byte 0 or, after a user block, at 512, 1024, 2048, ...
    size = os.path.getsize(name)
    offset = 0
    with open(name, "rb") as fh:
        while offset + len(_HDF5_SIGNATURE) <= size:
            fh.seek(offset)
            if fh.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def _check_hdf5_file(h5file, name):
    """Refuse an HDF5 file whose reading could touch other files, load code or exhaust memory.

    Walks every link from the root without following any: soft and external
    links, datasets stored in external files, virtual datasets and filters
    that need a plugin are refused, and every dataset's declared size (shape
    x item size) is capped before anything is read.
    """
    import h5py

    def refuse(where, why):
        raise ValueError(f"{name}: refused as unsafe to read: {where} {why}.")

    count = 0
    stack = [(h5file, "/", 0)]
    while stack:
        group, gpath, depth = stack.pop()
        if depth > _MAX_H5_DEPTH:
            refuse(gpath, f"is nested deeper than {_MAX_H5_DEPTH} groups (a link cycle?)")
        for key in group:
            count += 1
            if count > _MAX_H5_OBJECTS:
                refuse("the file", f"holds more than {_MAX_H5_OBJECTS} objects")
            where = gpath.rstrip("/") + "/" + key
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                refuse(where, f"is an external link to {link.filename}:{link.path}")
            if isinstance(link, h5py.SoftLink):
                refuse(where, f"is a soft link to {link.path}")
            if not isinstance(link, h5py.HardLink):
                refuse(where, f"is a link of an unknown kind ({type(link).__name__})")
            obj = group[key]
            if isinstance(obj, h5py.Group):
                stack.append((obj, where, depth + 1))
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    refuse(where, "is a virtual dataset (it maps data from other files)")
                if obj.external:
                    refuse(where, "keeps its data in external files")
                nbytes = math.prod(obj.shape or ()) * obj.dtype.itemsize
                if nbytes > _MAX_H5_DATASET_BYTES:
                    refuse(where, f"declares shape {obj.shape} of {obj.dtype} ({nbytes} bytes, more than "
                                  f"the {_MAX_H5_DATASET_BYTES} allowed)")
                plist = obj.id.get_create_plist()
                for i in range(plist.get_nfilters()):
                    code = plist.get_filter(i)[0]
                    if code not in _BUILTIN_H5_FILTERS:
                        refuse(where, f"uses HDF5 filter {code}, which would load a plugin")


def _h5_attr(obj, key, name):
    """The attribute ``key`` of ``obj`` (size-capped), or None; Keras splits big ones into key0, key1, ..."""
    if key in obj.attrs:
        parts = [key]
    elif f"{key}0" in obj.attrs:
        parts = []
        while f"{key}{len(parts)}" in obj.attrs:
            parts.append(f"{key}{len(parts)}")
    else:
        return None
    values = []
    for part in parts:
        attr = obj.attrs.get_id(part)
        nbytes = math.prod(attr.shape or ()) * attr.dtype.itemsize
        if nbytes > _MAX_H5_ATTRIBUTE_BYTES:
            raise ValueError(
                f"{name}: refused as unsafe to read: attribute {part!r} of {obj.name} declares {nbytes} bytes "
                f"(more than the {_MAX_H5_ATTRIBUTE_BYTES} allowed)."
            )
        values.append(obj.attrs[part])
    if len(values) == 1:
        return values[0]
    return np.concatenate([np.atleast_1d(v) for v in values])


def _h5_strings(value, what, name):
    """Decode a Keras name-list attribute (fixed or variable-length, bytes or str) to a list of str."""
    items = np.atleast_1d(np.asarray(value, dtype=object)) if value is not None else np.array([], dtype=object)
    if items.ndim != 1:
        raise ValueError(f"{name}: {what} must be a list of names; got an array of shape {items.shape}.")
    names = []
    for item in items:
        if isinstance(item, (bytes, np.bytes_)):
            item = bytes(item).decode("utf-8", errors="replace")
        if not isinstance(item, str):
            raise ValueError(f"{name}: {what} must be a list of names; got {value!r}.")
        names.append(item)
    return names


def load_keras_h5(path, *, n_classes=None, device="cpu"):
    """Read a CSAW HackML Keras ``.h5`` model into a torch :class:`DeepID`, with h5py only.

    The CSAW HackML 2020 challenge ships each backdoored model (BadNet) as
    two Keras 2 files, and both are read here without TensorFlow or Keras:

    - ``*_bd_weights.h5``, written by ``model.save_weights``: the root
      attribute ``layer_names`` lists the layers, each layer's group has a
      ``weight_names`` attribute and the weights as datasets, e.g.
      ``conv_1/conv_1/kernel:0`` and ``conv_1/conv_1/bias:0``;
    - ``*_bd_net.h5``, written by ``model.save``: the same weights under the
      group ``model_weights``, and a root attribute ``model_config``, the
      model's JSON description. The architecture it describes is checked
      against the DeepID (every layer's kind, size, activation, padding,
      data format and the graph joining them) and gives the number of
      classes. The optimizer state is ignored.

    Keras stores convolution kernels as ``(kh, kw, in, out)`` and dense
    kernels as ``(in, out)``; they are transposed to torch's layouts. Keras
    computes channels last, so the Flatten before ``fc_1`` and ``fc_2`` runs
    over ``(H, W, C)``: those two kernels are permuted to the order of
    torch's channels-first flatten. The torch model then gives the Keras
    model's outputs (as logits) on the same images taken channels first.

    Parameters
    ----------
    path : str or path-like
        The ``.h5`` file.
    n_classes : int, default=None
        The number of classes to expect; by default it is read from the file
        (the challenge's models have 1283). A file that disagrees is refused.
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where the loaded module is placed. ``"auto"`` picks CUDA when
        available.

    Returns
    -------
    module : DeepID
        The model in eval mode, returning logits for inputs of shape
        ``(n, 3, 55, 47)`` in [0, 1].

    Raises
    ------
    ImportError
        If h5py is not installed.
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If the file is not HDF5, is truncated, is unsafe to read, or does not
        hold the DeepID: the message names the layer or weight missing, the
        shape found and the shape expected.

    See Also
    --------
    DeepID : The torch module loaded into.
    load_model : One entry point for every model file kind.
    backdoorlearn.datasets.load_hackml_h5 : The challenge's data files.

    Notes
    -----
    The file is treated as hostile: before anything is read, soft and
    external links, datasets kept in external files, virtual datasets and
    filters that would load an HDF5 plugin are refused, and each dataset's
    declared size is capped (256 MiB). Weights must be finite floats.

    A weights-only file carries no description of the layers, so only the
    shapes of its weights are checked; its model is assumed channels last,
    as the challenge's are. Keras files written with the Theano backend
    (flipped convolution kernels) are refused.

    References
    ----------
    .. [1] CSAW HackML 2020, the backdoor-detection challenge of NYU's Cyber
       Security Awareness Week, https://github.com/csaw-hackml/CSAW-HackML-2020.
    .. [2] T. Gu, K. Liu, B. Dolan-Gavitt and S. Garg, "BadNets: Evaluating
       Backdooring Attacks on Deep Neural Networks", IEEE Access 7,
       pp. 47230-47244, 2019.

    Examples
    --------
    A weights-only file in the challenge's layout, here with zero weights
    and 10 classes:

    >>> import os, tempfile
    >>> import h5py, numpy as np, torch
    >>> from backdoorlearn.models import load_keras_h5
    >>> shapes = {"conv_1": (4, 4, 3, 20), "conv_2": (3, 3, 20, 40), "conv_3": (3, 3, 40, 60),
    ...           "conv_4": (2, 2, 60, 80), "fc_1": (1200, 160), "fc_2": (960, 160),
    ...           "output": (160, 10)}
    >>> path = os.path.join(tempfile.mkdtemp(), "bd_weights.h5")
    >>> with h5py.File(path, "w") as f:
    ...     f.attrs["layer_names"] = np.array(list(shapes), dtype="S")
    ...     for layer, shape in shapes.items():
    ...         group = f.create_group(layer)
    ...         group.attrs["weight_names"] = np.array([f"{layer}/kernel:0", f"{layer}/bias:0"], dtype="S")
    ...         _ = group.create_dataset(f"{layer}/kernel:0", data=np.zeros(shape, np.float32))
    ...         _ = group.create_dataset(f"{layer}/bias:0", data=np.zeros(shape[-1], np.float32))
    >>> net = load_keras_h5(path)
    >>> net(torch.zeros(2, 3, 55, 47)).shape
    torch.Size([2, 10])
    """
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            "load_keras_h5 reads HDF5 files with h5py, which is not installed: pip install h5py "
            "(or pip install backdoorlearn[h5])."
        ) from exc
    name = os.fspath(path)
    device = resolve_device(device)
    if not Path(name).is_file():
        raise FileNotFoundError(f"path {name!r} does not exist or is not a file.")
    if not _has_hdf5_signature(name):
        raise ValueError(f"path {name!r} is not an HDF5 file (a Keras .h5 model was expected).")
    try:
        h5file = h5py.File(name, "r")
    except OSError as exc:
        raise ValueError(
            f"path {name!r} is an HDF5 file that cannot be opened: truncated or corrupt ({exc})."
        ) from None
    try:
        with h5file:
            _check_hdf5_file(h5file, name)
            config_classes = None
            if "model_weights" in h5file:
                if not isinstance(h5file["model_weights"], h5py.Group):
                    raise ValueError(f"{name}: 'model_weights' must be a group of layer groups.")
                weights_group = h5file["model_weights"]
                config_classes = _check_keras_config(_h5_attr(h5file, "model_config", name), name)
            elif _h5_attr(h5file, "layer_names", name) is not None:
                weights_group = h5file
            else:
                hint = ""
                if "data" in h5file and "label" in h5file:
                    hint = " It looks like a HackML data file: read it with backdoorlearn.datasets.load_hackml_h5."
                raise ValueError(
                    f"{name} is not a Keras model file: expected a root attribute 'layer_names' (weights "
                    f"saved with save_weights) or a group 'model_weights' (a model saved with save); "
                    f"found keys {sorted(h5file)} and attributes {sorted(h5file.attrs)}.{hint}"
                )
            n_classes = _keras_n_classes(weights_group, name, n_classes, config_classes)
            module = DeepID(n_classes=n_classes)
            weights = _read_keras_weights(weights_group, name, module)
    except (OSError, RuntimeError, KeyError, TypeError) as exc:  # h5py's errors on truncated or odd files
        raise ValueError(f"{name}: reading the HDF5 file failed: truncated or corrupt ({exc}).") from None
    module.load_state_dict(_keras_to_torch(weights, module), strict=True)
    return module.to(device).eval()


# Keras layer -> torch module of DeepID; weights-carrying layers only, in the network's order.
_DEEPID_WEIGHTED = ("conv_1", "conv_2", "conv_3", "conv_4", "fc_1", "fc_2", "output")


def _keras_shapes(module):
    """Expected Keras shapes ``{layer: {"kernel": shape, "bias": shape}}`` of ``module``'s weights."""
    shapes = {}
    for layer in _DEEPID_WEIGHTED:
        weight = getattr(module, layer).weight
        if weight.dim() == 4:  # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)
            kernel = (weight.shape[2], weight.shape[3], weight.shape[1], weight.shape[0])
        else:  # torch (out, in) -> Keras (in, out)
            kernel = (weight.shape[1], weight.shape[0])
        shapes[layer] = {"kernel": tuple(int(s) for s in kernel), "bias": (int(weight.shape[0]),)}
    return shapes


def _keras_n_classes(group, name, n_classes, config_classes):
    import h5py

    found = config_classes
    if found is None and isinstance(group.get("output"), h5py.Group):
        names = _h5_strings(_h5_attr(group["output"], "weight_names", name), "output's weight_names", name)
        for wname in names:
            if _role(wname) == "bias" and wname in group["output"]:
                shape = group["output"][wname].shape
                if len(shape) == 1:
                    found = int(shape[0])
    if n_classes is not None and found is not None and int(n_classes) != found:
        raise ValueError(
            f"{name}: n_classes={n_classes} was requested but the file's output layer has {found} classes."
        )
    if n_classes is None and found is None:
        raise ValueError(
            f"{name}: found no weights for the layer 'output' (expected 'output/kernel:0' and 'output/bias:0')."
        )
    return int(n_classes if n_classes is not None else found)


def _role(weight_name):
    """``"kernel"`` or ``"bias"`` from a Keras weight name such as ``conv_1/kernel:0``."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _read_keras_weights(group, name, module):
    """Read the DeepID's weights from a Keras weights group, checking names, shapes and values."""
    import h5py

    backend = _h5_attr(group, "backend", name)
    if isinstance(backend, (bytes, np.bytes_)):
        backend = bytes(backend).decode("utf-8", errors="replace")
    if isinstance(backend, str) and backend.lower() == "theano":
        raise ValueError(
            f"{name}: written with Keras' Theano backend (flipped convolution kernels), which is not read here."
        )
    raw_names = _h5_attr(group, "layer_names", name)
    if raw_names is None:
        raise ValueError(f"{name}: {group.name} has no 'layer_names' attribute listing the Keras layers.")
    layer_names = _h5_strings(raw_names, "layer_names", name)
    expected = _keras_shapes(module)
    problems, weights = [], {}
    for layer in layer_names:
        if layer in expected:
            continue
        layer_group = group.get(layer)
        if isinstance(layer_group, h5py.Group):
            extra = _h5_strings(_h5_attr(layer_group, "weight_names", name), f"{layer}'s weight_names", name)
            if extra:
                problems.append(f"layer {layer!r} holds weights {extra}, which the DeepID has no place for")
    for layer, shapes in expected.items():
        want = f"kernel {shapes['kernel']} and bias {shapes['bias']}"
        layer_group = group.get(layer)
        if layer not in layer_names or not isinstance(layer_group, h5py.Group):
            problems.append(f"layer {layer!r} is missing (expected {want})")
            continue
        names = _h5_strings(_h5_attr(layer_group, "weight_names", name), f"{layer}'s weight_names", name)
        by_role = {_role(w): w for w in names}
        if not names:
            problems.append(f"layer {layer!r} holds no weights (expected {want})")
            continue
        if sorted(by_role) != ["bias", "kernel"] or len(names) != 2:
            problems.append(f"layer {layer!r} lists the weights {names}; expected {want}")
            continue
        weights[layer] = {}
        for role, wname in by_role.items():
            parts = wname.split("/")
            if wname.startswith("/") or any(p in ("", ".", "..") for p in parts):
                problems.append(f"layer {layer!r} names the weight {wname!r}, which is not a path inside its group")
                continue
            dataset = layer_group.get(wname)
            if not isinstance(dataset, h5py.Dataset):
                problems.append(f"layer {layer!r} lists the weight {wname!r}, which the file does not hold")
                continue
            if tuple(dataset.shape) != shapes[role]:
                problems.append(
                    f"weight {layer}/{wname} has shape {tuple(dataset.shape)}; the DeepID expects {shapes[role]}"
                )
                continue
            if dataset.dtype.kind != "f":
                problems.append(f"weight {layer}/{wname} holds {dataset.dtype}; floats were expected")
                continue
            value = np.asarray(dataset[()], dtype=np.float32)
            if not np.isfinite(value).all():
                problems.append(f"weight {layer}/{wname} holds NaN or inf")
                continue
            weights[layer][role] = value
    if problems:
        raise ValueError(f"{name} does not hold the CSAW HackML DeepID: " + "; ".join(problems) + ".")
    return weights


def _keras_to_torch(weights, module):
    """Keras channels-last weights -> a state_dict for ``module``."""
    state = {}
    for layer, w in weights.items():
        kernel = w["kernel"]
        if kernel.ndim == 4:
            kernel = kernel.transpose(3, 2, 0, 1)
        elif layer in module.flatten_shapes:
            # Keras flattened (H, W, C) maps, torch flattens (C, H, W): reorder the input rows.
            c, h, wd = module.flatten_shapes[layer]
            kernel = kernel.reshape(h, wd, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * h * wd)
        else:
            kernel = kernel.T
        state[f"{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
        state[f"{layer}.bias"] = torch.from_numpy(np.ascontiguousarray(w["bias"], dtype=np.float32))
    return state


# What architecture.py builds, as Keras' model_config records it. Keys absent from a layer's
# config take Keras' defaults (the second value).
_CONV = {"strides": ([1, 1], [1, 1]), "padding": ("valid", "valid"), "dilation_rate": ([1, 1], [1, 1]),
         "activation": ("relu", "linear"), "use_bias": (True, True), "data_format": ("channels_last", None)}
_POOL = {"pool_size": ([2, 2], None), "strides": ([2, 2], None), "padding": ("valid", "valid"),
         "data_format": ("channels_last", None)}
_DENSE = {"units": (160, None), "activation": ("linear", "linear"), "use_bias": (True, True)}
_DEEPID_KERAS = {
    "conv_1": ("Conv2D", {**_CONV, "filters": (20, None), "kernel_size": ([4, 4], None)}),
    "pool_1": ("MaxPooling2D", _POOL),
    "conv_2": ("Conv2D", {**_CONV, "filters": (40, None), "kernel_size": ([3, 3], None)}),
    "pool_2": ("MaxPooling2D", _POOL),
    "conv_3": ("Conv2D", {**_CONV, "filters": (60, None), "kernel_size": ([3, 3], None)}),
    "pool_3": ("MaxPooling2D", _POOL),
    "conv_4": ("Conv2D", {**_CONV, "filters": (80, None), "kernel_size": ([2, 2], None)}),
    "fc_1": ("Dense", _DENSE),
    "fc_2": ("Dense", _DENSE),
}
# layer <- the layer feeding it (Dropout, the identity at inference, is looked through).
_DEEPID_EDGES = {"pool_1": "conv_1", "conv_2": "pool_1", "pool_2": "conv_2", "conv_3": "pool_2",
                 "pool_3": "conv_3", "conv_4": "pool_3"}


def _check_keras_config(raw, name):
    """Check a Keras ``model_config`` against the DeepID; return its number of classes."""
    if raw is None:
        raise ValueError(f"{name} has a 'model_weights' group but no 'model_config' attribute describing the model.")
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw[()]
    if isinstance(raw, (bytes, np.bytes_)):
        raw = bytes(raw).decode("utf-8", errors="replace")
    try:
        config = json.loads(raw)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{name}: the 'model_config' attribute is not JSON ({exc}).") from None
    layer_list = config.get("config", {}).get("layers") if isinstance(config, dict) and isinstance(
        config.get("config"), dict) else None
    if not isinstance(layer_list, list):
        kind = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise ValueError(
            f"{name}: model_config does not describe a Keras functional model (a 'config' with 'layers'); "
            f"found {kind!r}. The CSAW HackML DeepID is a functional model with two branches."
        )
    layers = {}
    for entry in layer_list:
        if isinstance(entry, dict):
            cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
            layers[entry.get("name", cfg.get("name"))] = entry
    problems = []

    def cls(layer):
        return layers[layer].get("class_name") if layer in layers else None

    def cfg(layer):
        c = layers.get(layer, {}).get("config")
        return c if isinstance(c, dict) else {}

    def inputs(layer):
        nodes = layers.get(layer, {}).get("inbound_nodes") or []
        found = []

        def collect(node):
            if isinstance(node, dict):
                if isinstance(node.get("keras_history"), list) and node["keras_history"]:
                    found.append(node["keras_history"][0])  # Keras 3's layout
                for value in node.values():
                    collect(value)
            elif isinstance(node, list):
                if node and isinstance(node[0], str):  # Keras 2: [layer, node_index, tensor_index, kwargs]
                    found.append(node[0])
                else:
                    for value in node:
                        collect(value)

        if len(nodes) != 1:
            return None  # a layer used more than once (or never) is not part of the DeepID's graph
        collect(nodes[0])
        return found

    def source(layer):
        """The layer feeding ``layer``, through any Dropout; None unless exactly one."""
        seen = set()
        feeds = inputs(layer)
        while feeds is not None and len(feeds) == 1 and cls(feeds[0]) == "Dropout" and feeds[0] not in seen:
            seen.add(feeds[0])
            feeds = inputs(feeds[0])
        return feeds[0] if feeds is not None and len(feeds) == 1 else None

    def expect_input(layer, want=None, what=None):
        got = source(layer)
        if not ((want is not None and got == want) or (what is not None and cls(got) == what)):
            problems.append(f"{layer} is fed by {got!r}; expected {want or what!r}")
        return got

    for layer, (kind, fields) in _DEEPID_KERAS.items():
        if layer not in layers:
            problems.append(f"layer {layer!r} ({kind}) is missing")
            continue
        if cls(layer) != kind:
            problems.append(f"{layer} is a Keras {cls(layer)} layer; expected {kind}")
            continue
        for key, (want, default) in fields.items():
            got = cfg(layer).get(key, default)
            if isinstance(got, tuple):
                got = list(got)
            if key == "data_format" and got is None:
                got = "channels_last"  # Keras' default image data format
            if key == "strides" and kind == "MaxPooling2D" and got is None:
                got = cfg(layer).get("pool_size")
            if got != want:
                problems.append(f"{layer} has {key}={got!r}; expected {want!r}")
    if "conv_1" in layers:
        first = expect_input("conv_1", what="InputLayer")
        shape = cfg(first).get("batch_input_shape", cfg(first).get("batch_shape"))
        if cls(first) == "InputLayer" and list(shape or [])[1:] != [55, 47, 3]:
            problems.append(f"the input has shape {shape}; expected [None, 55, 47, 3] (55x47 colour, channels last)")
    for layer, feed in _DEEPID_EDGES.items():
        if layer in layers:
            expect_input(layer, feed)
    for layer, feed in (("fc_1", "pool_3"), ("fc_2", "conv_4")):
        flat = source(layer)
        if cls(flat) != "Flatten" or source(flat) != feed:
            problems.append(f"{layer} must see Flatten({feed}); it is fed by {flat!r} ({cls(flat)})")
        elif cfg(flat).get("data_format") not in (None, "channels_last"):
            problems.append(f"{flat} has data_format={cfg(flat)['data_format']!r}; expected 'channels_last'")
    outputs = config["config"].get("output_layers")
    if isinstance(outputs, list):
        names = [o[0] if isinstance(o, list) and o else o for o in outputs]
        if names != ["output"]:
            problems.append(f"the model's outputs are {names}; expected ['output']")
    n_classes = None
    if cls("output") != "Dense":
        found = "missing" if "output" not in layers else f"a Keras {cls('output')} layer"
        problems.append(f"layer 'output' is {found}; expected Dense")
    else:
        out = cfg("output")
        if out.get("activation", "linear") not in ("softmax", "linear") or not out.get("use_bias", True):
            problems.append(f"output has activation={out.get('activation')!r}, use_bias={out.get('use_bias')!r}; "
                            "expected a softmax (or linear) Dense layer with a bias")
        units = out.get("units")
        if isinstance(units, int) and units >= 2:
            n_classes = units
        else:
            problems.append(f"output has units={units!r}; expected the number of classes (at least 2)")
        relu = source("output")
        if cls(relu) != "Activation" or cfg(relu).get("activation") != "relu":
            problems.append(f"output must see relu(fc_1 + fc_2); it is fed by {relu!r} ({cls(relu)})")
        else:
            add = source(relu)
            feeds = inputs(add) if cls(add) == "Add" else None
            if feeds is None or sorted(feeds) != ["fc_1", "fc_2"]:
                problems.append(f"{relu} must see Add(fc_1, fc_2); it is fed by {add!r} ({cls(add)})")
    if problems:
        raise ValueError(f"{name}: model_config does not describe the CSAW HackML DeepID: " + "; ".join(problems) + ".")
    return n_classes
