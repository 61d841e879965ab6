"""Batched trigger reverse engineering (Neural Cleanse, Eq. 3), in plain torch.

One *task* is one trigger to reverse: a target label, the pool of defender
images it must flip (every other label, or one source label for partial
backdoors) and its own seed. :func:`reverse_chunk` optimizes the masks and
patterns of K tasks as one ``(K, ...)`` tensor: each mini-batch step is one
forward pass over K x batch stamped images, with a separate cost schedule per
task. A task that stops early leaves the batch (its rows are dropped from the
parameters and from the optimizer state), so the batch only ever holds work
still running.

The per-task math is that of the reference implementation (Wang et al.,
``bolunwang/backdoor``, ``visualizer.py``): tanh parametrisation of mask and
pattern, a 2-D mask shared over the channels, L1 penalty on the mask, Adam
(lr 0.1, betas (0.5, 0.9)), cost raised by ``cost_multiplier`` and lowered by
``cost_multiplier ** 1.5`` after ``patience`` steps above / below the
attack-success threshold, the smallest mask reaching the threshold kept, and
early stopping once both directions of the schedule were used and the best
norm stopped improving. Because each task draws its initialisation and its
mini-batches from its own generator, and Adam is element-wise, a task's
result does not depend on which other tasks share its chunk: ``chunk size 1``
is the one-at-a-time reference.

Optionally (``settle_patience``, not in the reference code) a task also stops
once its best norm has not improved by more than ``settle_threshold`` for
that many steps, whether or not its cost schedule has moved both ways.
:func:`step_probe` times one mini-batch step of K tasks, so that the number
of tasks per chunk can be chosen by measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._utils import as_tensor
from ..triggers import stamp

# Keras' epsilon in the reference code: tanh(.) / (2 - eps) + 0.5 stays in (0, 1).
_EPS = 1e-7


@dataclass
class Task:
    target: int
    pool: np.ndarray  # indices of the defender images this trigger must flip
    seed: int


@dataclass
class TaskResult:
    mask: np.ndarray  # (1, H, W)
    pattern: np.ndarray  # (C, H, W)
    l1_norm: float
    reached: bool  # reached the attack-success threshold at some step
    steps: int  # optimization steps (passes) run
    cost: float  # final cost
    settled: bool = False  # stopped by the settled-label rule (cfg["settle_patience"])


def _to_unit(t, eps=_EPS):
    return torch.tanh(t) / (2 - eps) + 0.5


def _from_unit(x):
    # arctanh((x - 0.5) * (2 - eps)), clipped so the float32 result is finite.
    z = np.clip((x - 0.5) * (2 - _EPS), -1 + 1e-6, 1 - 1e-6)
    return np.arctanh(z)


def _adam(param, grad, m, v, step, lr, betas, eps=1e-8):
    """One Adam update on a ``(K, ...)`` tensor: element-wise, so rows are independent."""
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))


class _Schedule:
    """The reference code's cost schedule and early stop, for one task."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.cost = cfg["init_cost"]
        self.up_counter = self.down_counter = self.set_counter = 0
        self.up_flag = self.down_flag = False
        self.reg_best = math.inf
        self.early_stop_reg_best = math.inf
        self.early_stop_counter = 0
        self.settle_reg_best = math.inf
        self.settle_counter = 0
        self.settled = False

    def update(self, acc, reg):
        """End of one step: returns (is_new_best, stop)."""
        cfg = self.cfg
        best = acc >= cfg["threshold"] and reg < self.reg_best
        if best:
            self.reg_best = reg
        stop = False
        if cfg.get("settle_patience") is not None and self.reg_best < math.inf:
            # Not in the reference: the smallest successful mask has stopped shrinking.
            if self.reg_best >= cfg["settle_threshold"] * self.settle_reg_best:
                self.settle_counter += 1
            else:
                self.settle_counter = 0
                self.settle_reg_best = self.reg_best
            self.settled = self.settle_counter >= cfg["settle_patience"]
        if cfg["early_stop"]:
            # only terminate once a trigger reaching the threshold was found
            if self.reg_best < math.inf:
                if self.reg_best >= cfg["early_stop_threshold"] * self.early_stop_reg_best:
                    self.early_stop_counter += 1
                else:
                    self.early_stop_counter = 0
            self.early_stop_reg_best = min(self.reg_best, self.early_stop_reg_best)
            stop = (self.down_flag and self.up_flag
                    and self.early_stop_counter >= cfg["early_stop_patience"])
        if self.settled and not stop:
            stop = True
        else:
            self.settled = False  # the reference's early stop came first: it is not counted as settled
        if self.cost == 0 and acc >= cfg["threshold"]:
            self.set_counter += 1
            if self.set_counter >= cfg["patience"]:
                self.cost = cfg["init_cost"]
                self.up_counter = self.down_counter = 0
                self.up_flag = self.down_flag = False
        else:
            self.set_counter = 0
        if acc >= cfg["threshold"]:
            self.up_counter += 1
            self.down_counter = 0
        else:
            self.up_counter = 0
            self.down_counter += 1
        if self.up_counter >= cfg["patience"]:
            self.up_counter = 0
            self.cost *= cfg["multiplier_up"]
            self.up_flag = True
        elif self.down_counter >= cfg["patience"]:
            self.down_counter = 0
            self.cost /= cfg["multiplier_down"]
            self.down_flag = True
        return best, stop


def reverse_chunk(model, X, tasks, cfg, *, device, progress=None):
    """Optimize the triggers of ``tasks`` together; return one :class:`TaskResult` each.

    Parameters
    ----------
    model : callable
        ``model(x)`` returns logits for a float tensor on ``device``; its
        parameters must not require grad (only the trigger is optimized).
    X : ndarray of shape (n, C, H, W)
        The defender's images.
    tasks : list of Task
    cfg : dict
        ``steps``, ``batch``, ``batches_per_step``, ``lr``, ``betas``,
        ``init_cost``, ``threshold``, ``patience``, ``multiplier_up``,
        ``multiplier_down``, ``early_stop``, ``early_stop_patience``,
        ``early_stop_threshold``, ``pattern_range``; optionally
        ``settle_patience`` (None: off) and ``settle_threshold``.
    progress : callable, default=None
        Called with (step, n_active) after each step.
    """
    dev = torch.device(device)
    n, c, h, w = X.shape
    X_t = as_tensor(X).to(dev)
    lo, hi = cfg["pattern_range"]
    B = cfg["batch"]

    rngs = [np.random.default_rng(t.seed) for t in tasks]
    # Initialisation as in the reference example: uniform random mask and pattern.
    mask_init = np.stack([r.random((1, h, w)) for r in rngs])
    pattern_init = np.stack([r.random((c, h, w)) for r in rngs])
    mask_p = torch.as_tensor(_from_unit(mask_init), dtype=torch.float32, device=dev)
    pattern_p = torch.as_tensor(_from_unit(pattern_init), dtype=torch.float32, device=dev)
    state = {
        "m_mask": torch.zeros_like(mask_p), "v_mask": torch.zeros_like(mask_p),
        "m_pat": torch.zeros_like(pattern_p), "v_pat": torch.zeros_like(pattern_p),
    }
    targets = torch.as_tensor([t.target for t in tasks], dtype=torch.long, device=dev)
    schedules = [_Schedule(cfg) for _ in tasks]
    streams = [_IndexStream(t.pool, r) for t, r in zip(tasks, rngs)]

    K = len(tasks)
    active = list(range(K))  # task index of each row of the (K, ...) tensors
    results = [None] * K
    best = [None] * K
    adam_step = 0
    for step in range(cfg["steps"]):
        k_act = len(active)
        costs = torch.tensor([schedules[i].cost for i in active], dtype=torch.float32, device=dev)
        acc_sum = np.zeros(k_act)
        reg_sum = np.zeros(k_act)
        tgt = targets[active]
        tgt_rep = tgt.repeat_interleave(B)
        for _ in range(cfg["batches_per_step"]):
            idx = np.stack([streams[i].take(B) for i in active])  # (k, B)
            adam_step += 1
            mask_p, pattern_p, hit, reg = _minibatch(model, X_t, idx, mask_p, pattern_p, state, adam_step,
                                                     tgt_rep, costs, cfg)
            acc_sum += hit
            reg_sum += reg
        acc = acc_sum / cfg["batches_per_step"]
        reg_avg = reg_sum / cfg["batches_per_step"]
        with torch.no_grad():
            mask_now = _to_unit(mask_p).cpu().numpy()
            pattern_now = (lo + (hi - lo) * _to_unit(pattern_p)).cpu().numpy()
        keep = []
        for row, i in enumerate(active):
            is_best, stop = schedules[i].update(float(acc[row]), float(reg_avg[row]))
            if is_best:
                best[i] = (mask_now[row].copy(), pattern_now[row].copy())
            last = step == cfg["steps"] - 1
            if stop or last:
                results[i] = _result(best[i], mask_now[row], pattern_now[row], schedules[i], step + 1)
            else:
                keep.append(row)
        if len(keep) < k_act:
            # Stopped tasks leave the batch: drop their rows everywhere.
            rows = torch.as_tensor(keep, dtype=torch.long, device=dev)
            mask_p, pattern_p = mask_p[rows], pattern_p[rows]
            state = {k: v[rows] for k, v in state.items()}
            active = [active[r] for r in keep]
        if progress is not None:
            progress(step + 1, len(active))
        if not active:
            break
    return results


def _minibatch(model, X_t, idx, mask_p, pattern_p, state, adam_step, tgt_rep, costs, cfg):
    """One mini-batch of K triggers: gather, stamp, loss and gradient, Adam; (mask_p, pattern_p, hit, reg).

    ``idx`` is the ``(K, B)`` array of image indices; ``hit`` and ``reg``
    come back as numpy arrays of shape ``(K,)`` (attack success on the
    mini-batch, mask L1 norm). The timing probe runs this same function.
    """
    k, b = idx.shape
    xb = X_t[torch.from_numpy(idx).to(X_t.device)]  # (k, B, C, H, W)
    logits, reg, g_mask, g_pat = _step(model, xb, mask_p, pattern_p, tgt_rep, costs, cfg["pattern_range"])
    mask_p = mask_p.detach()
    pattern_p = pattern_p.detach()
    with torch.no_grad():
        _adam(mask_p, g_mask, state["m_mask"], state["v_mask"], adam_step, cfg["lr"], cfg["betas"])
        _adam(pattern_p, g_pat, state["m_pat"], state["v_pat"], adam_step, cfg["lr"], cfg["betas"])
        hit = (logits.argmax(dim=1) == tgt_rep).float().view(k, b).mean(dim=1)
    return mask_p, pattern_p, hit.cpu().numpy(), reg.detach().cpu().numpy()


def _step(model, xb, mask_p, pattern_p, tgt_rep, costs, pattern_range):
    """The loss of one mini-batch of K triggers and its gradient: (logits, reg, g_mask, g_pattern).

    ``xb`` is ``(K, B, C, H, W)``: each trigger's own B images, stamped with
    its mask and pattern and sent through the model as one ``K x B`` batch.
    """
    k, b, c, h, w = xb.shape
    lo, hi = pattern_range
    mask_p.requires_grad_(True)
    pattern_p.requires_grad_(True)
    mask = _to_unit(mask_p)  # (k, 1, H, W)
    pattern = lo + (hi - lo) * _to_unit(pattern_p)  # (k, C, H, W)
    x_adv = stamp(xb, mask[:, None], pattern[:, None]).reshape(k * b, c, h, w)
    logits = model(x_adv)
    ce = F.cross_entropy(logits, tgt_rep, reduction="none").view(k, b).mean(dim=1)
    reg = mask.abs().sum(dim=(1, 2, 3))
    loss = (ce + costs * reg).sum()
    if not torch.isfinite(loss):
        raise FloatingPointError(
            "NeuralCleanse: the trigger optimization produced a non-finite loss "
            "(the model returned NaN or infinite logits on stamped inputs); "
            "check the model and the input scale.")
    g_mask, g_pat = torch.autograd.grad(loss, (mask_p, pattern_p))
    return logits, reg, g_mask, g_pat


def step_probe(model, X, batch, pattern_range, *, device):
    """``run(k)``: one mini-batch step of ``k`` triggers on ``X``, for a timing probe.

    The work of one mini-batch of :func:`reverse_chunk` with ``k`` tasks
    (:func:`_minibatch`): the gather of ``k x batch`` images, the stamping,
    the forward pass, the gradient with respect to the masks and patterns,
    both Adam updates and the copy of the step's attack success and norms to
    the host. The parameters optimized are the probe's own zeros; no random
    generator is drawn from.

    Parameters
    ----------
    model : callable
        As in :func:`reverse_chunk`.
    X : ndarray of shape (n, C, H, W)
        The defender's images.
    batch : int
        Images per trigger in a mini-batch.
    pattern_range : tuple of float
        The value range of the pattern.
    device : str or torch.device

    Returns
    -------
    run : callable
        ``run(k)`` does the work of one step of ``k`` triggers.
    """
    dev = torch.device(device)
    n, c, h, w = X.shape
    X_t = as_tensor(X).to(dev)
    rows = np.arange(batch) % n
    cfg = {"pattern_range": pattern_range, "lr": 0.1, "betas": (0.5, 0.9)}

    def run(k):
        idx = np.tile(rows, (k, 1))
        mask_p = torch.zeros((k, 1, h, w), device=dev)
        pattern_p = torch.zeros((k, c, h, w), device=dev)
        state = {"m_mask": torch.zeros_like(mask_p), "v_mask": torch.zeros_like(mask_p),
                 "m_pat": torch.zeros_like(pattern_p), "v_pat": torch.zeros_like(pattern_p)}
        tgt_rep = torch.zeros(k * batch, dtype=torch.long, device=dev)
        costs = torch.full((k,), 1e-3, device=dev)
        _minibatch(model, X_t, idx, mask_p, pattern_p, state, 1, tgt_rep, costs, cfg)

    return run


def _result(best, mask_now, pattern_now, schedule, steps):
    reached = best is not None
    # As the reference: without a trigger reaching the threshold, keep the last one.
    mask, pattern = best if reached else (mask_now.copy(), pattern_now.copy())
    # float32 rounding of tanh(.) / (2 - eps) + 0.5 can leave -6e-8 or 1 + 6e-8
    mask = np.clip(mask, 0.0, 1.0)
    return TaskResult(mask=mask.astype(np.float32), pattern=pattern.astype(np.float32),
                      l1_norm=float(np.abs(mask).sum()), reached=reached, steps=steps,
                      cost=float(schedule.cost), settled=schedule.settled)


class _IndexStream:
    """An endless stream of shuffled indices of one task's pool (its own generator)."""

    def __init__(self, pool, rng):
        self.pool = np.asarray(pool)
        self.rng = rng
        self.buf = np.empty(0, dtype=np.int64)

    def take(self, k):
        while self.buf.size < k:
            self.buf = np.concatenate([self.buf, self.rng.permutation(self.pool)])
        out, self.buf = self.buf[:k], self.buf[k:]
        return out
