"""Batch sizes chosen by measurement: a short timing probe, cached per model, input shape and device.

How many images go through a network at once changes nothing in what a
defense computes (each image's logits are the same whatever its batch), but
on a CPU it changes the speed by a factor of two or more, and the fastest
size depends on the model, the image size and the machine: small images run
fastest in batches of a few hundred on one CPU, larger batches win on a GPU.
A fixed default is therefore wrong somewhere. :func:`fastest_size` times a
few candidate sizes on the actual model and input shape (a fraction of a
second) and keeps the one with the least time per item; the choice is cached
per process under a key of the architecture (parameter names and shapes,
not values), the input shape, the device and the number of torch threads,
so the probe runs once per model shape, not once per call.

The memory layout of the images matters too: PyTorch's CPU pooling and
convolution kernels run much faster on ``channels_last`` (NHWC) tensors than
on the default NCHW ones for some models (colour images above all), and
slower or the same for others. :func:`faster_layout` times both at the
chosen size and keeps ``channels_last`` only where it is clearly faster.
"""

from __future__ import annotations

import threading
import time

import torch

__all__ = ["DEFAULT_SIZES", "architecture_key", "clear_cache", "faster_layout", "fastest_size"]

#: The candidate batch sizes of a probe (images per forward pass).
DEFAULT_SIZES = (16, 32, 64, 128, 256, 512, 1024)

_CACHE = {}
_LOCK = threading.Lock()


def architecture_key(module, input_shape, device, what=""):
    """A hashable key of what a batch-size choice depends on, not of the weights' values.

    Parameters
    ----------
    module : nn.Module
        The network.
    input_shape : tuple of int
        The shape of one input.
    device : str or torch.device
        Where the forward passes run.
    what : str, default=""
        What is batched (``"strip"``, ``"predict"``, ...), so two uses of the
        same model keep separate choices.

    Returns
    -------
    key : tuple
        Architecture class, parameter and buffer names and shapes, input
        shape, device, torch thread count and ``what``.
    """
    tensors = tuple(
        (name, tuple(t.shape), str(t.dtype))
        for name, t in list(module.named_parameters()) + list(module.named_buffers())
    )
    return (
        type(module).__module__, type(module).__qualname__, tensors, tuple(int(s) for s in input_shape),
        str(device), torch.get_num_threads(), what,
    )


def clear_cache():
    """Forget every cached choice (a new probe runs at the next call)."""
    with _LOCK:
        _CACHE.clear()


def _cached(key):
    """The choice cached under ``key`` (None for no key or none cached)."""
    if key is None:
        return None
    with _LOCK:
        return _CACHE.get(key)


def _remember(key, choice):
    """Cache ``choice`` under ``key`` unless another thread did first; return the cached one."""
    if key is None:
        return choice
    with _LOCK:
        return _CACHE.setdefault(key, choice)


def fastest_size(run, sizes=DEFAULT_SIZES, *, key=None, budget_s=0.5, repeats=3, sync=None,
                 refine_within=0.25):
    """The candidate size with the least time per item, from a short timing probe.

    Each size gets one warm-up call (allocations, kernel selection), then up to
    ``repeats`` timed calls; the best of them counts, as timings are only ever
    slowed by noise. Sizes are tried from the smallest up, and the sweep stops
    once ``budget_s`` seconds are spent (the sizes not reached are not chosen),
    or once two sizes in a row are more than 1.5 times slower per item than
    the best so far (larger ones are not expected to recover on a CPU; on a
    GPU per-item time falls with size and every size is tried).

    The sweep times each size in its own moment, so a burst of load from
    another process can make the wrong one of two close sizes win. The sizes
    within ``refine_within`` of the best are therefore timed again, in turns
    (one call of each per round, so a load change hits them all), for up to
    ``repeats`` more rounds and another ``budget_s`` seconds, and each keeps
    its best time of the sweep and the rounds, and so are the sizes that the
    budget cut short of their ``repeats`` timed calls in the sweep (the last
    ones reached), unless more than 1.5 times slower than the best.

    Parameters
    ----------
    run : callable
        ``run(size)`` does the work of one batch of ``size`` items.
    sizes : sequence of int, default=DEFAULT_SIZES
        The candidates.
    key : hashable or None, default=None
        Cache key (see :func:`architecture_key`): a choice made under the same
        key is returned without probing. ``None`` probes every time.
    budget_s : float, default=0.5
        Wall-clock budget of the probe, in seconds.
    repeats : int, default=3
        Timed calls per size.
    sync : callable or None, default=None
        Called before each clock read (``torch.cuda.synchronize`` on a GPU).
    refine_within : float, default=0.25
        Sizes whose time per item is within this fraction of the best are
        timed again in turns; ``0`` skips the second look.

    Returns
    -------
    size : int
        The chosen size.
    timings : dict
        Seconds per item of each size probed (the cached probe's when cached).

    Examples
    --------
    >>> import time
    >>> size, timings = fastest_size(lambda n: time.sleep(0.001 * (1 + n / 64)), sizes=(8, 64))
    >>> size
    64
    """
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes in fastest_size must be positive integers; got {sizes}.")
    hit = _cached(key)
    if hit is not None:
        return hit
    sync = sync or (lambda: None)
    def timed(size):
        sync()
        t0 = time.perf_counter()
        run(size)
        sync()
        return (time.perf_counter() - t0) / size

    timings, calls, slower = {}, {}, 0
    start = time.perf_counter()
    for size in sizes:
        if timings and time.perf_counter() - start > budget_s:
            break
        run(size)  # warm-up
        best, calls[size] = float("inf"), 0
        for _ in range(max(1, repeats)):
            best = min(best, timed(size))
            calls[size] += 1
            if time.perf_counter() - start > budget_s:
                break
        timings[size] = best
        slower = slower + 1 if timings[size] > 1.5 * min(timings.values()) else 0
        if slower == 2:
            break
    fastest = min(timings.values())
    # the second look: the sizes close to the best, and those the budget cut short of their
    # timed calls (one unlucky call would otherwise decide them) unless the sweep's own
    # "more than 1.5 times slower" rule rules them out
    close = [s for s in timings if timings[s] <= (1 + refine_within) * fastest
             or (calls[s] < max(1, repeats) and timings[s] <= 1.5 * fastest)]
    start = time.perf_counter()
    for _ in range(max(1, repeats) if len(close) > 1 else 0):
        for size in close:
            timings[size] = min(timings[size], timed(size))
        if time.perf_counter() - start > budget_s:
            break
    return _remember(key, (min(timings, key=timings.get), timings))


def faster_layout(run, size, *, key=None, repeats=3, margin=0.1, sync=None):
    """Whether ``channels_last`` images run clearly faster than contiguous ones, by a timing probe.

    ``run(size, channels_last)`` does one batch of ``size`` items in the given
    layout. Each layout gets a warm-up call, then ``repeats`` rounds time one
    call of each in turns (so a load change hits both), and each keeps its
    best time. ``channels_last`` wins only when it is more than ``margin``
    faster: the two layouts may round a model's float32 results differently
    in the last digits, so a choice that flips with noise is not worth it.
    A ``run`` that raises in the ``channels_last`` layout (a module that
    calls ``.view`` on its activations, for example) keeps the contiguous one.

    Parameters
    ----------
    run : callable
        ``run(size, channels_last)``.
    size : int
        Items per timed call.
    key : hashable or None, default=None
        Cache key (see :func:`architecture_key`); ``None`` probes every time.
    repeats : int, default=3
        Timed rounds.
    margin : float, default=0.1
        How much faster ``channels_last`` must be, as a fraction of the
        contiguous time.
    sync : callable or None, default=None
        Called before each clock read (``torch.cuda.synchronize`` on a GPU).

    Returns
    -------
    channels_last : bool
        True when ``channels_last`` won.
    timings : dict
        Best seconds per call of each layout (``{}`` when ``channels_last``
        raised).

    Examples
    --------
    >>> import time
    >>> faster_layout(lambda n, cl: time.sleep(0.001 if cl else 0.004), 8)[0]
    True
    """
    key = None if key is None else ("layout", key)
    hit = _cached(key)
    if hit is not None:
        return hit
    sync = sync or (lambda: None)
    try:
        run(size, True)  # warm-up, and does the module take it at all?
    except RuntimeError:
        choice = (False, {})
    else:
        run(size, False)
        best = {False: float("inf"), True: float("inf")}
        for _ in range(max(1, repeats)):
            for layout in (False, True):
                sync()
                t0 = time.perf_counter()
                run(size, layout)
                sync()
                best[layout] = min(best[layout], time.perf_counter() - t0)
        timings = {"contiguous": best[False], "channels_last": best[True]}
        choice = (best[True] < (1 - margin) * best[False], timings)
    return _remember(key, choice)
