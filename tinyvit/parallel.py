"""Using both CPU cores: the batch split across threads.

NumPy runs elementwise work (GELU, softmax, layer norm, the residual adds) on
one core, however many BLAS threads the matrix products get. But it releases
Python's global lock inside every ufunc and matrix product on large arrays, so
two Python threads can each run the model on half of the batch at the same
time, one core each. The loss is a mean over the batch, so the full batch's
gradient is the size-weighted mean of the parts' gradients:

    grads = sum_p (B_p / B) * grads_p         (p over the parts, B_p images each)

Nothing in the model changes: its forward and backward are pure functions of
the parameters and the batch, so threads can share one model. Give each thread
one BLAS thread (OPENBLAS_NUM_THREADS=1, as `tinyvit train` and `tinyvit bench`
do), or the BLAS threads of both parts compete for the same two cores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._checks import check_int


class BatchSplitter:
    """loss_and_grads over ``workers`` threads, each on a part of the batch.

    >>> step = BatchSplitter(model, workers=2)
    >>> loss, grads, logits = step.loss_and_grads(images, labels)   # as model.loss_and_grads
    """

    def __init__(self, model, workers: int = 2):
        self.model = model
        self.workers = check_int("workers", workers, minimum=1)
        # the calling thread computes the first part itself, the pool's threads the others
        self._pool = ThreadPoolExecutor(self.workers - 1) if self.workers > 1 else None

    def loss_and_grads(self, images, labels, label_smoothing: float = 0.0,
                       last_block_cls_only: bool | None = None):
        """The same (loss, grads, logits) as model.loss_and_grads on the whole batch, up to
        float rounding (the parts' gradients are added in a fixed order: deterministic)."""
        B = len(images)
        if self._pool is None or B < 2 * self.workers:
            return self.model.loss_and_grads(images, labels, label_smoothing, last_block_cls_only)
        bounds = np.linspace(0, B, self.workers + 1).astype(int)         # near-equal parts
        (a0, b0), *rest = zip(bounds[:-1], bounds[1:])
        futures = [self._pool.submit(self.model.loss_and_grads, images[a:b], labels[a:b],
                                     label_smoothing, last_block_cls_only) for a, b in rest]
        try:
            first = self.model.loss_and_grads(images[a0:b0], labels[a0:b0], label_smoothing,
                                              last_block_cls_only)
        finally:
            for f in futures:
                f.exception()                            # wait for the others, even on an error
        parts = [first] + [f.result() for f in futures]                    # (loss, grads, logits)
        weights = [float(b - a) / B for a, b in zip(bounds[:-1], bounds[1:])]  # B_p / B: Python floats,
                                                                           # so float32 stays float32
        loss = sum(w * p[0] for w, p in zip(weights, parts))
        grads = {}
        for name, first in parts[0][1].items():
            g = first * weights[0]                                         # a new array, same dtype
            for w, p in zip(weights[1:], parts[1:]):
                g += p[1][name] * w
            grads[name] = g
        logits = np.concatenate([p[2] for p in parts], axis=0)
        return loss, grads, logits

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
