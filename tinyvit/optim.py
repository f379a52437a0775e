"""Optimizers, learning-rate schedules and gradient clipping.

Everything works on the model's flat parameter dict (name -> ndarray) and a
gradient dict with the same names. An optimizer's ``step`` changes the arrays
*in place*: the dict keeps pointing at the same arrays, so a model holding the
dict sees the update without any re-binding.

Two optimizers, written to agree with PyTorch number for number:

* ``SGD``   - plain, heavy-ball momentum, or Nesterov momentum
              (torch.optim.SGD convention, dampening 0):
                  g   = grad (+ weight_decay * p   for decayed params)
                  buf = momentum * buf + g              (buf starts at 0)
                  g   = g + momentum * buf   if nesterov else buf
                  p  -= lr * g
              Weight decay here is *coupled*: it is added to the gradient, as
              torch.optim.SGD does, so it also flows through the momentum.
* ``AdamW`` - Adam with decoupled weight decay (Loshchilov & Hutter), the
              formula of torch.optim.AdamW:
                  p  *= 1 - lr * weight_decay           (decayed params only)
                  m   = b1 * m + (1 - b1) * g
                  v   = b2 * v + (1 - b2) * g * g
                  p  -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
              where t counts steps from 1. Note eps is added to the
              bias-corrected sqrt(v), exactly where torch adds it.

Weight decay is applied to weight matrices only (see ``decay_mask``): biases,
layer-norm scales and shifts, the CLS token and the position embeddings are
left alone, as in timm's ViT training recipe.

Schedules are plain functions of the step index (``warmup_cosine``,
``constant``) plus ``make_schedule`` which wraps them into a callable
``step -> lr`` that a training loop passes as ``opt.step(..., lr=sched(step))``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from tinyvit._checks import check_array, check_choice, check_float, check_int, describe

__all__ = [
    "decay_mask", "Optimizer", "SGD", "AdamW",
    "warmup_cosine", "constant", "linear_decay", "Schedule", "make_schedule",
    "clip_grad_norm", "global_norm",
]

# Parameters that are 3-D arrays but must never be decayed: pulling the CLS
# token or the position table towards zero only hurts.
NO_DECAY_NAMES = ("cls_token", "reg_token", "pos_embed")


def decay_mask(name: str, array: np.ndarray) -> bool:
    """True when weight decay should apply to the parameter ``name``.

    Matrices (ndim >= 2) decay; vectors (biases ``.b``, layer-norm ``.gamma``
    and ``.beta``) and scalars do not, and neither do ``cls_token``,
    ``reg_token`` (register tokens, as timm's no_weight_decay) and ``pos_embed``
    although they are 3-D.
    """
    if name in NO_DECAY_NAMES or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES:
        return False
    return np.ndim(array) >= 2


def _check_lr(name: str, lr) -> float:
    return check_float(name, lr, minimum=0.0)


class Optimizer:
    """Shared book-keeping: step counter, per-parameter state, checks.

    Subclasses list the names of their per-parameter buffers in ``_buffers``
    (for example ``("m", "v")``) and implement ``_update``.
    """

    _buffers: tuple[str, ...] = ()

    def __init__(self, lr: float, weight_decay: float,
                 decay: Callable[[str, np.ndarray], bool] = decay_mask):
        self.lr = _check_lr("lr", lr)
        self.weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
        if not callable(decay):
            raise TypeError(f"decay: expected a function (name, array) -> bool, got {describe(decay)}")
        self.decay = decay
        self._step = 0
        # state[buffer][param name] -> array with the parameter's shape and dtype
        self.state: dict[str, dict[str, np.ndarray]] = {b: {} for b in self._buffers}

    # ------------------------------------------------------------------ steps
    @property
    def step_count(self) -> int:
        """Number of completed ``step`` calls (t in the bias corrections)."""
        return self._step

    def _check_step_inputs(self, params, grads):
        if not isinstance(params, dict):
            raise TypeError(f"params: expected a dict of name -> array, got {describe(params)}")
        if not isinstance(grads, dict):
            raise TypeError(f"grads: expected a dict of name -> array, got {describe(grads)}")
        missing = sorted(set(params) - set(grads))
        extra = sorted(set(grads) - set(params))
        if missing:
            raise ValueError(f"grads: expected a gradient for every parameter, missing {missing}")
        if extra:
            raise ValueError(f"grads: expected only names found in params, got unknown {extra}")
        for name, p in params.items():
            check_array(f"params[{name!r}]", p, kind="f", finite=False)
            g = grads[name]
            check_array(f"grads[{name!r}]", g, kind="f")
            if g.shape != p.shape:
                raise ValueError(f"grads[{name!r}]: expected shape {p.shape} (the parameter's), got {g.shape}")
            if g.dtype != p.dtype:
                raise TypeError(f"grads[{name!r}]: expected dtype {p.dtype} (the parameter's), got {g.dtype}")
        # Once state exists it must describe exactly these parameters.
        for buf in self._buffers:
            have = self.state[buf]
            if not have:
                continue
            if set(have) != set(params):
                raise ValueError(
                    f"params: expected the parameters this optimizer's state was built for; "
                    f"missing from params {sorted(set(have) - set(params))}, "
                    f"without state {sorted(set(params) - set(have))}")
            for name, p in params.items():
                if have[name].shape != p.shape or have[name].dtype != p.dtype:
                    raise ValueError(
                        f"params[{name!r}]: expected shape {have[name].shape} and dtype {have[name].dtype} "
                        f"to match the optimizer state, got {p.shape} {p.dtype}")

    def step(self, params: dict, grads: dict, lr: float | None = None) -> None:
        """Update every array in ``params`` in place from ``grads``.

        lr: learning rate for this step only (a schedule's value); None uses
        the base ``self.lr``.
        """
        lr = self.lr if lr is None else _check_lr("lr", lr)
        self._check_step_inputs(params, grads)
        for buf in self._buffers:
            for name, p in params.items():
                if name not in self.state[buf]:
                    self.state[buf][name] = np.zeros_like(p)
        self._step += 1
        for name, p in params.items():
            wd = self.weight_decay if self.weight_decay and self.decay(name, p) else 0.0
            self._update(name, p, grads[name], lr, wd)

    def _update(self, name, p, g, lr, wd):  # pragma: no cover - abstract
        raise NotImplementedError

    def zero_state(self) -> None:
        """Forget all moments and reset the step counter."""
        self._step = 0
        self.state = {b: {} for b in self._buffers}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain named arrays: ``"step"`` (0-d int64) and ``"<buffer>.<param>"``.

        The arrays are copies, safe to save with ``np.savez`` and to keep while
        training continues.
        """
        out = {"step": np.array(self._step, dtype=np.int64)}
        for buf in self._buffers:
            for name, arr in self.state[buf].items():
                out[f"{buf}.{name}"] = arr.copy()
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict``; raises a clear error on anything unexpected."""
        if not isinstance(state, dict) and not hasattr(state, "keys"):
            raise TypeError(f"state: expected a dict of name -> array, got {describe(state)}")
        if "step" not in state:
            raise ValueError("state: expected an entry 'step' (the step counter), got none; "
                             f"keys present: {sorted(state.keys())}")
        step = np.asarray(state["step"])
        if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
            raise ValueError(f"state['step']: expected a non-negative integer 0-d array, got {describe(step)}")
        new: dict[str, dict[str, np.ndarray]] = {b: {} for b in self._buffers}
        for key in state.keys():
            if key == "step":
                continue
            buf, _, name = str(key).partition(".")
            if buf not in new or not name:
                expected = ", ".join(f"'{b}.<param>'" for b in self._buffers) or "no buffers"
                raise ValueError(f"state: unexpected entry {key!r} for {type(self).__name__} "
                                 f"(expected 'step' and {expected})")
            arr = state[key]
            check_array(f"state[{key!r}]", arr, kind="f")
            new[buf][name] = np.array(arr, copy=True)
        # Every buffer must cover the same parameters with the same shapes.
        if self._buffers:
            first = self._buffers[0]
            for buf in self._buffers[1:]:
                if set(new[buf]) != set(new[first]):
                    raise ValueError(f"state: expected '{first}.*' and '{buf}.*' entries for the same "
                                     f"parameters, got {sorted(new[first])} and {sorted(new[buf])}")
                for name, arr in new[buf].items():
                    if arr.shape != new[first][name].shape:
                        raise ValueError(f"state['{buf}.{name}']: expected shape {new[first][name].shape}, "
                                         f"got {arr.shape}")
            if int(step) > 0 and not new[first] and self._needs_state_after_step():
                raise ValueError(f"state: step is {int(step)} but no '{first}.<param>' entries were given")
        self._step = int(step)
        self.state = new

    def _needs_state_after_step(self) -> bool:
        return bool(self._buffers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._hparams()}, step_count={self._step})"

    def _hparams(self) -> str:  # pragma: no cover - overridden
        return f"lr={self.lr}"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    SGD(lr, momentum=0.9, nesterov=False, weight_decay=0.0, decay=decay_mask)

    Follows torch.optim.SGD with dampening 0. Weight decay is coupled: the term
    ``weight_decay * p`` is added to the gradient of the parameters selected by
    ``decay`` before the momentum update. State: ``buf.<param>`` (only when
    momentum > 0).
    """

    def __init__(self, lr: float, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, decay=decay_mask):
        self.momentum = check_float("momentum", momentum, minimum=0.0, maximum=1.0)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov: expected True or False, got {describe(nesterov)}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov: expected momentum > 0 for Nesterov momentum, got momentum 0.0")
        self.nesterov = nesterov
        self._buffers = ("buf",) if self.momentum > 0 else ()
        super().__init__(lr, weight_decay, decay)

    def _update(self, name, p, g, lr, wd):
        if wd:
            g = g + wd * p                       # coupled decay: a new array, grads stay untouched
        if self.momentum:
            buf = self.state["buf"][name]
            buf *= self.momentum                 # buf = momentum * buf + g
            buf += g
            if self.nesterov:
                g = g + self.momentum * buf      # look ahead along the momentum
            else:
                g = buf
        p -= lr * g

    def _hparams(self) -> str:
        return (f"lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay}")


class AdamW(Optimizer):
    """Adam with decoupled weight decay, as torch.optim.AdamW.

    AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, decay=decay_mask)

    State: ``m.<param>`` (first moment) and ``v.<param>`` (second moment) with
    the parameter's dtype, and the step counter used by the bias corrections.
    """

    _buffers = ("m", "v")

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.05, decay=decay_mask):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {describe(betas)}")
        b1 = check_float("betas[0]", betas[0], minimum=0.0)
        b2 = check_float("betas[1]", betas[1], minimum=0.0)
        if b1 >= 1.0:
            raise ValueError(f"betas[0]: expected a number in [0, 1), got {b1}")
        if b2 >= 1.0:
            raise ValueError(f"betas[1]: expected a number in [0, 1), got {b2}")
        self.betas = (b1, b2)
        self.eps = check_float("eps", eps, minimum=0.0, open_min=True)
        super().__init__(lr, weight_decay, decay)

    def _update(self, name, p, g, lr, wd):
        b1, b2 = self.betas
        t = self._step
        if wd:
            p *= 1.0 - lr * wd                   # decoupled decay, before the Adam update
        m = self.state["m"][name]
        v = self.state["v"][name]
        m *= b1                                  # m = b1 m + (1 - b1) g
        m += (1.0 - b1) * g
        v *= b2                                  # v = b2 v + (1 - b2) g^2
        v += (1.0 - b2) * (g * g)
        bc1 = 1.0 - b1 ** t
        bc2_sqrt = math.sqrt(1.0 - b2 ** t)
        denom = np.sqrt(v)                       # sqrt(v_hat) + eps, v_hat = v / bc2
        denom /= bc2_sqrt
        denom += self.eps
        p -= (lr / bc1) * (m / denom)

    def _hparams(self) -> str:
        return f"lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay}"


# ---------------------------------------------------------------- schedules

def _check_schedule(step, total_steps, base_lr, warmup_steps, min_lr):
    step = check_int("step", step, minimum=0)
    total_steps = check_int("total_steps", total_steps, minimum=1)
    base_lr = check_float("base_lr", base_lr, minimum=0.0)
    warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0, maximum=total_steps)
    min_lr = check_float("min_lr", min_lr, minimum=0.0, maximum=base_lr)
    return step, total_steps, base_lr, warmup_steps, min_lr


def _warmup(step: int, base_lr: float, warmup_steps: int) -> float:
    # Step 0 gets base_lr / warmup_steps (small but not zero, so no step is
    # wasted); step warmup_steps - 1 reaches base_lr.
    return base_lr * (step + 1) / warmup_steps


def warmup_cosine(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0,
                  min_lr: float = 0.0) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine decay.

    Steps 0 .. warmup_steps-1 rise linearly from base_lr/warmup_steps to
    base_lr. From step warmup_steps the rate follows half a cosine from
    base_lr down to min_lr, reached at step total_steps (and held after).
    """
    step, total_steps, base_lr, warmup_steps, min_lr = _check_schedule(
        step, total_steps, base_lr, warmup_steps, min_lr)
    if step < warmup_steps:
        return _warmup(step, base_lr, warmup_steps)
    span = total_steps - warmup_steps
    progress = 1.0 if span == 0 else min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def linear_decay(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0,
                 min_lr: float = 0.0) -> float:
    """Linear warm-up, then a straight line from base_lr to min_lr at total_steps."""
    step, total_steps, base_lr, warmup_steps, min_lr = _check_schedule(
        step, total_steps, base_lr, warmup_steps, min_lr)
    if step < warmup_steps:
        return _warmup(step, base_lr, warmup_steps)
    span = total_steps - warmup_steps
    progress = 1.0 if span == 0 else min(1.0, (step - warmup_steps) / span)
    return base_lr + (min_lr - base_lr) * progress


def constant(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0,
             min_lr: float = 0.0) -> float:
    """Linear warm-up (if any), then base_lr for ever. min_lr is ignored."""
    step, total_steps, base_lr, warmup_steps, min_lr = _check_schedule(
        step, total_steps, base_lr, warmup_steps, min_lr)
    if step < warmup_steps:
        return _warmup(step, base_lr, warmup_steps)
    return base_lr


_SCHEDULES = {"cosine": warmup_cosine, "constant": constant, "linear": linear_decay}


class Schedule:
    """A learning-rate schedule as a callable ``step -> lr``.

    Build one with ``make_schedule``; ``sched(step)`` returns a float.
    """

    def __init__(self, kind: str, base_lr: float, total_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0):
        self.kind = check_choice("kind", kind, tuple(_SCHEDULES))
        # Validate once here so a bad schedule fails at construction, not mid-training.
        _check_schedule(0, total_steps, base_lr, warmup_steps, min_lr)
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)

    def __call__(self, step: int) -> float:
        return _SCHEDULES[self.kind](step, self.total_steps, self.base_lr,
                                     self.warmup_steps, self.min_lr)

    def __repr__(self) -> str:
        return (f"Schedule(kind={self.kind!r}, base_lr={self.base_lr}, total_steps={self.total_steps}, "
                f"warmup_steps={self.warmup_steps}, min_lr={self.min_lr})")


def make_schedule(kind: str, base_lr: float, total_steps: int, warmup_steps: int = 0,
                  min_lr: float = 0.0) -> Schedule:
    """A callable ``step -> lr``; kind is "cosine", "constant" or "linear"."""
    return Schedule(kind, base_lr, total_steps, warmup_steps, min_lr)


# ---------------------------------------------------------------- clipping

def global_norm(grads: dict) -> float:
    """L2 norm of all gradient tensors taken together (accumulated in float64)."""
    if not isinstance(grads, dict):
        raise TypeError(f"grads: expected a dict of name -> array, got {describe(grads)}")
    total = 0.0
    for name, g in grads.items():
        check_array(f"grads[{name!r}]", g, kind="f", finite=False)
        g64 = g.astype(np.float64, copy=False).ravel()
        total += float(np.dot(g64, g64))
    return math.sqrt(total)


def clip_grad_norm(grads: dict, max_norm: float, error_if_nonfinite: bool = True) -> float:
    """Scale all gradients in place so their global L2 norm is at most max_norm.

    Returns the norm *before* clipping, as torch.nn.utils.clip_grad_norm_ does.
    Unlike torch no 1e-6 is added to the denominator, so clipped gradients have
    norm max_norm exactly (up to rounding). A NaN or inf norm raises ValueError
    (or, with error_if_nonfinite=False, is returned without touching grads).
    """
    max_norm = check_float("max_norm", max_norm, minimum=0.0, open_min=True)
    norm = global_norm(grads)
    if not math.isfinite(norm):
        if error_if_nonfinite:
            bad = sorted(n for n, g in grads.items() if not np.isfinite(g).all())
            raise ValueError(f"grads: expected finite values, got NaN or inf in {bad}")
        return norm
    if norm > max_norm:
        scale = max_norm / norm
        for g in grads.values():
            g *= scale                           # Python float: keeps the array's dtype
    return norm
