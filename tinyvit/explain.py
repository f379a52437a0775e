"""Attribution maps: which patches does a class logit depend on? Seven answers.

Every map is over the patch grid (gh, gw) and says how much each patch matters
for the logit of one class c (by default the predicted one). Bigger = more.

  method            what it reads                                           needs
  cls_attention     row 0 of one block's attention, one head (default: the  forward
                    last block, head 0)
  cls_attention_mean  the same row averaged over the heads                  forward
  rollout           attention rollout (Abnar & Zuidema 2020), viz's          forward
  flow              attention flow (Abnar & Zuidema 2020): the max-flow     forward
                    from each input patch to the CLS token through the
                    layer graph whose capacities are the rollout's matrices
  grad_attention    gradient-weighted attention (Chefer, Gur & Wolf 2021,   forward + backward
                    "Generic attention-model explainability"): see
                    gradient_weighted_attention
  input_grad        |d logit_c / d pixel| summed over each patch            forward + backward
  grad_x_input      d logit_c / d pixel * pixel summed over each patch      forward + backward
                    (signed: the first-order estimate of occlusion's drop)
  occlusion         logit_c(x) - logit_c(x with the patch replaced by the   N + 1 forwards
                    baseline): the reference the others are measured against

The gradients come from the model's own backward (``model.attention_grads`` and
``model.backward_with_input`` with dlogits = one-hot(c)), never from finite
differences. The array functions (attention_flow, max_flow,
gradient_weighted_attention, pool_to_patches) take plain arrays, so they can be
checked on hand-made numbers; ``attribution_maps`` runs them on a model.

Shape letters: B batch, H W C image, P patch, (gh, gw) grid, N = gh*gw patches,
T = N + 1 tokens (CLS first), h heads, L blocks.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_array, check_choice, check_float, check_int, describe
from .viz import _attn_array, _grid, attention_rollout, cls_attention

__all__ = ["METHODS", "ATTENTION_METHODS", "GRADIENT_METHODS", "max_flow", "attention_flow",
           "gradient_weighted_attention", "pool_to_patches", "occlusion_drops", "replace_patches",
           "attribution_maps", "method_label", "plot_attribution_maps", "forward_chunk"]

METHODS = ("cls_attention", "cls_attention_mean", "rollout", "flow", "grad_attention",
           "input_grad", "grad_x_input", "occlusion")
ATTENTION_METHODS = ("cls_attention", "cls_attention_mean", "rollout", "flow")   # no gradient at all
GRADIENT_METHODS = ("grad_attention", "input_grad", "grad_x_input")
QUERIES = ("cls", "patches")
_LABELS = {"cls_attention": "CLS attention (1 head)", "cls_attention_mean": "CLS attention (head mean)",
           "rollout": "rollout", "flow": "attention flow", "grad_attention": "grad-weighted attention",
           "input_grad": "|input gradient|", "grad_x_input": "gradient x input", "occlusion": "occlusion",
           "random": "random map"}


def method_label(name: str) -> str:
    """A short human-readable name of a method, for tables and figures."""
    return _LABELS.get(name, name)


# =========================================================== max-flow

def max_flow(capacity, source: int, sink: int, tol: float = 1e-13) -> float:
    """The value of a maximum flow from ``source`` to ``sink`` (Dinic's algorithm).

    capacity  (V, V) non-negative: capacity[u, v] is the capacity of the edge u -> v
    tol       residual capacities at or below this count as saturated

    Dinic: repeat { label every node with its distance from the source in the
    residual graph (a breadth-first search); if the sink is unreachable, stop;
    push flow along shortest paths only (a depth-first search that moves from
    level k to level k + 1) until none is left }. Each push saturates at least
    one edge, and the distance to the sink grows every round, so it ends after
    at most V rounds with the exact maximum (up to floating-point rounding: the
    algorithm only adds and subtracts capacities, no step sizes or iterations
    to converge).
    """
    check_array("capacity", capacity, ndim=2, kind="f", finite=True)
    V = capacity.shape[0]
    if capacity.shape != (V, V):
        raise ValueError(f"capacity: expected a square (V, V) matrix, got {capacity.shape}")
    if (capacity < 0).any():
        raise ValueError("capacity: expected non-negative capacities, got negative entries")
    source = check_int("source", source, minimum=0, maximum=V - 1)
    sink = check_int("sink", sink, minimum=0, maximum=V - 1)
    if source == sink:
        raise ValueError(f"sink: expected a node other than the source {source}, got {sink}")
    R = capacity.astype(np.float64)                  # residual capacities (a copy)
    total = 0.0
    while True:
        # levels: breadth-first distance from the source over edges with residual capacity
        level = np.full(V, -1)
        level[source] = 0
        frontier = np.array([source])
        while frontier.size and level[sink] < 0:
            reach = (R[frontier] > tol).any(axis=0) & (level < 0)     # (V,) newly reached
            level[reach] = level[frontier[0]] + 1
            frontier = np.flatnonzero(reach)
        if level[sink] < 0:
            return total
        # the level graph: u -> v allowed when v is one level further and the edge is not saturated
        ok = (R > tol) & (level[None, :] == level[:, None] + 1) & (level[:, None] >= 0)
        nexts = [list(np.flatnonzero(ok[u])) for u in range(V)]
        ptr = [0] * V                                # first edge of u not yet found useless
        while True:
            pushed = _push(R, nexts, ptr, source, sink, np.inf, tol)
            if pushed <= tol:
                break
            total += pushed


def _push(R, nexts, ptr, u, sink, limit, tol) -> float:
    """Send up to ``limit`` from u to the sink along the level graph; returns what was sent."""
    if u == sink:
        return limit
    while ptr[u] < len(nexts[u]):
        v = nexts[u][ptr[u]]
        r = R[u, v]
        if r > tol:
            sent = _push(R, nexts, ptr, v, sink, min(limit, r), tol)
            if sent > tol:
                R[u, v] -= sent                      # use up capacity u -> v ...
                R[v, u] += sent                      # ... and allow sending it back
                return sent
        ptr[u] += 1                                  # u -> v is saturated or leads nowhere
    return 0.0


# =========================================================== attention-based maps

def _mixing_matrices(attn_list, residual: float) -> list[np.ndarray]:
    """Per block: heads averaged, residual identity added, rows renormalised (as rollout does).
    Returns one (B, T, T) float64 array per block."""
    if isinstance(attn_list, np.ndarray):
        attn_list = [attn_list]
    if not isinstance(attn_list, (list, tuple)) or not attn_list:
        raise TypeError(f"attn_list: expected a non-empty list of (B, h, T, T) arrays, got {describe(attn_list)}")
    check_float("residual", residual, minimum=0.0, maximum=1.0)
    out = []
    for i, a in enumerate(attn_list):
        a = _attn_array(f"attn_list[{i}]", a)
        if a.ndim == 3:
            a = a[None]
        if out and (a.shape[0], a.shape[-1]) != (out[0].shape[0], out[0].shape[-1]):
            raise ValueError(f"attn_list[{i}]: expected batch and tokens {out[0].shape[:1] + out[0].shape[-1:]}, "
                             f"got shape {a.shape}")
        A = a.astype(np.float64).mean(axis=1)                           # (B, T, T)
        A = (1.0 - residual) * A + residual * np.eye(A.shape[-1])
        out.append(A / A.sum(axis=-1, keepdims=True))
    return out


def attention_flow(attn_list, grid=None, residual: float = 0.5, query: str = "cls") -> np.ndarray:
    """Attention flow (Abnar & Zuidema, 2020), computed exactly.

    attn_list  one (B, h, T, T) or (h, T, T) array per block, first block first
    grid       optional (gh, gw): reshape to the patch grid
    residual   as in attention_rollout: block l mixes with A'_l = (1 - r) mean_h(A_l) + r I,
               rows renormalised
    query      "cls": flow into the CLS token; "patches": the mean of the flows into
               each patch token (N times the work)
    The layer graph has a node (l, t) for every layer l = 0..L and token t; the edge
    (l-1, j) -> (l, i) has capacity A'_l[i, j], the share of token i's state at layer l
    that comes from token j at layer l-1. The flow of patch j is the value of a
    maximum flow from node (0, 1 + j) to node (L, 0): unlike rollout, which sums
    the products along all paths, it is limited by the narrowest cut between the
    patch and the CLS token. Returns (B, N) (or (B, gh, gw)); without a batch axis
    in the input, (N,) or (gh, gw).
    """
    first = attn_list[0] if isinstance(attn_list, (list, tuple)) and attn_list else attn_list
    single = isinstance(first, np.ndarray) and first.ndim == 3          # (h, T, T): no batch axis
    check_choice("query", query, QUERIES)
    mats = _mixing_matrices(attn_list, residual)
    B, T = mats[0].shape[0], mats[0].shape[-1]
    N = T - 1
    sinks = [0] if query == "cls" else list(range(1, T))
    out = np.zeros((B, N))
    for b in range(B):
        for s in sinks:
            out[b] += _flows_to(np.stack([m[b] for m in mats]), s)
    out /= len(sinks)
    if grid is not None:
        gh, gw = _grid("grid", grid)
        if gh * gw != N:
            raise ValueError(f"grid: expected gh*gw = T - 1 = {N}, got {(gh, gw)}")
        out = out.reshape(B, gh, gw)
    return out[0] if single else out


def _flows_to(mats: np.ndarray, sink_token: int) -> np.ndarray:
    """mats (L, T, T) mixing matrices -> (N,) max-flow from each input patch to (L, sink_token).

    Only the source's own node of layer 0 and the sink of layer L matter (no flow
    can enter another layer-0 node or leave another layer-L node), so the graph is
    the source, the T nodes of each layer 1..L-1, and the sink.
    """
    L, T, _ = mats.shape
    if L == 1:                                       # one edge from each patch to the sink
        return mats[0, sink_token, 1:].copy()
    V = 2 + (L - 1) * T                              # 0: source, 1..: layers 1..L-1, last: sink
    inner = lambda l: slice(1 + (l - 1) * T, 1 + l * T)                  # nodes of layer l
    cap = np.zeros((V, V))
    for l in range(2, L):                            # layer l-1 -> layer l: cap[j, i] = A'_l[i, j]
        cap[inner(l - 1), inner(l)] = mats[l - 1].T
    cap[inner(L - 1), V - 1] = mats[L - 1][sink_token]                   # layer L-1 -> sink
    flows = np.zeros(T - 1)
    for j in range(1, T):
        cap[0, inner(1)] = mats[0][:, j]             # source (patch j at layer 0) -> layer 1
        flows[j - 1] = max_flow(cap, 0, V - 1)
    return flows


def gradient_weighted_attention(attn_list, grad_list, grid=None, query: str = "cls") -> np.ndarray:
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf 2021b, their rule for self-attention).

    attn_list  one (B, h, T, T) attention array per block, first block first
    grad_list  the gradient of the class logit at each, same shapes
    query      "cls": row 0 of R (what reaches the CLS token); "patches": mean of the patch rows
    Start from R = I (every token is relevant to itself) and, block by block,
        Abar_l = mean over heads of max(0, dy/dA_l * A_l)      (B, T, T)
        R     <- R + Abar_l @ R
    and read the patch columns of R's query row. The product dy/dA * A keeps an
    attention weight only when the logit rises with it (a first-order estimate of
    that weight's share of the logit), the max(0, .) drops the rest, the head mean
    replaces the 2021a paper's per-head LRP, and R + Abar R carries the residual
    connection (the identity) through the blocks, like rollout but class-specific.
    Why this rule: it needs exactly A and dy/dA, both of which tinyvit's backward
    gives; the earlier rule (Chefer et al. 2021a) needs a relevance (LRP) pass
    through every layer, a second backward the model does not have.
    Returns (B, N) or (B, gh, gw); without a batch axis, (N,) or (gh, gw).
    """
    check_choice("query", query, QUERIES)
    if not isinstance(attn_list, (list, tuple)) or not isinstance(grad_list, (list, tuple)) \
            or len(attn_list) != len(grad_list) or not attn_list:
        raise ValueError(f"grad_list: expected one gradient per attention array ({len(attn_list) if isinstance(attn_list, (list, tuple)) else '?'}), "
                         f"got {describe(grad_list)}")
    single = attn_list[0].ndim == 3
    R = None
    for i, (a, g) in enumerate(zip(attn_list, grad_list)):
        a = _attn_array(f"attn_list[{i}]", a)
        check_array(f"grad_list[{i}]", g, kind="f", finite=True)
        if g.shape != a.shape:
            raise ValueError(f"grad_list[{i}]: expected the shape of attn_list[{i}] {a.shape}, got {g.shape}")
        if single:
            a, g = a[None], g[None]
        Abar = np.maximum(g.astype(np.float64) * a, 0.0).mean(axis=1)    # (B, T, T)
        if R is None:
            R = np.broadcast_to(np.eye(a.shape[-1]), Abar.shape).copy()
        R = R + Abar @ R
    out = R[:, 0, 1:] if query == "cls" else R[:, 1:, 1:].mean(axis=1)  # (B, N)
    if grid is not None:
        gh, gw = _grid("grid", grid)
        out = out.reshape(-1, gh, gw)
    return out[0] if single else out


# =========================================================== pixel maps and occlusion

def pool_to_patches(pixel_map, patch_size: int) -> np.ndarray:
    """(B, H, W, C) or (B, H, W) per-pixel values -> (B, gh, gw): the sum over each patch."""
    check_array("pixel_map", pixel_map, kind="f", finite=True)
    P = check_int("patch_size", patch_size, minimum=1)
    m = pixel_map if pixel_map.ndim == 4 else pixel_map[..., None]
    if m.ndim != 4:
        raise ValueError(f"pixel_map: expected (B, H, W, C) or (B, H, W), got shape {pixel_map.shape}")
    B, H, W, C = m.shape
    if H % P or W % P:
        raise ValueError(f"patch_size: expected a divisor of the image size {H}x{W}, got {P}")
    return m.astype(np.float64).reshape(B, H // P, P, W // P, P, C).sum(axis=(2, 4, 5))


def replace_patches(images, keep, patch_size: int, baseline: float = 0.0) -> np.ndarray:
    """A copy of images (B, H, W, C) where the patches with keep[b, n] False hold ``baseline``.

    keep  (B, N) bool, patches numbered row by row as patchify orders them
    """
    B, H, W, C = images.shape
    P = patch_size
    gh, gw = H // P, W // P
    if keep.shape != (B, gh * gw):
        raise ValueError(f"keep: expected shape {(B, gh * gw)}, got {keep.shape}")
    pix = np.repeat(np.repeat(keep.reshape(B, gh, gw), P, axis=1), P, axis=2)      # (B, H, W)
    return np.where(pix[..., None], images, np.asarray(baseline, dtype=images.dtype)).astype(images.dtype)


def forward_chunk(model) -> int:
    """How many images one forward should take so its cache (every block's activations and
    attention) stays near 256 MB: 512 for tinyvit's small models, 1 for a ViT-B/16 at 224."""
    cfg = model.config
    T, D, M = cfg.num_tokens, cfg.dim, cfg.mlp_dim
    per_image = cfg.depth * (2 * cfg.heads * T * T + 8 * T * D + 3 * T * M) * np.dtype(cfg.dtype).itemsize
    return int(min(512, max(1, 2 ** 28 // per_image)))


def _class_logits(model, images, classes, chunk: int | None = None) -> np.ndarray:
    """logit of class classes[b] for images[b], computed ``chunk`` images at a time -> (B,)."""
    chunk = chunk or forward_chunk(model)
    out = []
    for s in range(0, images.shape[0], chunk):
        z = model(images[s:s + chunk])
        out.append(z[np.arange(z.shape[0]), classes[s:s + chunk]])
    return np.concatenate(out).astype(np.float64)


def occlusion_drops(model, images, classes, baseline: float = 0.0, chunk: int | None = None) -> np.ndarray:
    """For every patch n: logit_c(x) - logit_c(x with patch n set to ``baseline``) -> (B, N).

    images   (B, H, W, C) as the model takes them (normalised)
    classes  (B,) the class whose logit is followed
    baseline the value a removed patch holds. 0 in the model's input space is the
             image's mean for images normalised per image (tinyvit train's default)
    The occluded images are made ``chunk`` at a time (default: forward_chunk(model)).
    """
    B = images.shape[0]
    N = model.config.num_patches
    chunk = chunk or forward_chunk(model)
    base = _class_logits(model, images, classes, chunk)                             # (B,)
    keep = ~np.eye(N, dtype=bool)                                                   # (N, N) row n: all but n
    drops = np.empty(B * N)
    for s in range(0, B * N, chunk):                 # occluded image s is image s // N without patch s % N
        idx = np.arange(s, min(s + chunk, B * N))
        occluded = replace_patches(images[idx // N], keep[idx % N], model.config.patch_size, baseline)
        drops[idx] = base[idx // N] - _class_logits(model, occluded, classes[idx // N], chunk)
    return drops.reshape(B, N)


# =========================================================== all methods on a model

def _check_classes(model, images, classes):
    if classes is None:
        return None
    classes = np.asarray(classes) if not isinstance(classes, np.ndarray) else classes
    check_array("classes", classes, ndim=1, kind="i")
    if classes.shape[0] != images.shape[0]:
        raise ValueError(f"classes: expected {images.shape[0]} class indices (one per image), got {classes.shape[0]}")
    K = model.config.num_classes
    if classes.size and (classes.min() < 0 or classes.max() >= K):
        raise ValueError(f"classes: expected values in [0, {K - 1}], got {int(classes[(classes < 0) | (classes >= K)][0])}")
    return classes.astype(np.int64)


def attribution_maps(model, images, classes=None, methods=METHODS, *, block: int = -1, head: int = 0,
                     query: str = "cls", residual: float = 0.5, baseline: float = 0.0,
                     max_flow_nodes: int = 2000) -> dict:
    """Every requested method's map for images (B, H, W, C) (as the model takes them).

    classes   (B,) the class to explain per image; None: the predicted class
    block, head   which block and head ``cls_attention`` shows (block -1: the last)
    query     "cls" (default): maps of what reaches the CLS token; "patches": of what
              reaches the patch tokens on average (what a pool="mean" head reads). It
              applies to cls_attention(_mean), rollout, flow and grad_attention.
    residual  the identity weight of rollout and flow
    baseline  the value occlusion puts in a removed patch
    max_flow_nodes  "flow" is skipped (left out of the result) when its graph,
              2 + (L - 1) * T nodes, is larger: exact max-flow in Python is for small models
    Returns {"classes": (B,), "logits": (B, K), method: (B, gh, gw) float64, ...}.
    """
    model.check_images(images)
    if isinstance(methods, str):
        methods = (methods,)
    for m in methods:
        check_choice("methods", m, METHODS)
    check_choice("query", query, QUERIES)
    cfg = model.config
    depth = cfg.depth
    block = check_int("block", block, minimum=-depth, maximum=depth - 1) % depth
    head = check_int("head", head, minimum=0, maximum=cfg.heads - 1)
    classes = _check_classes(model, images, classes)
    grid, P = cfg.grid, cfg.patch_size
    logits, cache = model.forward(images)
    if classes is None:
        classes = logits.argmax(axis=1)
    B = images.shape[0]
    out = {"classes": classes, "logits": logits}
    attn = cache["attn"]
    if query == "cls":
        rows = [a[:, :, 0, 1:].astype(np.float64) for a in attn]               # (B, h, N)
    else:
        rows = [a[:, :, 1:, 1:].astype(np.float64).mean(axis=2) for a in attn]
    if "cls_attention" in methods:
        out["cls_attention"] = rows[block][:, head].reshape(B, *grid)
    if "cls_attention_mean" in methods:
        out["cls_attention_mean"] = rows[block].mean(axis=1).reshape(B, *grid)
    if "rollout" in methods:
        out["rollout"] = attention_rollout(attn, grid, residual=residual, query=query)
    if "flow" in methods and 2 + (depth - 1) * cfg.num_tokens <= max_flow_nodes:
        out["flow"] = attention_flow(attn, grid, residual=residual, query=query)
    if any(m in methods for m in GRADIENT_METHODS):
        onehot = np.zeros_like(logits)
        onehot[np.arange(B), classes] = 1.0                 # d logit_c / d logits
        if "grad_attention" in methods:
            grads = model.attention_grads(onehot, cache)
            out["grad_attention"] = gradient_weighted_attention(attn, grads, grid, query=query)
        if "input_grad" in methods or "grad_x_input" in methods:
            _, dimages = model.backward_with_input(onehot, cache)             # (B, H, W, C)
            if "input_grad" in methods:
                out["input_grad"] = pool_to_patches(np.abs(dimages), P)
            if "grad_x_input" in methods:
                out["grad_x_input"] = pool_to_patches(dimages * (images - baseline), P)
    if "occlusion" in methods:
        out["occlusion"] = occlusion_drops(model, images, classes, baseline).reshape(B, *grid)
    return out


# =========================================================== figure

def plot_attribution_maps(image, maps: dict, index: int = 0, methods=None, title: str | None = None,
                          mask=None, save=None):
    """The image and every method's map side by side, each over the image.

    image    (H, W, C) or (H, W) for display
    maps     a dict from attribution_maps (image ``index`` of each (B, gh, gw) map is shown)
    methods  which maps, in order (default: every method present)
    mask     optional (H, W) bool object mask, outlined in cyan
    Each map is scaled to its own range: maps with negative entries (grad_x_input,
    occlusion) on a diverging scale symmetric around 0 (red: the logit depends on
    the patch, blue: removing it would raise the logit), the others 0 .. max.
    """
    from .viz import _display, _finish, _image, _new_figure
    img = _image("image", image)
    if methods is None:
        methods = [m for m in (*METHODS, "random") if m in maps]
    H, W = img.shape[:2]
    cols = len(methods) + 1
    fig = _new_figure(1.9 * cols + 0.4, 2.55)
    fig.suptitle(title or "attribution maps (each scaled to its own range)", fontsize=10)
    shown, cmap = _display(img)
    ax = fig.add_subplot(1, cols, 1)
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, extent=(0, W, H, 0), interpolation="nearest")
    ax.set_title("image", fontsize=8)
    axes = [ax]
    for k, m in enumerate(methods):
        a = np.asarray(maps[m][index], dtype=np.float64)
        ax = fig.add_subplot(1, cols, k + 2)
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, extent=(0, W, H, 0), interpolation="nearest")
        if a.min() < 0:
            v = float(np.abs(a).max()) or 1.0
            im = ax.imshow(a, cmap="RdBu_r", vmin=-v, vmax=v, alpha=0.7, extent=(0, W, H, 0),
                           interpolation="nearest")
        else:
            im = ax.imshow(a, cmap="inferno", vmin=0.0, vmax=float(a.max()) or 1.0, alpha=0.65,
                           extent=(0, W, H, 0), interpolation="nearest")
        ax.set_title(method_label(m), fontsize=8)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, orientation="horizontal")
        cb.ax.tick_params(labelsize=6)
        axes.append(ax)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        if mask is not None:
            ax.contour(np.arange(W) + 0.5, np.arange(H) + 0.5, np.asarray(mask, dtype=float), levels=[0.5],
                       colors="cyan", linewidths=0.8)
    return _finish(fig, save)
