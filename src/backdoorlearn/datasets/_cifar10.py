"""CIFAR-10 from its binary or python-version batches.

The binary batches are raw bytes. The python-version batches are pickles, and are never
unpickled: :func:`_read_pickle` walks the pickle's opcode stream itself and builds only
what a CIFAR-10 batch holds, so no function is ever looked up or called, whatever the file
says. Each opcode is handled once, in time and memory proportional to its own operand, so
a batch is read in time linear in its size, within the memory limit.
"""

from __future__ import annotations

import math
import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np

from .._files import DEFAULT_MAX_BYTES, MemoryBudget, open_regular, read_exact
from ._common import _check_subset

__all__ = ["load_cifar10"]

_ROW = 3 * 32 * 32
_N_CLASSES = 10


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle that holds more than plain data (a global, a call, shared structure)."""


class _Symbol:
    """A global the pickle names, never imported: only the patterns below give it a meaning."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _Dtype:
    """``numpy.dtype(descr, False, True)`` as numpy pickles it, built from plain values."""

    __slots__ = ("descr", "dtype")

    def __init__(self, descr):
        self.descr, self.dtype = descr, None


class _Array:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")``, waiting for its BUILD state."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None


# The only globals a pickled uint8 numpy array names (numpy 1 and 2, protocols 0-5).
_RECONSTRUCT = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}
_FROMBUFFER = {"numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer"}
_NDARRAY, _DTYPE = "numpy.ndarray", "numpy.dtype"
_GLOBALS = _RECONSTRUCT | _FROMBUFFER | {_NDARRAY, _DTYPE}

_OP_NAMES = {op.code: op.name for op in pickletools.opcodes}
_ATOMS = (type(None), bool, int, float, bytes, str)
_ITEM_BYTES = 64  # what one stack or container slot costs, counted against the memory limit


def _refuse(path, pos, what):
    raise UnsafePickleError(
        f"{path}: {what} at byte {pos}; a CIFAR-10 python batch holds a dict of bytes, lists of int and one uint8 "
        "array, and nothing else is read from a pickle (it is never unpickled)."
    )


def _array_from_state(path, pos, state):
    """The ndarray of a BUILD state ``(1, shape, dtype, is_fortran, raw bytes)``."""
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[1], tuple)
            and all(type(s) is int and s >= 0 for s in state[1]) and isinstance(state[2], _Dtype)
            and state[2].dtype is not None and type(state[3]) in (bool, int) and isinstance(state[4], bytes)):
        _refuse(path, pos, "an ndarray state that is not (1, shape, dtype, is_fortran, bytes)")
    shape, dtype, fortran, raw = state[1], state[2].dtype, bool(state[3]), state[4]
    return _array_from_bytes(path, pos, raw, dtype, shape, "F" if fortran else "C")


def _array_from_bytes(path, pos, raw, dtype, shape, order):
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise ValueError(
            f"{path}: the array at byte {pos} declares shape {shape} of {dtype} but holds {len(raw)} bytes."
        )
    return np.frombuffer(raw, dtype).reshape(shape, order=order)


def _dtype_from_state(path, pos, dt, state):
    # numpy pickles a plain dtype's state as (3, byteorder, None, None, None, -1, -1, flags)
    orders = ("|", "<", ">", "=")
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
            and state[1] in orders + tuple(o.encode() for o in orders) and state[2:5] == (None, None, None)):
        _refuse(path, pos, "a dtype state other than a plain numeric type's")
    order = state[1].decode() if isinstance(state[1], bytes) else state[1]
    descr = dt.descr.decode("ascii", "replace") if isinstance(dt.descr, bytes) else dt.descr
    dtype = None
    if descr.isascii() and descr.isalnum():
        try:
            dtype = np.dtype(descr)
        except (TypeError, ValueError):
            pass
    if dtype is None or dtype.kind not in "biuf":
        _refuse(path, pos, f"the dtype {descr!r}, which is not a plain numeric type")
    dt.dtype = dtype.newbyteorder("=" if order in ("|", "=") else order)


def _read_pickle(raw, *, path, budget):
    """The value a pickle ``raw`` describes, if it is plain data; never unpickles.

    Accepted: None, bool, int (up to 8 bytes), float, bytes, str, tuples, lists and dicts
    built from them, and numeric numpy arrays in the form numpy pickles them (the globals
    ``_reconstruct``, ``ndarray``, ``dtype`` and ``_frombuffer`` are recognised by name and
    their REDUCE and BUILD interpreted here; nothing is imported or called). The memo may
    recall an atom but not a container, so no structure is shared (a "billion laughs"
    needs shared lists). Everything else (other globals, EXT*, INST, OBJ, NEWOBJ,
    persistent ids, out-of-band buffers) is refused with :class:`UnsafePickleError`.
    """
    stack, marks, memo = [], [], {}
    pos, end = 0, len(raw)

    def take(n):
        nonlocal pos
        if pos + n > end:
            raise ValueError(f"{path} is truncated: the pickle ends inside an opcode at byte {pos}.")
        chunk = raw[pos:pos + n]
        pos += n
        return chunk

    def line():
        nonlocal pos
        stop = raw.find(b"\n", pos, pos + 256)
        if stop < 0:
            raise ValueError(f"{path}: malformed pickle: no end of line after byte {pos}.")
        text = raw[pos:stop]
        pos = stop + 1
        return text

    def push(value, nbytes=0):
        budget.charge(_ITEM_BYTES + nbytes, f"{path}: the pickle's contents")
        stack.append(value)

    def pop_mark():
        if not marks:
            raise ValueError(f"{path}: malformed pickle: no MARK before byte {pos}.")
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    def pop():
        if len(stack) <= (marks[-1] if marks else 0):
            raise ValueError(f"{path}: malformed pickle: stack underflow at byte {pos}.")
        return stack.pop()

    def text(data):
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: malformed pickle: invalid UTF-8 text at byte {pos}.") from None

    def symbol(module, name, at):
        full = f"{module}.{name}"
        if full not in _GLOBALS:
            raise UnsafePickleError(
                f"{path}: refusing to load {full} (at byte {at}): backdoorlearn only reads plain data from pickle "
                "files, and a CIFAR-10 batch names no other global than numpy's array reconstructors."
            )
        push(_Symbol(full))

    while True:
        at = pos
        code = take(1)
        op = code.decode("latin-1")
        if op == "\x80":  # PROTO
            if take(1)[0] > 5:
                raise ValueError(f"{path}: unsupported pickle protocol.")
        elif op == "\x95":  # FRAME: its contents follow inline
            take(8)
        elif op == ".":  # STOP
            if len(stack) != 1 or marks:
                raise ValueError(f"{path}: malformed pickle: STOP at byte {at} with {len(stack)} values on the stack.")
            return stack[0]
        elif op == "(":
            marks.append(len(stack))
        elif op == "N":
            push(None)
        elif op == "\x88":
            push(True)
        elif op == "\x89":
            push(False)
        elif op == "J":
            push(struct.unpack("<i", take(4))[0])
        elif op == "K":
            push(take(1)[0])
        elif op == "M":
            push(struct.unpack("<H", take(2))[0])
        elif op == "\x8a":  # LONG1
            n = take(1)[0]
            if n > 8:
                _refuse(path, at, f"an integer of {n} bytes")
            push(int.from_bytes(take(n), "little", signed=True))
        elif op == "I":  # INT (protocol 0), also True/False as 01/00
            digits = line()
            if digits in (b"00", b"01"):
                push(digits == b"01")
            else:
                try:
                    push(int(digits))
                except ValueError:
                    raise ValueError(f"{path}: malformed pickle: bad INT at byte {at}.") from None
        elif op == "G":
            push(struct.unpack(">d", take(8))[0])
        elif op in "UTCB\x8e\x96":  # SHORT_BINSTRING BINSTRING SHORT_BINBYTES BINBYTES BINBYTES8 BYTEARRAY8
            fmt, n = {"U": ("<B", 1), "C": ("<B", 1), "T": ("<i", 4), "B": ("<I", 4)}.get(op, ("<Q", 8))
            (size,) = struct.unpack(fmt, take(n))
            if size < 0:
                raise ValueError(f"{path}: malformed pickle: negative length at byte {at}.")
            push(bytes(take(size)), size)
        elif op in "X\x8c\x8d":  # BINUNICODE SHORT_BINUNICODE BINUNICODE8
            fmt, n = {"X": ("<I", 4), "\x8c": ("<B", 1)}.get(op, ("<Q", 8))
            (size,) = struct.unpack(fmt, take(n))
            push(text(take(size)), size)
        elif op == ")":
            push(())
        elif op == "]":
            push([])
        elif op == "}":
            push({})
        elif op in "\x85\x86\x87":  # TUPLE1 TUPLE2 TUPLE3
            n = "\x85\x86\x87".index(op) + 1
            items = [pop() for _ in range(n)][::-1]
            stack.append(tuple(items))
        elif op == "t":
            stack.append(tuple(pop_mark()))
        elif op == "l":
            stack.append(pop_mark())
        elif op == "d":
            items = pop_mark()
            stack.append({})
            _set_items(path, at, stack[-1], items)
        elif op == "a":
            value = pop()
            target = pop()
            if not isinstance(target, list):
                raise ValueError(f"{path}: malformed pickle: APPEND to a non-list at byte {at}.")
            target.append(value)
            stack.append(target)
        elif op == "e":
            items = pop_mark()
            if not stack or not isinstance(stack[-1], list):
                raise ValueError(f"{path}: malformed pickle: APPENDS to a non-list at byte {at}.")
            stack[-1].extend(items)
        elif op == "s":
            value = pop()
            key = pop()
            if not stack or not isinstance(stack[-1], dict):
                raise ValueError(f"{path}: malformed pickle: SETITEM on a non-dict at byte {at}.")
            _set_items(path, at, stack[-1], [key, value])
        elif op == "u":
            items = pop_mark()
            if not stack or not isinstance(stack[-1], dict):
                raise ValueError(f"{path}: malformed pickle: SETITEMS on a non-dict at byte {at}.")
            _set_items(path, at, stack[-1], items)
        elif op in "qrp\x94":  # BINPUT LONG_BINPUT PUT MEMOIZE
            if not stack:
                raise ValueError(f"{path}: malformed pickle: nothing to memoize at byte {at}.")
            if op == "q":
                key = take(1)[0]
            elif op == "r":
                key = struct.unpack("<I", take(4))[0]
            elif op == "p":
                key = line()
            else:
                key = len(memo)
            memo[key] = stack[-1]
            budget.charge(_ITEM_BYTES, f"{path}: the pickle's memo")
        elif op in "hjg":  # BINGET LONG_BINGET GET
            key = take(1)[0] if op == "h" else struct.unpack("<I", take(4))[0] if op == "j" else line()
            if key not in memo:
                raise ValueError(f"{path}: malformed pickle: memo key {key!r} missing at byte {at}.")
            value = memo[key]
            if not isinstance(value, (_ATOMS, _Symbol)) and not (isinstance(value, _Dtype) and value.dtype is not None):
                _refuse(path, at, f"memo reuse of a {type(value).__name__} (shared structure)")
            push(value)
        elif op == "c":  # GLOBAL
            module, name = text(line()), text(line())
            symbol(module, name, at)
        elif op == "\x93":  # STACK_GLOBAL
            name, module = pop(), pop()
            if not (isinstance(module, str) and isinstance(name, str)):
                _refuse(path, at, "STACK_GLOBAL on non-strings")
            symbol(module, name, at)
        elif op == "R":  # REDUCE, interpreted for the three reconstructors only
            args, func = pop(), pop()
            name = func.name if isinstance(func, _Symbol) else None
            if name in _RECONSTRUCT and isinstance(args, tuple) and len(args) == 3 \
                    and isinstance(args[0], _Symbol) and args[0].name == _NDARRAY and args[1] == (0,) \
                    and args[2] in (b"b", "b"):
                stack.append(_Array())
            elif name == _DTYPE and isinstance(args, tuple) and len(args) == 3 \
                    and isinstance(args[0], (str, bytes)) and len(args[0]) <= 8 and args[1:] in ((0, 1), (False, True)):
                stack.append(_Dtype(args[0]))
            elif name in _FROMBUFFER and isinstance(args, tuple) and len(args) == 4 \
                    and isinstance(args[0], bytes) and isinstance(args[1], _Dtype) and args[1].dtype is not None \
                    and isinstance(args[2], tuple) and all(type(s) is int and s >= 0 for s in args[2]) \
                    and args[3] in ("C", "F"):
                stack.append(_array_from_bytes(path, at, args[0], args[1].dtype, args[2], args[3]))
            else:
                _refuse(path, at, f"a call of {name or type(func).__name__}")
        elif op == "b":  # BUILD, for the array and dtype placeholders only
            state = pop()
            if not stack:
                raise ValueError(f"{path}: malformed pickle: BUILD with nothing to build at byte {at}.")
            target = stack[-1]
            if isinstance(target, _Array) and target.array is None:
                stack[-1] = _array_from_state(path, at, state)
            elif isinstance(target, _Dtype) and target.dtype is None:
                _dtype_from_state(path, at, target, state)
            else:
                _refuse(path, at, f"BUILD on a {type(target).__name__}")
        else:
            _refuse(path, at, f"the opcode {_OP_NAMES.get(op, repr(code))}")


def _set_items(path, at, target, items):
    if len(items) % 2:
        raise ValueError(f"{path}: malformed pickle: odd number of dict items at byte {at}.")
    for key, value in zip(items[::2], items[1::2]):
        if not isinstance(key, (bytes, str, int)):
            _refuse(path, at, f"a dict key of type {type(key).__name__}")
        target[key] = value


def _key(batch, name):
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    return None


def _read_python_batch(path, budget):
    f, size = open_regular(path, what="the CIFAR-10 batch")
    with f:
        budget.charge(size, f"{path}: the batch file")
        raw = bytes(read_exact(f, size, path=path, what="the batch"))
    batch = _read_pickle(raw, path=path, budget=budget)
    if not isinstance(batch, dict) or _key(batch, "data") is None or _key(batch, "labels") is None:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: expected a dict with b'data' and b'labels'.")
    data, labels = _key(batch, "data"), _key(batch, "labels")
    if isinstance(data, bytes):
        data = np.frombuffer(data, np.uint8)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % _ROW or data.size == 0 \
            or data.ndim not in (1, 2, 4) or (data.ndim > 1 and data[0].size != _ROW):
        raise ValueError(
            f"{path}: b'data' must hold uint8 images of 3 x 32 x 32 = {_ROW} values each (an array of shape "
            f"(n, {_ROW}) or bytes); got {_describe(data)}."
        )
    n = data.size // _ROW
    if not isinstance(labels, list) or len(labels) != n or not all(type(v) is int for v in labels):
        got = f"a list of {len(labels)}" if isinstance(labels, list) else _describe(labels)
        raise ValueError(f"{path}: b'labels' must be a list of {n} integers, one per image; got {got}.")
    return data.reshape(n, 3, 32, 32), np.array(labels, np.int64)


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"a {type(value).__name__}" + (f" of {len(value)} bytes" if isinstance(value, bytes) else "")


def _read_binary_batch(path, budget):
    f, size = open_regular(path, what="the CIFAR-10 batch")
    row = 1 + _ROW
    with f:
        if size % row or size == 0:
            raise ValueError(
                f"{path} is not a CIFAR-10 binary batch: {size} bytes is not a positive multiple of {row} "
                "(a label byte and 3 x 32 x 32 pixel bytes per image)."
            )
        budget.charge(size, f"{path}: the batch file")
        arr = np.empty(size, np.uint8)
        read_exact(f, size, path=path, what="the batch", out=arr)
    arr = arr.reshape(-1, row)
    return arr[:, 1:].reshape(-1, 3, 32, 32), arr[:, 0].astype(np.int64)


def load_cifar10(directory, subset="train", *, max_bytes=DEFAULT_MAX_BYTES):
    """Load CIFAR-10 from its batches in ``directory`` (binary or python version).

    The binary version (``data_batch_1.bin`` ... ``data_batch_5.bin``,
    ``test_batch.bin``) is raw bytes. The python version (``data_batch_1``
    ... ``test_batch``) is a pickle, which is never unpickled: its opcodes are
    read by a parser of backdoorlearn's own that builds only what a batch holds
    (a dict of bytes, lists of int and one uint8 array), so a tampered file can
    neither run code nor blow up into shared structure.

    Parameters
    ----------
    directory : str or path-like
        The folder holding the batches (``cifar-10-batches-bin`` or
        ``cifar-10-batches-py`` as extracted from the archive). Each batch
        may be binary or python, the binary one read when both are present.
    subset : {"train", "test"}, default="train"
        ``"train"`` reads the five training batches (all five must be
        present), ``"test"`` the test batch.
    max_bytes : int, default=2147483648 (2 GiB)
        The most memory, in bytes, the loader may use for the arrays it reads
        and returns (the training set needs about 800 MB). Each batch's size
        is checked against it before the batch is read.

    Returns
    -------
    X : ndarray of shape (n, 3, 32, 32), float32 in [0, 1]
        The images, channels first, the bytes divided by 255, in the
        order of the batches.
    y : ndarray of shape (n,), int64 in [0, 9]
        The class of each image (CIFAR-10's label order: airplane,
        automobile, bird, cat, deer, dog, frog, horse, ship, truck).

    Raises
    ------
    FileNotFoundError
        If a batch is missing (all are named).
    ValueError
        If a batch is truncated, malformed, holds labels outside 0-9, a
        different number of labels than images, or more than ``max_bytes``.
    pickle.UnpicklingError
        If a python batch holds anything but plain data (a global, a call,
        shared structure); the exception is also a ``ValueError``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from backdoorlearn.datasets import load_cifar10
    >>> d = tempfile.mkdtemp()
    >>> rows = np.zeros((2, 3073), np.uint8); rows[:, 0] = [4, 9]
    >>> _ = open(os.path.join(d, "test_batch.bin"), "wb").write(rows.tobytes())
    >>> X, y = load_cifar10(d, subset="test")
    >>> X.shape, y.tolist()
    ((2, 3, 32, 32), [4, 9])
    """
    _check_subset(subset)
    budget = MemoryBudget(max_bytes, caller="load_cifar10")
    names = [f"data_batch_{i}" for i in range(1, 6)] if subset == "train" else ["test_batch"]
    found, missing = [], []
    for name in names:
        binary, python = Path(directory) / f"{name}.bin", Path(directory) / name
        if binary.exists():
            found.append((binary, _read_binary_batch))
        elif python.exists():
            found.append((python, _read_python_batch))
        else:
            missing.append(name)
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 {subset} batch(es) missing in {os.fspath(directory)}: {', '.join(missing)} (looked for "
            f"NAME.bin and NAME); the {subset} split needs {', '.join(names)}."
        )
    parts = []
    for path, read in found:
        images, labels = read(path, budget)
        if len(labels) != len(images):
            raise ValueError(f"{path} holds {len(images)} images but {len(labels)} labels.")
        bad = labels[(labels < 0) | (labels >= _N_CLASSES)]
        if bad.size:
            raise ValueError(f"{path}: CIFAR-10 labels lie in 0-9; got {bad[:5].tolist()}.")
        parts.append((images, labels))
    n = sum(len(p[1]) for p in parts)
    budget.charge(n * _ROW * 4 + n * 8, f"the {n} CIFAR-10 images as float32")
    X = np.empty((n, 3, 32, 32), np.float32)
    start = 0
    for images, _ in parts:
        np.divide(images, np.float32(255), out=X[start:start + len(images)], dtype=np.float32)
        start += len(images)
    return X, np.concatenate([p[1] for p in parts])
