"""Writing a command's outputs all at once: nothing half-written is left behind on failure."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["check_output_dir", "sha256_path", "staged_output", "to_jsonable", "write_json_atomic",
           "write_text_atomic"]


def check_output_dir(out, *, name="out", must_be_empty=False):
    """Refuse, before any work, an output path that cannot become a folder of results."""
    path = Path(os.fspath(out))
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} must be a folder for the results; {os.fspath(out)!r} is an existing file.")
    if must_be_empty and path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{name} {os.fspath(out)!r} already exists and is not empty; give a new folder.")
    return path


@contextlib.contextmanager
def staged_output(out, *, name="out", must_be_empty=False):
    """Yield a temporary folder; on success its entries move into ``out``, on failure it is removed.

    The temporary folder sits beside ``out`` when its parent exists, so a new
    ``out`` appears in one rename; into an existing ``out`` each entry moves
    with ``os.replace`` (an existing entry of the same name is replaced, the
    others are left alone).
    """
    path = check_output_dir(out, name=name, must_be_empty=must_be_empty)
    parent = path.parent if path.parent.is_dir() else None
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=parent))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it private; the results get the usual permissions
    try:
        yield stage
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            if parent is not None:
                os.replace(stage, path)
                return
            shutil.move(os.fspath(stage), os.fspath(path))
            return
        for entry in stage.iterdir():
            target = path / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            if parent is not None:
                os.replace(entry, target)
            else:
                shutil.move(os.fspath(entry), os.fspath(target))
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def to_jsonable(value):
    """Numpy scalars and arrays to Python numbers and lists; NaN and infinity to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return os.fspath(value)
    return value


def write_text_atomic(text, path):
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half-written file."""
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ValueError(f"the output {os.fspath(path)!r} is a folder; give a file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(data, path):
    """Write ``data`` as strict JSON (see :func:`to_jsonable`) to ``path``, atomically."""
    write_text_atomic(json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n", path)


def sha256_path(path):
    """SHA-256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    path = Path(os.fspath(path))
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            _update_file(h, f)
    else:
        _update_file(h, path)
    return h.hexdigest()


def _update_file(h, path):
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
