"""Pictures of what a ViT does: patches, tokens, attention, rollout, curves.

Two kinds of functions live here:

* numbers (plain NumPy, tested against hand-computed cases):
    cls_attention(attn, grid)            the CLS row of every head on the patch grid
    attention_rollout(attn_list, grid)   Abnar & Zuidema (2020) attention rollout
    pos_embed_similarity(pos, grid)      cosine similarity between position embeddings
    object_patches(masks, patch_size)    which patches overlap an object mask
    localisation_score(maps, masks, P)   how much of a map falls on the object
* plots (each returns a matplotlib Figure and, given ``save=path``, writes it):
    plot_patch_grid, plot_token_sequence, plot_cls_attention, plot_attention_grid,
    plot_rollout, plot_pos_embed_similarity, plot_history, plot_confusion

The plots build ``matplotlib.figure.Figure`` objects directly instead of going
through pyplot, so they never need a display and never pile up open windows.
In Jupyter a Figure shown as a cell's last value is drawn inline; elsewhere
pass ``save="figures/name.png"``.

Every overlay draws its map with ``imshow(..., extent=(0, W, H, 0),
interpolation="nearest")``: the (gh, gw) map is stretched over exactly the
pixels of the image, so map cell (i, j) covers patch (i, j) and nothing else.

Shape letters: B batch, H W C image, P patch, (gh, gw) patch grid, N = gh*gw
patches, T = N + 1 tokens with the CLS token at position 0, h heads, D width,
L blocks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ._checks import check_array, check_int, describe

__all__ = [
    "cls_attention", "attention_rollout", "pos_embed_similarity", "object_patches",
    "localisation_score",
    "plot_patch_grid", "plot_token_sequence", "plot_cls_attention", "plot_attention_grid",
    "plot_rollout", "plot_pos_embed_similarity", "plot_history", "plot_confusion",
    "save_figure",
]

MAP_CMAP = "inferno"        # attention maps: dark = little, bright = much
SIM_CMAP = "RdBu_r"         # signed similarities: blue negative, red positive


# =========================================================== helpers

def _grid(name: str, grid) -> tuple[int, int]:
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        g = check_int(name, grid, minimum=1)
        return g, g
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise TypeError(f"{name}: expected (gh, gw) or an int, got {describe(grid)}")
    return check_int(f"{name}[0]", grid[0], minimum=1), check_int(f"{name}[1]", grid[1], minimum=1)


def _image(name: str, image) -> np.ndarray:
    """One image (H, W), (H, W, C) or (1, H, W, C) -> (H, W, C) float64."""
    check_array(name, image, kind=None, finite=False)
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[2] not in (1, 3):
        raise ValueError(f"{name}: expected one image (H, W), (H, W, 1) or (H, W, 3), got shape {np.shape(image)}")
    return x


def _display(img: np.ndarray):
    """(H, W, C) -> something imshow draws faithfully, and its colour map.

    Values in [0, 1] are shown as they are; anything else (a normalised
    image, say) is stretched min..max into [0, 1] for display only.
    """
    x = img
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    if lo < 0.0 or hi > 1.0:
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if x.shape[2] == 1:
        return x[:, :, 0], "gray"
    return x, None


def save_figure(fig, path) -> Path:
    """Write ``fig`` to ``path`` atomically (temp file in the same folder, then rename).

    The format follows the suffix (.png, .pdf, .svg); missing folders are made.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{fmt}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=fig.dpi, bbox_inches="tight", pad_inches=0.08)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _finish(fig, save):
    if save is not None:
        save_figure(fig, save)
    return fig


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure        # no pyplot: no display, no global state
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _draw_grid_lines(ax, H: int, W: int, gh: int, gw: int, color="white", lw=0.6, alpha=0.5):
    for i in range(1, gh):
        ax.axhline(i * H / gh, color=color, lw=lw, alpha=alpha)
    for j in range(1, gw):
        ax.axvline(j * W / gw, color=color, lw=lw, alpha=alpha)


def _overlay(ax, img, amap, vmax=None, alpha=0.6, grid_lines=True):
    """Draw image ``img`` (H, W, C) and a (gh, gw) map stretched over exactly its pixels."""
    H, W = img.shape[:2]
    shown, cmap = _display(img)
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, extent=(0, W, H, 0), interpolation="nearest")
    im = ax.imshow(amap, cmap=MAP_CMAP, vmin=0.0, vmax=vmax, alpha=alpha,
                   extent=(0, W, H, 0), interpolation="nearest")
    if grid_lines:
        _draw_grid_lines(ax, H, W, amap.shape[0], amap.shape[1], lw=0.4, alpha=0.35)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _attn_array(name: str, a) -> np.ndarray:
    check_array(name, a, kind="f", finite=True)
    if a.ndim not in (3, 4) or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name}: expected attention probabilities (B, h, T, T) or (h, T, T), "
                         f"got shape {a.shape}")
    return a


# =========================================================== numbers

def cls_attention(attn, grid) -> np.ndarray:
    """What the CLS token attends to, as maps on the patch grid.

    attn  one block's attention probabilities (B, h, T, T) or (h, T, T), or a
          list of them (one per block)
    grid  (gh, gw) with gh * gw = N = T - 1
    Returns row 0 (the CLS query), columns 1..T-1 (the patch keys), reshaped:
      (B, h, gh, gw) or (h, gh, gw) for one block; (L, B, h, gh, gw) or
      (L, h, gh, gw) for a list. Entry [..., i, j] is the weight the CLS token
    gives to patch i*gw + j. The weight it gives itself (column 0) is left out,
    so a map sums to 1 - attn[..., 0, 0].
    """
    gh, gw = _grid("grid", grid)
    if isinstance(attn, (list, tuple)):
        if not attn:
            raise ValueError("attn: expected at least one block's attention, got an empty list")
        return np.stack([cls_attention(a, (gh, gw)) for a in attn])
    a = _attn_array("attn", attn)
    T = a.shape[-1]
    if T != gh * gw + 1:
        raise ValueError(f"attn: expected T = gh*gw + 1 = {gh * gw + 1} tokens for grid {(gh, gw)}, got T = {T}")
    row = a[..., 0, 1:]                                  # (..., N)  CLS query over patch keys
    return row.reshape(*row.shape[:-1], gh, gw)          # (..., gh, gw)


def attention_rollout(attn_list, grid=None, residual: float = 0.5, query: str = "cls") -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): how much each patch reaches the CLS token.

    attn_list  one (B, h, T, T) or (h, T, T) array per block, first block first
    grid       optional (gh, gw): reshape the result to the patch grid
    residual   weight of the identity that stands for the residual path
    For every block l: average the heads, A_l = (1 - residual) * mean_h(attn) +
    residual * I (the block's output is its input plus the attention's), and
    renormalise each row to sum to one. Tokens flow x_l = A_l x_{l-1}, so the
    input-to-output mixing is R = A_L @ ... @ A_2 @ A_1 (last block leftmost).
    query      "cls": read R's CLS row, R[:, 0, 1:] (what reaches the CLS token);
               "patches": the mean of the patch rows, R[:, 1:, 1:].mean(1) (what
               reaches the patch tokens on average: the map that matters for a
               pool="mean" model, whose head reads the mean of the patch tokens)
    Returns (B, N), or (B, gh, gw) with grid; without a batch axis, (N,) or
    (gh, gw). The CLS column is dropped, so with query="cls" the entries sum
    to 1 - R[:, 0, 0].
    """
    if not isinstance(attn_list, (list, tuple)):
        if isinstance(attn_list, np.ndarray) and attn_list.ndim in (3, 4):
            attn_list = [attn_list]
        else:
            raise TypeError(f"attn_list: expected a list of (B, h, T, T) arrays, one per block, "
                            f"got {describe(attn_list)}")
    if not attn_list:
        raise ValueError("attn_list: expected at least one block's attention, got an empty list")
    if query not in ("cls", "patches"):
        raise ValueError(f"query: expected 'cls' or 'patches', got {query!r}")
    if isinstance(residual, bool) or not isinstance(residual, (int, float)) or not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual: expected a number in [0, 1], got {residual!r}")
    arrays = [_attn_array(f"attn_list[{i}]", a) for i, a in enumerate(attn_list)]
    shape = arrays[0].shape
    for i, a in enumerate(arrays):       # heads may differ between blocks; batch and T may not
        if a.ndim != len(shape) or a.shape[:-3] + a.shape[-2:] != shape[:-3] + shape[-2:]:
            raise ValueError(f"attn_list[{i}]: expected the batch and token axes of block 0 {shape}, "
                             f"got {a.shape}")
    T = shape[-1]
    eye = np.eye(T)
    R = None
    for a in arrays:
        A = a.astype(np.float64).mean(axis=-3)            # (B, T, T) or (T, T): heads averaged
        A = (1.0 - residual) * A + residual * eye         # the residual path
        A = A / A.sum(axis=-1, keepdims=True)             # rows sum to one again
        R = A if R is None else A @ R                     # later blocks multiply on the left
    if query == "cls":
        out = R[..., 0, 1:]                               # (B, N) or (N,)
    else:
        out = R[..., 1:, 1:].mean(axis=-2)                # (B, N) or (N,)
    if grid is not None:
        gh, gw = _grid("grid", grid)
        if gh * gw != T - 1:
            raise ValueError(f"grid: expected gh*gw = T - 1 = {T - 1}, got {(gh, gw)}")
        out = out.reshape(*out.shape[:-1], gh, gw)
    return out


def pos_embed_similarity(pos_embed, grid) -> np.ndarray:
    """Cosine similarity between the position embeddings of every pair of patches.

    pos_embed  (1, T, D), (T, D) with the CLS position first, or (N, D) without it
    grid       (gh, gw), N = gh * gw
    Returns S (gh, gw, gh, gw): S[i, j] is the (gh, gw) map of how similar the
    embedding of patch (i, j) is to every patch's; S[i, j, i, j] = 1.
    """
    gh, gw = _grid("grid", grid)
    N = gh * gw
    check_array("pos_embed", pos_embed, kind="f", finite=True)
    E = pos_embed[0] if pos_embed.ndim == 3 and pos_embed.shape[0] == 1 else pos_embed
    if E.ndim != 2 or E.shape[0] not in (N, N + 1):
        raise ValueError(f"pos_embed: expected (1, {N + 1}, D), ({N + 1}, D) or ({N}, D) for grid {(gh, gw)}, "
                         f"got shape {pos_embed.shape}")
    E = E[-N:].astype(np.float64)                         # (N, D) drop the CLS position
    norms = np.linalg.norm(E, axis=1, keepdims=True)      # (N, 1)
    U = E / np.maximum(norms, 1e-12)
    S = U @ U.T                                           # (N, N)
    return S.reshape(gh, gw, gh, gw)


def object_patches(masks, patch_size: int, min_fraction: float = 0.0) -> np.ndarray:
    """masks (B, H, W) or (H, W) bool -> (B, gh, gw) or (gh, gw): True where the
    patch overlaps the object, i.e. where more than ``min_fraction`` of its P*P
    pixels belong to it (default 0: any pixel; 0.5: mostly object)."""
    check_array("masks", masks, kind=None, finite=False)
    if masks.dtype != np.bool_:
        raise TypeError(f"masks: expected dtype bool, got {masks.dtype}")
    P = check_int("patch_size", patch_size, minimum=1)
    m = masks[None] if masks.ndim == 2 else masks
    if m.ndim != 3:
        raise ValueError(f"masks: expected (B, H, W) or (H, W), got shape {masks.shape}")
    B, H, W = m.shape
    if H % P or W % P:
        raise ValueError(f"patch_size: expected a divisor of the mask size {H}x{W}, got {P}")
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, (int, float)) \
            or not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction: expected a number in [0, 1), got {min_fraction!r}")
    frac = m.reshape(B, H // P, P, W // P, P).mean(axis=(2, 4))      # (B, gh, gw) object share
    out = frac > min_fraction
    return out[0] if masks.ndim == 2 else out


def localisation_score(rollout_maps, masks, patch_size: int, min_fraction: float = 0.0) -> dict:
    """How much of a map's mass lands on the object, against a uniform map.

    rollout_maps (B, gh, gw) non-negative maps (e.g. attention_rollout(..., grid))
    masks        (B, H, W) bool object masks, H = gh * P, W = gw * P
    patch_size   P
    min_fraction a patch counts as "object" when more than this share of its
                 pixels is object (default 0: any overlap; see object_patches)
    Each map is normalised to sum to one over the patches. For image b:
      share_b   = mass of map b on patches that overlap the object
      uniform_b = fraction of the patches that overlap the object (what a
                  map spreading its mass evenly would score)
    Returns {"share": mean share_b, "uniform": mean uniform_b,
             "ratio": share / uniform (1 = no better than uniform),
             "per_image_share" (B,), "per_image_uniform" (B,), "images": B}.
    """
    check_array("rollout_maps", rollout_maps, ndim=3, kind="f", finite=True)
    obj = object_patches(masks, patch_size, min_fraction)
    if obj.ndim != 3 or obj.shape != rollout_maps.shape:
        raise ValueError(f"masks: expected (B, H, W) masks whose patch grid matches rollout_maps "
                         f"{rollout_maps.shape}, got masks {masks.shape} with patch_size {patch_size} "
                         f"(grid {obj.shape})")
    if (rollout_maps < 0).any():
        raise ValueError("rollout_maps: expected non-negative maps, got negative entries")
    maps = rollout_maps.astype(np.float64)
    total = maps.sum(axis=(1, 2))                         # (B,)
    if (total <= 0).any():
        raise ValueError("rollout_maps: expected every map to have positive total mass, got an all-zero map")
    share = (maps * obj).sum(axis=(1, 2)) / total         # (B,)
    uniform = obj.mean(axis=(1, 2))                       # (B,)
    s, u = float(share.mean()), float(uniform.mean())
    return {"share": s, "uniform": u, "ratio": s / u if u > 0 else float("nan"),
            "per_image_share": share, "per_image_uniform": uniform, "images": int(maps.shape[0])}


# =========================================================== plots

def plot_patch_grid(image, patch_size: int, show_indices: bool = True, title: str | None = None,
                    save=None):
    """The image cut into its (H/P) x (W/P) grid, each patch labelled with its index.

    image (H, W, C) or (H, W). Patches are numbered row by row, as patchify
    orders them: patch n sits at grid row n // gw, column n % gw.
    """
    img = _image("image", image)
    P = check_int("patch_size", patch_size, minimum=1)
    H, W = img.shape[:2]
    if H % P or W % P:
        raise ValueError(f"patch_size: expected a divisor of the image size {H}x{W}, got {P}")
    gh, gw = H // P, W // P
    side = 4.5
    fig = _new_figure(side * W / max(H, W) + 0.3, side * H / max(H, W) + 0.5)
    ax = fig.add_subplot()
    shown, cmap = _display(img)
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, extent=(0, W, H, 0), interpolation="nearest")
    _draw_grid_lines(ax, H, W, gh, gw, color="yellow", lw=1.0, alpha=0.9)
    if show_indices:
        fs = max(5, min(11, int(110 / max(gh, gw))))
        for n in range(gh * gw):
            r, c = divmod(n, gw)
            ax.text((c + 0.5) * P, (r + 0.5) * P, str(n), ha="center", va="center", fontsize=fs,
                    color="white", bbox=dict(boxstyle="round,pad=0.15", fc="black", alpha=0.55, lw=0))
    ax.set_xticks(np.arange(0, W + 1, P))
    ax.set_yticks(np.arange(0, H + 1, P))
    ax.tick_params(labelsize=7)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_title(title or f"{H}x{W} image, {P}x{P} patches: {gh}x{gw} grid, N={gh * gw}", fontsize=10)
    return _finish(fig, save)


def plot_token_sequence(image, patch_size: int, per_row: int = 17, max_tokens: int | None = None,
                        title: str | None = None, save=None):
    """The sequence the transformer reads: the CLS token at position 0, then the patches.

    image (H, W, C) or (H, W). Token t >= 1 is patch t - 1. Tokens are laid
    out left to right, ``per_row`` to a row; ``max_tokens`` shows only the first few.
    """
    img = _image("image", image)
    P = check_int("patch_size", patch_size, minimum=1)
    per_row = check_int("per_row", per_row, minimum=2)
    H, W = img.shape[:2]
    if H % P or W % P:
        raise ValueError(f"patch_size: expected a divisor of the image size {H}x{W}, got {P}")
    gw = W // P
    N = (H // P) * gw
    T = N + 1
    shown_T = T if max_tokens is None else min(T, check_int("max_tokens", max_tokens, minimum=1))
    cols = min(per_row, shown_T)
    rows = -(-shown_T // cols)
    # One axes; token t occupies the unit cell at column t % cols, row t // cols,
    # drawn 0.8 wide so neighbours stay apart (one imshow per patch: fast).
    fig = _new_figure(0.62 * cols + 0.3, 0.8 * rows + 0.5)
    ax = fig.add_subplot()
    ax.set_title(title or f"token sequence: T = N + 1 = {T} (CLS first, then the patches row by row)",
                 fontsize=10)
    from matplotlib.patches import Rectangle
    disp, cmap = _display(img)
    box = 0.8
    for t in range(shown_T):
        r, c = divmod(t, cols)
        x0, y0 = c, r * 1.35
        if t == 0:
            ax.add_patch(Rectangle((x0, y0), box, box, fc="#d33", ec="black", lw=0.8))
            ax.text(x0 + box / 2, y0 + box / 2, "CLS", ha="center", va="center", color="white",
                    fontsize=8, fontweight="bold")
            label = "CLS"
        else:
            n = t - 1
            pr, pc = divmod(n, gw)
            ax.imshow(disp[pr * P:(pr + 1) * P, pc * P:(pc + 1) * P], cmap=cmap, vmin=0, vmax=1,
                      extent=(x0, x0 + box, y0 + box, y0), interpolation="nearest")
            ax.add_patch(Rectangle((x0, y0), box, box, fill=False, ec="black", lw=0.6))
            label = f"p{n}"
        ax.text(x0 + box / 2, y0 - 0.06, f"t={t}", ha="center", va="bottom", fontsize=6.5,
                color="#d33" if t == 0 else "black")
        ax.text(x0 + box / 2, y0 + box + 0.05, label, ha="center", va="top", fontsize=5.5, color="0.35")
    ax.set_xlim(-0.15, cols)
    ax.set_ylim((rows - 1) * 1.35 + box + 0.3, -0.35)
    ax.set_aspect("equal")
    ax.axis("off")
    return _finish(fig, save)


def plot_cls_attention(image, attn_block, grid, index: int = 0, block: int | None = None,
                       shared_scale: bool = True, title: str | None = None, save=None):
    """One block's CLS attention, every head laid over the image.

    image       (H, W, C) or (H, W): the image the attention belongs to
    attn_block  (B, h, T, T) (image ``index`` of the batch is shown) or (h, T, T)
    grid        (gh, gw) patch grid
    shared_scale  one colour scale for all heads (default; compares heads
                  honestly), otherwise each head is scaled to its own maximum
    Panels: the image, then one per head. The maps are stretched over the image
    with extent=(0, W, H, 0), so each coloured cell lies exactly on its patch.
    A raw CLS row spreads over all T = N + 1 tokens (the CLS token's weight on
    itself is not drawn), so a uniform row gives 1/T to every patch: the cyan mark
    on the colour bar, which always reaches at least 5% above 1/T so the mark is
    drawn.
    """
    img = _image("image", image)
    a = _attn_array("attn_block", attn_block)
    if a.ndim == 4:
        index = check_int("index", index, minimum=0, maximum=a.shape[0] - 1)
        a = a[index]
    maps = cls_attention(a, grid)                         # (h, gh, gw)
    h = maps.shape[0]
    H, W = img.shape[:2]
    T = maps.shape[1] * maps.shape[2] + 1                 # a raw row spreads over CLS + N patches
    uniform = 1.0 / T
    cols = h + 1
    fig = _new_figure(2.1 * cols + 0.6, 2.6)
    label = "" if block is None else f"block {block}: "
    fig.suptitle(title or f"{label}CLS attention per head (row 0 of each head's T x T matrix)",
                 fontsize=10)
    ax = fig.add_subplot(1, cols, 1)
    shown, cmap = _display(img)
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, extent=(0, W, H, 0), interpolation="nearest")
    ax.set_title("image", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    vmax_all = max(float(maps.max()), 1.05 * uniform)     # the uniform mark stays on the bar
    axes = []
    for j in range(h):
        ax = fig.add_subplot(1, cols, j + 2)
        vmax = vmax_all if shared_scale else max(float(maps[j].max()), 1.05 * uniform)
        im = _overlay(ax, img, maps[j], vmax=vmax)
        ax.set_title(f"head {j}  (max {maps[j].max():.3g})", fontsize=9)
        axes.append(ax)
        if not shared_scale:
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            cb.ax.tick_params(labelsize=7)
            cb.ax.axhline(uniform, color="cyan", lw=1.5)
    if shared_scale:
        cb = fig.colorbar(im, ax=axes, fraction=0.025, pad=0.02)
        cb.ax.tick_params(labelsize=7)
        cb.ax.axhline(uniform, color="cyan", lw=1.5)
        cb.set_label(f"weight (cyan: uniform 1/T = 1/{T})", fontsize=8)
    return _finish(fig, save)


def plot_attention_grid(image, attn_list, grid, index: int = 0, title: str | None = None, save=None):
    """All blocks x all heads: the CLS attention of each, over the image.

    attn_list  one (B, h, T, T) or (h, T, T) array per block (image ``index`` is shown)
    Rows are blocks (first block on top), columns heads. Each row has its own
    colour scale (0 .. that block's largest weight), given in the row label.
    """
    img = _image("image", image)
    if not isinstance(attn_list, (list, tuple)) or not attn_list:
        raise TypeError(f"attn_list: expected a non-empty list of (B, h, T, T) arrays, got {describe(attn_list)}")
    arrays = []
    for i, a in enumerate(attn_list):
        a = _attn_array(f"attn_list[{i}]", a)
        if a.ndim == 4:
            index = check_int("index", index, minimum=0, maximum=a.shape[0] - 1)
            a = a[index]
        arrays.append(a)
    maps = cls_attention(arrays, grid)                    # (L, h, gh, gw)
    L, h = maps.shape[:2]
    fig = _new_figure(1.75 * h + 1.2, 1.75 * L + 0.6)
    fig.suptitle(title or "CLS attention: blocks (rows) x heads (columns)", fontsize=10)
    for l in range(L):
        vmax = float(maps[l].max())
        row_axes = []
        for j in range(h):
            ax = fig.add_subplot(L, h, l * h + j + 1)
            im = _overlay(ax, img, maps[l, j], vmax=vmax)
            if l == 0:
                ax.set_title(f"head {j}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"block {l}", fontsize=9)
            row_axes.append(ax)
        cb = fig.colorbar(im, ax=row_axes, fraction=0.03, pad=0.02)
        cb.ax.tick_params(labelsize=6)
    return _finish(fig, save)


def plot_rollout(image, rollout_map, mask=None, title: str | None = None, save=None):
    """The attention rollout over the image.

    image        (H, W, C) or (H, W)
    rollout_map  (gh, gw), e.g. attention_rollout(attn, grid)[b]
    mask         optional (H, W) bool object mask, outlined in cyan
    Panels: the image, the map over the image (scaled 0 .. its max), and the
    map alone with its values. The map is renormalised to sum to one over the
    patches for display, so 1/N marks a uniform map.
    """
    img = _image("image", image)
    check_array("rollout_map", rollout_map, ndim=2, kind="f", finite=True)
    H, W = img.shape[:2]
    gh, gw = rollout_map.shape
    if H % gh or W % gw or H // gh != W // gw:
        raise ValueError(f"rollout_map: expected a patch grid that divides the {H}x{W} image, got {rollout_map.shape}")
    m = rollout_map.astype(np.float64)
    tot = m.sum()
    m = m / tot if tot > 0 else m
    N = gh * gw
    fig = _new_figure(8.4, 3.0)
    fig.suptitle(title or "attention rollout: how much each patch reaches the CLS token", fontsize=10)
    shown, cmap = _display(img)
    ax0 = fig.add_subplot(1, 3, 1)
    ax0.imshow(shown, cmap=cmap, vmin=0, vmax=1, extent=(0, W, H, 0), interpolation="nearest")
    ax0.set_title("image", fontsize=9)
    ax1 = fig.add_subplot(1, 3, 2)
    _overlay(ax1, img, m, vmax=max(float(m.max()), 1.05 / N))
    ax1.set_title("rollout over the image", fontsize=9)
    ax2 = fig.add_subplot(1, 3, 3)
    vmax = max(float(m.max()), 1.05 / N)                  # the uniform mark stays on the bar
    im = ax2.imshow(m, cmap=MAP_CMAP, vmin=0.0, vmax=vmax, extent=(0, W, H, 0),
                    interpolation="nearest")
    ax2.set_title("rollout (sums to 1 over patches)", fontsize=9)
    for ax in (ax0, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
    if mask is not None:
        check_array("mask", mask, ndim=2, kind=None, finite=False)
        if mask.shape != (H, W):
            raise ValueError(f"mask: expected shape {(H, W)}, got {mask.shape}")
        for ax in (ax0, ax1, ax2):
            ax.contour(np.arange(W) + 0.5, np.arange(H) + 0.5, mask.astype(float), levels=[0.5],
                       colors="cyan", linewidths=1.0)
    cb = fig.colorbar(im, ax=[ax1, ax2], fraction=0.04, pad=0.02)
    cb.ax.tick_params(labelsize=7)
    cb.ax.axhline(1.0 / N, color="cyan", lw=1.5)
    cb.set_label(f"share (cyan: uniform 1/N = 1/{N})", fontsize=8)
    return _finish(fig, save)


def plot_pos_embed_similarity(pos_embed, grid, vmin: float | None = None, title: str | None = None,
                              save=None):
    """Position-embedding similarity as a (gh x gw) grid of small (gh x gw) maps.

    pos_embed  (1, T, D) / (T, D) / (N, D) embeddings, or an already computed
               similarity array (gh, gw, gh, gw)
    Small map (i, j) shows the cosine similarity of patch (i, j)'s embedding to
    every patch's, all on one colour scale. Learned embeddings that picked up
    the 2-D layout show a bright blob around (i, j) and its row and column;
    random ones show noise with a single bright cell.
    vmin  bottom of the colour scale. Default: when some similarity is negative,
          -1 .. 1 on a diverging map (blue negative, red positive); when all are
          positive (e.g. sin-cos tables), the smallest one .. 1 on a sequential map,
          so the structure is not lost in one shade of red.
    """
    gh, gw = _grid("grid", grid)
    if isinstance(pos_embed, np.ndarray) and pos_embed.shape == (gh, gw, gh, gw):
        S = pos_embed.astype(np.float64)
    else:
        S = pos_embed_similarity(pos_embed, (gh, gw))
    # One image: the gh x gw small maps tiled with a one-cell gap (NaN, drawn white).
    tile = np.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), np.nan)
    for i in range(gh):
        for j in range(gw):
            tile[i * (gh + 1):i * (gh + 1) + gh, j * (gw + 1):j * (gw + 1) + gw] = S[i, j]
    side = min(7.0, max(5.0, 1.1 * max(gh, gw)))
    fig = _new_figure(side * gw / max(gh, gw) + 1.2, side * gh / max(gh, gw) + 0.7)
    ax = fig.add_subplot()
    ax.set_title(title or "position embeddings: cosine similarity of each patch position to all others",
                 fontsize=10)
    import matplotlib
    smin = float(S.min())
    if vmin is None:
        vmin = -1.0 if smin < 0 else float(np.floor(smin * 10) / 10)
    cmap = matplotlib.colormaps[SIM_CMAP if vmin < 0 else "viridis"].with_extremes(bad="white")
    im = ax.imshow(tile, cmap=cmap, vmin=float(vmin), vmax=1.0, interpolation="nearest")
    ax.set_xticks([j * (gw + 1) + (gw - 1) / 2 for j in range(gw)])
    ax.set_xticklabels([f"col {j}" for j in range(gw)], fontsize=7)
    ax.set_yticks([i * (gh + 1) + (gh - 1) / 2 for i in range(gh)])
    ax.set_yticklabels([f"row {i}" for i in range(gh)], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel("small map at (row i, col j): similarity of patch (i, j)'s embedding to every patch's",
                  fontsize=8)
    for s in ax.spines.values():
        s.set_visible(False)
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("cosine similarity", fontsize=8)
    return _finish(fig, save)


def _history_columns(history) -> dict:
    """A training history -> {name: 1-D float array}.

    Accepts a dict of equal-length sequences, a list of per-step/epoch dicts,
    or an object with a ``to_dict()`` or ``history`` attribute holding one of those.
    """
    if hasattr(history, "to_dict") and callable(history.to_dict):
        history = history.to_dict()
    elif hasattr(history, "history") and not isinstance(history, dict):
        history = history.history
    if isinstance(history, (list, tuple)):
        if not history or not all(isinstance(r, dict) for r in history):
            raise TypeError(f"history: expected a non-empty list of dicts, got {describe(history)}")
        keys = []
        for r in history:
            keys += [k for k in r if k not in keys]
        history = {k: [r.get(k, np.nan) for r in history] for k in keys}
    if not isinstance(history, dict):
        raise TypeError(f"history: expected a dict of lists or a list of dicts, got {describe(history)}")
    cols = {}
    for k, v in history.items():
        if isinstance(v, (list, tuple, np.ndarray)) and len(v) and not isinstance(v, str):
            try:
                arr = np.asarray([np.nan if x is None else x for x in v], dtype=np.float64)
            except (TypeError, ValueError):
                continue
            if arr.ndim == 1:
                cols[k] = arr
    return cols


def plot_history(history, title: str | None = None, save=None):
    """Learning curves: loss, accuracy and learning rate.

    A history returned by ``tinyvit.train.train`` (a dict with "steps" and
    "epochs") is drawn by ``tinyvit.train.plot_history`` (loss per step and per
    epoch, accuracy per epoch), with the learning rate per step added on a
    second axis of the loss panel (dashed).

    Any other history: a dict of lists ({"train_loss": [...], "val_acc": [...], "lr": [...],
    "epoch" or "step": [...]}) or a list of per-epoch dicts with such keys.
    Every key containing "loss" goes in the loss panel, "acc" in the accuracy
    panel, "lr" in the learning-rate panel; "epoch" or "step" (if present)
    is the x axis. Series of different lengths each get their own x positions.
    """
    if isinstance(history, dict) and "steps" in history and "epochs" in history:
        from .train import plot_history as train_plot_history
        fig = train_plot_history(history, title=title)
        steps = history["steps"]
        if steps.get("lr") and len(steps["lr"]) == len(steps.get("step", ())):
            ax = fig.axes[0].twinx()
            ax.plot(steps["step"], steps["lr"], color="tab:green", ls="--", lw=1.2, label="learning rate")
            ax.set_ylabel("learning rate (dashed)", color="tab:green")
            ax.tick_params(axis="y", labelcolor="tab:green", labelsize=8)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            ax.set_ylim(bottom=0)
        return _finish(fig, save)
    cols = _history_columns(history)
    xname = next((k for k in ("epoch", "step", "steps", "epochs") if k in cols), None)
    panels = [("loss", [k for k in cols if "loss" in k.lower()]),
              ("accuracy", [k for k in cols if "acc" in k.lower()]),
              ("learning rate", [k for k in cols if k.lower() == "lr" or k.lower().endswith("_lr")
                                 or k.lower().startswith("lr")])]
    panels = [(n, ks) for n, ks in panels if ks]
    if not panels:
        raise ValueError(f"history: expected keys containing 'loss', 'acc' or 'lr', got {sorted(cols)}")
    fig = _new_figure(4.0 * len(panels), 3.2)
    fig.suptitle(title or "learning curves", fontsize=10)
    for p, (name, keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        for k in keys:
            y = cols[k]
            x = cols[xname] if xname and len(cols[xname]) == len(y) else np.arange(1, len(y) + 1)
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], marker="o" if ok.sum() <= 30 else None, ms=3, lw=1.4, label=k)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xname or "record", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if name == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.legend(fontsize=7)
    return _finish(fig, save)


def plot_confusion(confusion, class_names=None, normalize: bool = True, title: str | None = None,
                   save=None):
    """A confusion matrix: rows the true class, columns the predicted one.

    confusion    (K, K) counts; entry [i, j] = images of class i predicted as j
    normalize    colour by the share of each row (each true class sums to 1);
                 the cells are always labelled with the raw counts
    """
    check_array("confusion", confusion, ndim=2, kind=None, finite=True)
    K = confusion.shape[0]
    if confusion.shape != (K, K):
        raise ValueError(f"confusion: expected a square (K, K) matrix, got {confusion.shape}")
    names = [str(i) for i in range(K)] if class_names is None else [str(c) for c in class_names]
    if len(names) != K:
        raise ValueError(f"class_names: expected {K} names, got {len(names)}")
    C = np.asarray(confusion, dtype=np.float64)
    rows = C.sum(axis=1, keepdims=True)
    shown = C / np.where(rows > 0, rows, 1.0) if normalize else C
    side = max(3.5, 0.5 * K + 1.5)
    fig = _new_figure(side + 0.8, side)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None, interpolation="nearest")
    fs = max(5, min(9, int(70 / K)))
    thresh = 0.5 * (shown.max() if shown.size else 1.0)
    for i in range(K):
        for j in range(K):
            v = C[i, j]
            txt = f"{int(v)}" if float(v).is_integer() else f"{v:.2g}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=fs,
                    color="white" if shown[i, j] > thresh else "black")
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    acc = float(np.trace(C) / C.sum()) if C.sum() > 0 else float("nan")
    ax.set_title(title or f"confusion matrix (accuracy {acc:.3f})", fontsize=10)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("share of the true class" if normalize else "count", fontsize=8)
    return _finish(fig, save)
