"""Reading files from strangers: the checks every loader of backdoorlearn shares.

A data set, a trigger or a model file downloaded from a third party is the threat model
itself (DESIGN.md, "Data, tests and what must not happen"), so every reader treats the file
it is given as hostile:

- it opens regular files only (:func:`open_regular`): a FIFO would block the reader forever
  and a device such as ``/dev/zero`` never ends;
- it checks every size the file declares against a memory limit *before* reading the data
  (:class:`MemoryBudget`), and never trusts a declared size it cannot bound (a compressed
  stream is inflated in bounded steps: :func:`read_exact` on a ``gzip`` stream,
  :func:`h5_dataset` for HDF5 chunks);
- a file name found inside a file (a CSV's ``Filename``) must stay inside its folder once
  symbolic links are resolved (:func:`contained_path`);
- an HDF5 dataset is read only when it is stored in the file itself (:func:`h5_dataset`);
- an ``.npz`` member is read only after its header declared a numeric array of a size
  the caller accepts (:func:`npy_header`, :func:`read_npy`); pickles are never read.

Errors are ``ValueError`` (``FileNotFoundError`` for a missing file) and name the file,
what was expected and what was found.
"""

from __future__ import annotations

import math
import numbers
import os
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MemoryBudget",
    "check_max_bytes",
    "contained_path",
    "format_bytes",
    "h5_dataset",
    "npy_header",
    "open_h5",
    "open_npz",
    "open_regular",
    "read_exact",
    "read_npy",
]

#: The default memory limit of the loaders: the full MNIST, CIFAR-10, GTSRB and CSAW HackML
#: files fit well below it, a small file that declares gigabytes does not.
DEFAULT_MAX_BYTES = 2 * 2**30

def format_bytes(n):
    """``n`` bytes in words, e.g. ``'3758096384 bytes (3.5 GiB)'``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n} bytes ({n / size:.1f} {unit})"
    return f"{n} bytes"


def check_max_bytes(max_bytes, *, caller):
    """``max_bytes`` as an int, or a ValueError naming ``caller``."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral) or max_bytes < 1:
        raise ValueError(f"max_bytes in {caller} must be a positive integer (a number of bytes); got {max_bytes!r}.")
    return int(max_bytes)


class MemoryBudget:
    """What a loader may still allocate: each declared size is charged before it is read.

    Parameters
    ----------
    max_bytes : int
        The limit (validated with :func:`check_max_bytes`).
    caller : str
        The public function, named in errors.

    Examples
    --------
    >>> budget = MemoryBudget(1000, caller="load_x")
    >>> budget.charge(600, "x.bin: the images")
    >>> budget.charge(600, "x.bin: the labels")
    Traceback (most recent call last):
    ...
    ValueError: x.bin: the labels need 600 bytes, but load_x may use 400 bytes more ...
    """

    def __init__(self, max_bytes, *, caller):
        self.max_bytes = check_max_bytes(max_bytes, caller=caller)
        self.caller = caller
        self.used = 0

    @property
    def left(self):
        return self.max_bytes - self.used

    def charge(self, nbytes, what):
        """Count ``nbytes`` (a Python int: declared sizes never overflow) or refuse them."""
        if nbytes > self.left:
            raise ValueError(
                f"{what} need {format_bytes(nbytes)}, but {self.caller} may use {format_bytes(self.left)} more "
                f"(max_bytes={self.max_bytes}); nothing more was read. Raise max_bytes if you trust the file."
            )
        self.used += nbytes


def _kind(mode):
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def open_regular(path, *, what="file", max_size=None):
    """Open ``path`` for reading in binary mode if it is a regular file; return ``(file, size)``.

    The file is opened without blocking and checked with ``fstat`` on the open descriptor,
    so a FIFO, a device, a socket or a folder (or a symbolic link to one) is refused before
    a byte is read, and the size checked is the size of the file actually read.

    Parameters
    ----------
    path : str or path-like
    what : str, default="file"
        How errors name the file (e.g. ``"path"``, the argument).
    max_size : int, default=None
        Refuse a larger file (its size in bytes).

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "a.bin")
    ...     _ = open(p, "wb").write(b"abc")
    ...     f, size = open_regular(p)
    ...     with f:
    ...         data = f.read()
    >>> data, size
    (b'abc', 3)
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {name!r} does not exist.") from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open {what} {name!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} {name!r} is a {_kind(st.st_mode)}, not a regular file: refusing to read it.")
        if max_size is not None and st.st_size > max_size:
            raise ValueError(
                f"{what} {name!r} holds {format_bytes(st.st_size)}, more than the {format_bytes(max_size)} allowed."
            )
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_exact(f, nbytes, *, path, what, out=None):
    """Read exactly ``nbytes`` from the stream ``f`` (into ``out`` when given), in bounded steps.

    On a ``gzip`` stream each step inflates at most 16 MiB, so a compression bomb costs
    no more than what the caller agreed to read. Returns ``out`` (a writable buffer of
    ``nbytes`` bytes) or a new ``bytearray``.

    Examples
    --------
    >>> import gzip, io
    >>> stream = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(b"\\0" * 10**6)))
    >>> len(read_exact(stream, 4, path="x.gz", what="the header"))
    4
    >>> read_exact(io.BytesIO(b"ab"), 4, path="x.bin", what="the header")
    Traceback (most recent call last):
    ...
    ValueError: x.bin is truncated: the header needs 4 bytes but the file ends after 2.
    """
    buffer = bytearray(nbytes) if out is None else out
    view = memoryview(buffer).cast("B")
    done = 0
    while done < nbytes:
        try:
            n = f.readinto(view[done:done + 2**24])
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{path} is corrupt: reading {what} failed ({exc}).") from None
        if not n:
            raise ValueError(f"{path} is truncated: {what} needs {nbytes} bytes but the file ends after {done}.")
        done += n
    return buffer


def contained_path(folder, name, *, source):
    """``folder / name``, refused unless it stays inside ``folder`` with symbolic links resolved.

    ``name`` is a file name read from a file (``source``, named in errors): an absolute
    path, a drive, a ``..`` component or a link that resolves outside ``folder`` is
    refused, whatever the platform's separator.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     contained_path(d, "a.ppm", source="GT.csv").name
    'a.ppm'
    >>> contained_path("/data", "../../etc/passwd", source="GT.csv")
    Traceback (most recent call last):
    ...
    ValueError: GT.csv lists '../../etc/passwd', which is not a file name inside /data: ...
    """
    name = str(name)
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if "\0" in name or posix.is_absolute() or windows.anchor or ".." in posix.parts or ".." in windows.parts:
        raise ValueError(
            f"{source} lists {name!r}, which is not a file name inside {folder}: absolute paths, drives and "
            "'..' are refused."
        )
    candidate = Path(folder) / name
    real_folder, real = os.path.realpath(folder), os.path.realpath(candidate)
    if os.path.commonpath([real_folder, real]) != real_folder:
        raise ValueError(
            f"{source} lists {name!r}, which leads outside {folder} (a symbolic link to {real}): refusing to read it."
        )
    return candidate


# --------------------------------------------------------------------------------------------------- .npz


def open_npz(path, *, what="path", max_size=None):
    """Open the ``.npz`` archive ``path`` (a regular file of at most ``max_size`` bytes) as a ZipFile."""
    f, _ = open_regular(path, what=what, max_size=max_size)
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        f.close()
        raise ValueError(f"{what} {os.fspath(path)!r} is not an .npz archive (a zip of .npy arrays): {exc}.") from None


def _open_npy(zf, member, *, path):
    import numpy as np

    try:
        info = zf.getinfo(member)
    except KeyError:
        raise ValueError(f"{path} has no member {member!r}.") from None
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # zipfile inflates bzip2 and lzma members without an output bound
        raise ValueError(f"{path}: {member!r} is compressed with zip method {info.compress_type}; only stored and "
                         "deflated members (what numpy writes) are read.")
    try:
        fp = zf.open(info)
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, SyntaxError) as exc:
        raise ValueError(f"{path}: {member!r} is not a readable .npy array ({exc}).") from None
    if dtype.hasobject or dtype.kind not in "biufSU" or dtype.subdtype is not None or dtype.names is not None:
        fp.close()
        raise ValueError(
            f"{path}: {member!r} holds {dtype} values; only plain numbers and strings are read (never objects or "
            "pickles)."
        )
    return fp, tuple(shape), dtype, fortran


def npy_header(zf, member, *, path):
    """``(shape, dtype)`` that the member ``member`` of the open ``.npz`` ``zf`` declares.

    Only the header is read. Object arrays (which numpy stores as pickles), structured
    types and members compressed other than by deflate are refused.

    Examples
    --------
    >>> import io, zipfile
    >>> import numpy as np
    >>> buffer = io.BytesIO()
    >>> np.savez(buffer, mask=np.zeros((2, 3), np.float32))
    >>> npy_header(zipfile.ZipFile(buffer), "mask.npy", path="t.npz")
    ((2, 3), dtype('float32'))
    """
    fp, shape, dtype, _ = _open_npy(zf, member, path=path)
    fp.close()
    return shape, dtype


def read_npy(zf, member, *, path, max_bytes):
    """The array of the member ``member``, read in bounded steps once its header is checked.

    ``max_bytes`` bounds what the header may declare (shape x item size); the data are then
    read exactly, and the member must end there (which also verifies its CRC).
    """
    import numpy as np

    fp, shape, dtype, fortran = _open_npy(zf, member, path=path)
    with fp:
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > max_bytes:
            raise ValueError(
                f"{path}: {member!r} declares shape {shape} of {dtype}, {format_bytes(nbytes)}, more than "
                f"max_bytes={max_bytes} allows; nothing was read."
            )
        data = np.empty(nbytes, np.uint8)
        read_exact(fp, nbytes, path=f"{path}: {member!r}", what=f"the array of shape {shape} of {dtype}", out=data)
        try:
            extra = fp.read(1)
        except (OSError, zipfile.BadZipFile, zlib.error) as exc:
            raise ValueError(f"{path}: {member!r} is corrupt ({exc}).") from None
        if extra:
            raise ValueError(f"{path}: {member!r} holds more than the array of shape {shape} its header declares.")
    return data.view(dtype).reshape(shape, order="F" if fortran else "C")


# --------------------------------------------------------------------------------------------------- HDF5

# HDF5's own filters whose output this module can bound: deflate is inflated here first, in
# bounded steps (HDF5's deflate filter grows its buffer until the stream ends, so a chunk of a
# few KB can make it allocate gigabytes); shuffle and fletcher32 keep the size. Any other
# filter (szip, nbit, scale-offset, lzf, plugins loaded from HDF5_PLUGIN_PATH) is refused.
_H5_DEFLATE, _H5_SHUFFLE, _H5_FLETCHER32 = 1, 2, 3
_H5_FILTERS = {_H5_DEFLATE: "deflate (gzip)", _H5_SHUFFLE: "shuffle", _H5_FLETCHER32: "fletcher32"}
# A chunked dataset of a million tiny unallocated chunks costs minutes to read from a file of
# a few KB; real files use far fewer, larger chunks.
_H5_MAX_CHUNKS = 2**20


def open_h5(path, *, what="path"):
    """Open the HDF5 file ``path`` for reading; refuse anything else with a clear error.

    Returns an open ``h5py.File``. Read its datasets through :func:`h5_dataset` only.
    """
    import h5py

    name = os.fspath(path)
    f, _ = open_regular(path, what=what)
    f.close()
    if not h5py.is_hdf5(name):
        raise ValueError(f"{what} {name!r} is not an HDF5 file.")
    try:
        return h5py.File(name, "r")
    except OSError as exc:
        raise ValueError(f"{what} {name!r} is not a readable HDF5 file (truncated or corrupt): {exc}") from None


def h5_dataset(group, name, *, path, max_bytes):
    """The numeric dataset ``name`` of an open h5py group, once it is safe to read.

    Each component of ``name`` (``"a/b/kernel:0"``) must be a hard link: soft and external
    links, which can lead to another object or another file, are not followed. The dataset
    must be stored in the file itself (no external storage, not a virtual dataset), hold
    numbers (no strings, references, compound or object types), declare at most
    ``max_bytes`` bytes, and use only the deflate, shuffle and fletcher32 filters; each
    deflated chunk is inflated here in bounded steps first and must not exceed its chunk.

    Parameters
    ----------
    group : h5py.Group or h5py.File
    name : str
        The dataset's path below ``group``.
    path : str
        The file, named in errors.
    max_bytes : int
        The most bytes the dataset may declare (shape x item size).

    Returns
    -------
    dataset : h5py.Dataset

    Raises
    ------
    ValueError
        If ``name`` is missing or fails one of the checks above; the message names the
        file, the dataset and the reason.

    Examples
    --------
    >>> import os, tempfile
    >>> import h5py, numpy as np
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "a.h5")
    ...     with h5py.File(p, "w") as f:
    ...         _ = f.create_dataset("w/kernel", data=np.ones((2, 3)), compression="gzip")
    ...     with h5py.File(p, "r") as f:
    ...         h5_dataset(f, "w/kernel", path=p, max_bytes=1000).shape
    (2, 3)
    """
    import h5py

    parts = [part for part in name.split("/") if part]
    node = group
    for i, part in enumerate(parts):
        where = "/".join(parts[: i + 1])
        link = node.get(part, getlink=True)
        if link is None:
            raise ValueError(f"{path} has no {where!r}.")
        if not isinstance(link, h5py.HardLink):
            target = getattr(link, "filename", None)
            target = f" to {target}:{link.path}" if target else f" to {getattr(link, 'path', '?')}"
            raise ValueError(
                f"{path}: {where!r} is an HDF5 {type(link).__name__}{target}: refusing to follow it (a link can "
                "lead to another object or another file); expected the dataset itself."
            )
        node = node[part]
    dset = node
    if not isinstance(dset, h5py.Dataset):
        raise ValueError(f"{path}: {name!r} is a {type(dset).__name__}, expected a dataset.")
    if dset.is_virtual:
        raise ValueError(f"{path}: {name!r} is a virtual dataset (it maps other files): refusing to read it.")
    if dset.external:
        files = ", ".join(sorted({os.fsdecode(entry[0]) for entry in dset.external}))
        raise ValueError(
            f"{path}: {name!r} keeps its data in external file(s) {files}: refusing to read outside the file."
        )
    dtype = dset.dtype
    if dtype.kind not in "biuf" or dtype.subdtype is not None or dtype.names is not None:
        raise ValueError(f"{path}: {name!r} must hold numbers; got HDF5 type {dtype}.")
    if dset.shape is None:
        raise ValueError(f"{path}: {name!r} holds no data (an empty dataspace).")
    nbytes = math.prod(dset.shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise ValueError(
            f"{path}: {name!r} declares shape {dset.shape} of {dtype}, {format_bytes(nbytes)}, more than "
            f"max_bytes={max_bytes} allows; nothing was read."
        )
    plist = dset.id.get_create_plist()
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    unknown = [c for c in codes if c not in _H5_FILTERS]
    if unknown:
        raise ValueError(
            f"{path}: {name!r} uses the HDF5 filter(s) {unknown}; only {', '.join(_H5_FILTERS.values())} are read, "
            "because the output of other filters cannot be bounded before reading."
        )
    if _H5_DEFLATE in codes and any(c != _H5_FLETCHER32 for c in codes[codes.index(_H5_DEFLATE) + 1:]):
        raise ValueError(f"{path}: {name!r} applies a filter after deflate, which is not supported.")
    if dset.chunks is not None:
        n_chunks = math.prod(-(-s // c) for s, c in zip(dset.shape, dset.chunks))
        if n_chunks > _H5_MAX_CHUNKS:
            raise ValueError(
                f"{path}: {name!r} is cut into {n_chunks} chunks of shape {dset.chunks}; at most {_H5_MAX_CHUNKS} "
                "are read."
            )
        if _H5_DEFLATE in codes:
            _check_h5_deflate_chunks(dset, codes, path=path, name=name)
    return dset


def _check_h5_deflate_chunks(dset, codes, *, path, name):
    """Inflate each stored chunk in bounded steps: none may exceed the chunk's own size."""
    chunk_bytes = math.prod(dset.chunks) * dset.dtype.itemsize
    deflate = codes.index(_H5_DEFLATE)
    deflate_bit = 1 << deflate
    # fletcher32 appends a 4-byte checksum: after deflate (h5py's order) it is stripped before
    # inflating, before deflate it is part of what inflates
    fletcher = codes.index(_H5_FLETCHER32) if _H5_FLETCHER32 in codes else None
    fletcher_bit = 1 << fletcher if fletcher is not None and fletcher > deflate else 0
    if fletcher is not None and fletcher < deflate:
        chunk_bytes += 4
    offsets = []
    dset.id.chunk_iter(lambda info: offsets.append(info.chunk_offset))
    for offset in offsets:
        mask, raw = dset.id.read_direct_chunk(offset)
        if fletcher_bit and not mask & fletcher_bit:
            raw = raw[:-4]
        if mask & deflate_bit:
            size = len(raw)
        else:
            inflate = zlib.decompressobj()
            try:
                size = len(inflate.decompress(raw, chunk_bytes + 1))
            except zlib.error as exc:
                raise ValueError(f"{path}: {name!r} has a corrupt compressed chunk at {offset} ({exc}).") from None
            if size <= chunk_bytes and not inflate.eof:
                raise ValueError(f"{path}: {name!r} has a truncated compressed chunk at {offset}.")
        if size > chunk_bytes:
            raise ValueError(
                f"{path}: {name!r} has a chunk at {offset} that inflates beyond its {chunk_bytes} bytes (a "
                "compression bomb): refusing to read it."
            )
