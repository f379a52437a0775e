"""Boxes: a head that regresses one box from a pooled state, and the two box losses.

A box is (cx, cy, w, h): its centre and size as fractions of the image width and
height, each in [0, 1]. Corners: x0 = cx - w/2, x1 = cx + w/2 (and y0, y1 alike).

  box_head     pooled (B, D) -> boxes (B, 4) = sigmoid(pooled @ W + b)
  l1_loss      per box: sum over the 4 numbers of |pred - target|     (B,)
  giou_loss    per box: 1 - GIoU(pred, target)                       (B,)
  query_pool   tokens (B, N, D) -> (B, D): one learned query attends over the tokens

The generalised IoU (Rezatofighi et al., CVPR 2019) is IoU minus the share of the
smallest enclosing box C that the union does not cover:
  GIoU = IoU - (|C| - |union|) / |C|,   in (-1, 1]
Unlike 1 - IoU, its loss still has a gradient when the boxes do not overlap: the
enclosing term pulls them together. DETR trains its boxes with L1 (weight 5) plus
GIoU (weight 2); tinyvit.box uses the same pair.

The losses return one value per box, so a gradient check can give every box its
own random upstream gradient; the caller takes the mean.
"""

from __future__ import annotations

import numpy as np

from .linear import linear_backward, linear_forward

__all__ = ["BOX_EPS", "box_head_forward", "box_head_backward", "l1_loss_forward", "l1_loss_backward",
           "box_corners", "giou_loss_forward", "giou_loss_backward", "box_iou", "query_pool_forward",
           "query_pool_backward"]

BOX_EPS = 1e-7      # keeps |union| and |C| away from zero; part of the forward, so the backward is exact


def box_head_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray):
    """x (B, D), W (D, 4), b (4,) -> boxes (B, 4) in (0, 1) as (cx, cy, w, h), cache."""
    z, lin_cache = linear_forward(x, W, b)               # (B, 4)
    boxes = 1.0 / (1.0 + np.exp(-z))                     # (B, 4): sigmoid
    return boxes, (lin_cache, boxes)


def box_head_backward(dboxes: np.ndarray, cache):
    """dboxes (B, 4) -> dx (B, D), dW (D, 4), db (4,)."""
    lin_cache, boxes = cache
    # boxes = sigmoid(z): dsigmoid/dz = s (1 - s)
    dz = dboxes * boxes * (1.0 - boxes)                  # (B, 4)
    return linear_backward(dz, lin_cache)


def l1_loss_forward(pred: np.ndarray, target: np.ndarray):
    """pred, target (B, 4) -> loss (B,): sum_j |pred_j - target_j| per box, cache."""
    diff = pred - target                                 # (B, 4)
    return np.abs(diff).sum(axis=1), diff


def l1_loss_backward(dloss: np.ndarray, cache) -> np.ndarray:
    """dloss (B,) -> dpred (B, 4). (|u|' = sign(u); 0 at u = 0, as torch's L1 loss.)"""
    diff = cache
    return np.sign(diff) * dloss[:, None]                # (B, 4)


def box_corners(boxes: np.ndarray):
    """(..., 4) (cx, cy, w, h) -> x0, y0, x1, y1, each (...)."""
    cx, cy, w, h = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def giou_loss_forward(pred: np.ndarray, target: np.ndarray):
    """pred, target (B, 4) as (cx, cy, w, h) -> loss (B,) = 1 - GIoU, cache.

    cache["iou"] is each box's plain IoU (B,), which evaluation reports."""
    px0, py0, px1, py1 = box_corners(pred)               # (B,) each
    tx0, ty0, tx1, ty1 = box_corners(target)
    pw, ph = pred[:, 2], pred[:, 3]
    area_p = pw * ph                                     # (B,)
    area_t = target[:, 2] * target[:, 3]
    # intersection: the overlap of the two intervals on each axis (zero if they miss)
    iw_raw = np.minimum(px1, tx1) - np.maximum(px0, tx0)
    ih_raw = np.minimum(py1, ty1) - np.maximum(py0, ty0)
    iw, ih = np.maximum(iw_raw, 0.0), np.maximum(ih_raw, 0.0)
    inter = iw * ih
    union = area_p + area_t - inter + BOX_EPS
    iou = inter / union
    # the smallest box enclosing both
    cw = np.maximum(px1, tx1) - np.minimum(px0, tx0)
    ch = np.maximum(py1, ty1) - np.minimum(py0, ty0)
    area_c = cw * ch + BOX_EPS
    giou = iou - (area_c - union) / area_c
    cache = dict(p=(px0, py0, px1, py1), t=(tx0, ty0, tx1, ty1), pw=pw, ph=ph, iw_raw=iw_raw,
                 ih_raw=ih_raw, iw=iw, ih=ih, inter=inter, union=union, iou=iou, cw=cw, ch=ch,
                 area_c=area_c)
    return 1.0 - giou, cache


def giou_loss_backward(dloss: np.ndarray, cache) -> np.ndarray:
    """dloss (B,) -> dpred (B, 4). The target gets no gradient (it is data)."""
    c = cache
    (px0, py0, px1, py1), (tx0, ty0, tx1, ty1) = c["p"], c["t"]
    union, area_c, inter = c["union"], c["area_c"], c["inter"]
    # loss = 1 - giou;  giou = iou - 1 + union / area_c
    dgiou = -dloss
    diou = dgiou
    dunion = dgiou / area_c
    darea_c = -dgiou * union / area_c ** 2
    # iou = inter / union
    dinter = diou / union
    dunion = dunion - diou * inter / union ** 2
    # union = area_p + area_t - inter + eps
    darea_p = dunion
    dinter = dinter - dunion
    # area_p = pw * ph
    dpw = darea_p * c["ph"]
    dph = darea_p * c["pw"]
    # inter = iw * ih, iw = max(iw_raw, 0): no gradient where the intervals miss
    diw_raw = dinter * c["ih"] * (c["iw_raw"] > 0)
    dih_raw = dinter * c["iw"] * (c["ih_raw"] > 0)
    # iw_raw = min(px1, tx1) - max(px0, tx0): the prediction's corner counts where it is the one chosen
    dpx1 = diw_raw * (px1 <= tx1)
    dpx0 = -diw_raw * (px0 >= tx0)
    dpy1 = dih_raw * (py1 <= ty1)
    dpy0 = -dih_raw * (py0 >= ty0)
    # area_c = cw * ch + eps, cw = max(px1, tx1) - min(px0, tx0)
    dcw = darea_c * c["ch"]
    dch = darea_c * c["cw"]
    dpx1 = dpx1 + dcw * (px1 > tx1)
    dpx0 = dpx0 - dcw * (px0 < tx0)
    dpy1 = dpy1 + dch * (py1 > ty1)
    dpy0 = dpy0 - dch * (py0 < ty0)
    # corners from (cx, cy, w, h): x0 = cx - w/2, x1 = cx + w/2
    dcx = dpx0 + dpx1
    dcy = dpy0 + dpy1
    dw = dpw + (dpx1 - dpx0) / 2
    dh = dph + (dpy1 - dpy0) / 2
    return np.stack([dcx, dcy, dw, dh], axis=1)          # (B, 4)


def box_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """pred, target (B, 4) as (cx, cy, w, h) -> IoU (B,) (computed as giou_loss_forward does)."""
    return giou_loss_forward(pred, target)[1]["iou"]


def query_pool_forward(x: np.ndarray, query: np.ndarray):
    """x (B, N, D), query (D,) -> out (B, D), cache: attention pooling with one learned query.

    scores = x @ query / sqrt(D)   (B, N)
    a      = softmax over the N tokens
    out    = sum_n a[:, n] * x[:, n]
    cache["attn"] is a (B, N): how much of each token the box head reads.
    """
    D = x.shape[-1]
    scale = 1.0 / float(np.sqrt(D))                     # a Python float: keeps float32 float32
    s = (x @ query) * scale                              # (B, N)
    s = s - s.max(axis=1, keepdims=True)                 # shift: same softmax, no overflow
    e = np.exp(s)
    a = e / e.sum(axis=1, keepdims=True)                 # (B, N)
    out = (a[:, :, None] * x).sum(axis=1)                # (B, D)
    return out, {"x": x, "query": query, "attn": a, "scale": scale}


def query_pool_backward(dout: np.ndarray, cache):
    """dout (B, D) -> dx (B, N, D), dquery (D,)."""
    x, q, a, scale = cache["x"], cache["query"], cache["attn"], cache["scale"]
    # out = sum_n a_n x_n: each token gets a_n of dout, and each weight gets x_n . dout
    dx = a[:, :, None] * dout[:, None, :]                # (B, N, D)
    da = (x * dout[:, None, :]).sum(axis=2)              # (B, N)
    # a = softmax(s): ds = a * (da - sum_n a_n da_n)
    ds = a * (da - (a * da).sum(axis=1, keepdims=True))  # (B, N)
    # s = x @ q * scale
    dx = dx + ds[:, :, None] * q * scale
    dquery = (ds[:, :, None] * x).sum(axis=(0, 1)) * scale   # (D,)
    return dx, dquery
