"""Does a map explain the decision? Metrics that score attribution maps against the model.

  spearman(a, b)                 rank correlation of two maps per image (here: a map
                                 and the occlusion drops, Abnar & Zuidema 2020's test)
  deletion_insertion(...)        remove (deletion) or reveal (insertion) patches in a
                                 map's order and follow the class probability
                                 (Petsiuk et al. 2018's RISE paper); curve_area gives
                                 the area under each curve: deletion low, insertion
                                 high = faithful
  top_mass_patches, dino_jaccard the DINO protocol (Caron et al. 2021): keep the top
                                 patches holding 60 % of a map's mass, Jaccard index of
                                 those pixels with the object mask
  randomized_model(model, k)     the model with its head and top k blocks re-initialised
  randomization_check(...)       Adebayo et al. (2018): how much does each method's map
                                 change when the weights are randomised from the top
                                 down? (Spearman of original and randomised maps; near
                                 1 = the map does not depend on what the model learned)
  faithfulness_table(...)        all of it over a dataset, one row per method

The localisation score itself is viz.localisation_score. Maps with negative
entries (grad_x_input, occlusion) are clipped at 0 for the two mask metrics,
which need a mass; an image whose clipped map is all zero is left out of those
two and counted.

Shape letters: B batch, N patches, (gh, gw) grid, H W C image, P patch.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from ._checks import check_array, check_float, check_int
from .explain import METHODS, attribution_maps, forward_chunk, replace_patches
from .model import ViT, init_params
from .viz import localisation_score

__all__ = ["spearman", "deletion_insertion", "curve_area", "top_mass_patches", "dino_jaccard",
           "randomized_model", "randomization_check", "faithfulness_table", "METRICS", "format_table"]

METRICS = ("spearman_occlusion", "deletion_auc", "insertion_auc", "loc_ratio", "dino_jaccard",
           "random_head", "random_all")
METRIC_LABELS = {"spearman_occlusion": "Spearman w/ occlusion", "deletion_auc": "deletion AUC (low)",
                 "insertion_auc": "insertion AUC (high)", "loc_ratio": "localisation ratio",
                 "dino_jaccard": "DINO Jaccard", "random_head": "rand. head: Spearman",
                 "random_all": "rand. all blocks: Spearman"}


def _maps2d(name, maps) -> np.ndarray:
    check_array(name, maps, kind="f", finite=True)
    if maps.ndim == 3:
        return maps.reshape(maps.shape[0], -1)
    if maps.ndim != 2:
        raise ValueError(f"{name}: expected maps (B, N) or (B, gh, gw), got shape {maps.shape}")
    return maps


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..N-1 along the last axis of (B, N), tied values sharing their mean rank."""
    B, N = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    ranks = np.empty((B, N))
    for b in range(B):
        xs = x[b, order[b]]
        r = np.arange(N, dtype=np.float64)
        start = 0
        for i in range(1, N + 1):                    # runs of equal values get their mean rank
            if i == N or xs[i] != xs[start]:
                r[start:i] = (start + i - 1) / 2.0
                start = i
        ranks[b, order[b]] = r
    return ranks


def spearman(a, b) -> np.ndarray:
    """Spearman rank correlation of a[i] and b[i] for each image -> (B,).

    a, b  (B, N) or (B, gh, gw). Ties get their mean rank. NaN where either map is
    constant (its ranks have no spread, so no correlation is defined).
    """
    a, b = _maps2d("a", a), _maps2d("b", b)
    if a.shape != b.shape:
        raise ValueError(f"b: expected the shape of a {a.shape}, got {b.shape}")
    ra, rb = _ranks(a.astype(np.float64)), _ranks(b.astype(np.float64))
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def _order(maps: np.ndarray, rng) -> np.ndarray:
    """(B, N) -> (B, N) the patches from the highest value down; ties in random order."""
    tie = rng.random(maps.shape)
    return np.lexsort((tie, -maps), axis=1)


def _softmax_prob(model, images, classes, chunk=None) -> np.ndarray:
    chunk = chunk or forward_chunk(model)
    out = []
    for s in range(0, images.shape[0], chunk):
        z = model(images[s:s + chunk]).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        out.append(p[np.arange(p.shape[0]), classes[s:s + chunk]])
    return np.concatenate(out)


def deletion_insertion(model, images, classes, maps, baseline: float = 0.0, seed: int = 0,
                       chunk: int | None = None):
    """Deletion and insertion curves of the class probability -> (deletion (B, N+1), insertion (B, N+1)).

    images   (B, H, W, C) as the model takes them; classes (B,); maps (B, N) or (B, gh, gw)
    Step k (k = 0..N) of deletion: the map's top k patches hold ``baseline``, the
    others the image; of insertion: only the top k patches hold the image. Entry k is
    the softmax probability of the class. Ties in a map are broken at random (seeded).
    """
    maps = _maps2d("maps", maps).astype(np.float64)
    B, N = maps.shape
    if images.shape[0] != B:
        raise ValueError(f"maps: expected {images.shape[0]} maps (one per image), got {B}")
    order = _order(maps, np.random.default_rng(seed))                     # (B, N)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(N)[None, :].repeat(B, 0), axis=1)   # rank[b, n]
    k = np.arange(N + 1)[:, None, None]                                  # (N+1, 1, 1)
    top = rank[None] < k                                                 # (N+1, B, N) among the top k
    P = model.config.patch_size
    rep = lambda keep: replace_patches(np.tile(images, (N + 1, 1, 1, 1)), keep.reshape(-1, N), P, baseline)
    cls = np.tile(classes, N + 1)
    deletion = _softmax_prob(model, rep(~top), cls, chunk).reshape(N + 1, B).T
    insertion = _softmax_prob(model, rep(top), cls, chunk).reshape(N + 1, B).T
    return deletion, insertion


def curve_area(curves) -> np.ndarray:
    """(B, N+1) curves over the fraction 0, 1/N, ..., 1 of patches -> (B,) trapezoid areas in [0, 1]."""
    c = np.asarray(curves, dtype=np.float64)
    N = c.shape[-1] - 1
    if N < 1:
        raise ValueError(f"curves: expected at least two points per curve, got shape {c.shape}")
    return (c.sum(axis=-1) - 0.5 * (c[..., 0] + c[..., -1])) / N


def top_mass_patches(maps, mass: float = 0.6) -> np.ndarray:
    """(B, N) non-negative maps -> (B, N) bool: the highest patches that together hold ``mass``
    of the map's total (DINO's rule: a patch is kept while the patches above it hold
    less than ``mass``, so the kept set is the smallest top set holding at least that)."""
    m = _maps2d("maps", maps).astype(np.float64)
    check_float("mass", mass, minimum=0.0, maximum=1.0, open_min=True)
    if (m < 0).any():
        raise ValueError("maps: expected non-negative maps, got negative entries")
    total = m.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise ValueError("maps: expected every map to have positive total mass, got an all-zero map")
    order = np.argsort(-m, axis=1, kind="stable")
    sorted_m = np.take_along_axis(m, order, axis=1) / total
    above = np.cumsum(sorted_m, axis=1) - sorted_m                     # mass of the patches above each
    keep_sorted = above < mass - 1e-12
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return keep


def dino_jaccard(maps, masks, patch_size: int, mass: float = 0.6) -> np.ndarray:
    """The DINO protocol: Jaccard index of the top-``mass`` patches' pixels with each mask -> (B,).

    maps   (B, gh, gw) non-negative; masks (B, H, W) bool, H = gh * P
    """
    check_array("maps", maps, ndim=3, kind="f", finite=True)
    check_array("masks", masks, ndim=3, kind=None, finite=False)
    if masks.dtype != np.bool_:
        raise TypeError(f"masks: expected dtype bool, got {masks.dtype}")
    P = check_int("patch_size", patch_size, minimum=1)
    B, gh, gw = maps.shape
    if masks.shape != (B, gh * P, gw * P):
        raise ValueError(f"masks: expected shape {(B, gh * P, gw * P)} for maps {maps.shape} and patch {P}, "
                         f"got {masks.shape}")
    keep = top_mass_patches(maps, mass).reshape(B, gh, gw)
    pix = np.repeat(np.repeat(keep, P, axis=1), P, axis=2)               # (B, H, W)
    inter = (pix & masks).sum(axis=(1, 2))
    union = (pix | masks).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


# =========================================================== randomisation

def randomized_model(model: ViT, blocks: int, seed: int = 12345) -> ViT:
    """A copy of ``model`` whose head and final norm, and its top ``blocks`` blocks, hold fresh
    initial values (init_params of the same config with another seed); the rest is shared."""
    depth = model.config.depth
    blocks = check_int("blocks", blocks, minimum=0, maximum=depth)
    cfg = type(model.config).from_dict({**model.config.to_dict(), "seed": seed})
    fresh = init_params(cfg)
    redo = ("head.", "norm.") + tuple(f"blocks.{i}." for i in range(depth - blocks, depth))
    params = {k: (fresh[k] if k.startswith(redo) else v) for k, v in model.params.items()}
    return ViT(model.config, params, model.layers)


def randomization_check(model: ViT, images, classes, maps: dict, methods=None, seed: int = 12345,
                        **map_kw) -> dict:
    """Cascading randomisation (Adebayo et al. 2018) from the top: level 0 re-initialises the
    head (and the final norm), level k also the top k blocks, up to every block.

    maps     the original maps (from attribution_maps on ``model``), for the same images
    Returns {level name: {method: (B,) Spearman of original and randomised maps}}; the
    classes explained stay the original ones.
    """
    methods = [m for m in (methods or METHODS) if m in maps]
    out = {}
    for k in range(model.config.depth + 1):
        name = "head" if k == 0 else f"head + top {k} block{'s' if k > 1 else ''}"
        rnd = attribution_maps(randomized_model(model, k, seed), images, classes, methods, **map_kw)
        out[name] = {m: spearman(maps[m], rnd[m]) for m in methods}
    return out


# =========================================================== the table

def _nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def faithfulness_table(model: ViT, images, normalize=None, masks=None, *, methods=METHODS,
                       random_map: bool = True, batch_size: int = 100, randomization_images: int = 200,
                       baseline: float = 0.0, seed: int = 0, progress=None, **map_kw) -> dict:
    """Every metric for every method over a set of images.

    images      (B, H, W, C) raw images (normalised here with ``normalize``, the TrainConfig's)
    masks       (B, H, W) bool object masks, or None (then no localisation, no DINO)
    methods     the attribution methods; with random_map, a "random" map (seeded uniform
                noise) is added as the floor every metric should beat
    randomization_images  the check runs on the first this many images (it recomputes every
                map depth + 1 times)
    progress    None, or a stream to print progress lines to
    map_kw      passed to attribution_maps (block, head, query, residual)
    Returns {"rows": {method: {metric: value, "n_<metric>": images counted}},
             "curves": {method: {"deletion": (N+1,), "insertion": (N+1,)}} (means over images),
             "randomization": {level: {method: mean Spearman}}, "images": B}.
    The maps explain each image's predicted class.
    """
    from .train import normalize_images

    check_array("images", images, ndim=4, kind="f", finite=True)
    B = images.shape[0]
    check_int("batch_size", batch_size, minimum=1)
    if masks is not None and masks.shape != images.shape[:3]:
        raise ValueError(f"masks: expected shape {images.shape[:3]}, got {masks.shape}")
    names = list(methods) + (["random"] if random_map else [])
    P = model.config.patch_size
    rng = np.random.default_rng(seed)
    acc = {m: {k: [] for k in ("spearman", "deletion", "insertion", "del_curve", "ins_curve",
                               "share", "uniform", "jaccard")} for m in names}
    rand_acc: dict = {}
    start = time.time()
    dtype = np.dtype(model.config.dtype)
    for s in range(0, B, batch_size):
        x = normalize_images(images[s:s + batch_size], normalize).astype(dtype, copy=False)
        maps = attribution_maps(model, x, None, methods, baseline=baseline, **map_kw)
        classes = maps["classes"]
        if random_map:
            maps["random"] = rng.random(maps[methods[0]].shape)
        occ = maps.get("occlusion")
        for m in names:
            a = maps[m]
            if occ is not None:
                acc[m]["spearman"].append(spearman(a, occ))
            d, i = deletion_insertion(model, x, classes, a, baseline, seed=seed + s)
            acc[m]["deletion"].append(curve_area(d))
            acc[m]["insertion"].append(curve_area(i))
            acc[m]["del_curve"].append(d)
            acc[m]["ins_curve"].append(i)
            if masks is not None:
                mk = masks[s:s + batch_size]
                pos = np.maximum(a, 0.0)
                ok = pos.sum(axis=(1, 2)) > 0
                if ok.any():
                    ls = localisation_score(pos[ok], mk[ok], P)
                    acc[m]["share"].append(ls["per_image_share"])
                    acc[m]["uniform"].append(ls["per_image_uniform"])
                    acc[m]["jaccard"].append(dino_jaccard(pos[ok], mk[ok], P))
        if s < randomization_images:
            n = min(batch_size, randomization_images - s)
            sub = {m: maps[m][:n] for m in methods}
            rc = randomization_check(model, x[:n], classes[:n], sub, methods, baseline=baseline, **map_kw)
            for level, per in rc.items():
                for m, v in per.items():
                    rand_acc.setdefault(level, {}).setdefault(m, []).append(v)
        if progress is not None:
            done = min(s + batch_size, B)
            el = time.time() - start
            print(f"  images {done}/{B}  {el:.0f} s elapsed, ETA {el / done * (B - done):.0f} s",
                  file=progress, flush=True)
    cat = lambda v: np.concatenate(v) if v else np.zeros(0)
    rows, curves = {}, {}
    levels = list(rand_acc)
    for m in names:
        a = acc[m]
        sp = cat(a["spearman"])
        share, uniform, jac = cat(a["share"]), cat(a["uniform"]), cat(a["jaccard"])
        row = {"spearman_occlusion": _nanmean(sp), "n_spearman_occlusion": int(np.isfinite(sp).sum()),
               "deletion_auc": _nanmean(cat(a["deletion"])), "insertion_auc": _nanmean(cat(a["insertion"])),
               "loc_ratio": float(share.mean() / uniform.mean()) if share.size else float("nan"),
               "loc_share": _nanmean(share), "n_loc_ratio": int(share.size),
               "dino_jaccard": _nanmean(jac), "n_dino_jaccard": int(jac.size)}
        for key, level in (("random_head", levels[0] if levels else None),
                           ("random_all", levels[-1] if levels else None)):
            v = cat(rand_acc[level][m]) if level and m in rand_acc[level] else np.zeros(0)
            row[key] = _nanmean(v)
            row[f"n_{key}"] = int(np.isfinite(v).sum())
        rows[m] = row
        curves[m] = {"deletion": np.concatenate(a["del_curve"]).mean(axis=0),
                     "insertion": np.concatenate(a["ins_curve"]).mean(axis=0)}
    randomization = {level: {m: _nanmean(cat(v)) for m, v in per.items()} for level, per in rand_acc.items()}
    return {"rows": rows, "curves": curves, "randomization": randomization, "images": int(B),
            "randomization_images": int(min(B, randomization_images))}


def format_table(result: dict, metrics=METRICS) -> str:
    """A Markdown table: one row per method, one column per metric (3 decimals)."""
    from .explain import method_label
    head = "| method | " + " | ".join(METRIC_LABELS[k] for k in metrics) + " |"
    lines = [head, "| --- |" + " ---: |" * len(metrics)]
    for m, row in result["rows"].items():
        cells = []
        for k in metrics:
            v = row.get(k, float("nan"))
            cells.append("n/a" if v is None or not np.isfinite(v) else f"{v:.3f}")
        label = method_label(m).replace("|", "\\|")        # "|input gradient|" inside a table cell
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(result: dict, title: str | None = None, save=None):
    """The mean deletion and insertion curves of every method, two panels."""
    from .explain import method_label
    from .viz import _finish, _new_figure
    fig = _new_figure(9.0, 3.6)
    fig.suptitle(title or f"deletion and insertion curves (mean over {result['images']} images)", fontsize=10)
    for p, (kind, better) in enumerate((("deletion", "lower area = more faithful"),
                                        ("insertion", "higher area = more faithful"))):
        ax = fig.add_subplot(1, 2, p + 1)
        for m, c in result["curves"].items():
            y = c[kind]
            x = np.linspace(0.0, 1.0, len(y))
            style = dict(ls="--", color="0.4") if m == "random" else \
                dict(ls="-", color="black", lw=2.2) if m == "occlusion" else {}
            ax.plot(x, y, label=f"{method_label(m)} ({result['rows'][m][kind + '_auc']:.3f})", **style)
        ax.set_title(f"{kind} ({better})", fontsize=9)
        ax.set_xlabel(f"fraction of patches {'removed' if kind == 'deletion' else 'revealed'} "
                      "(in the map's order)", fontsize=8)
        ax.set_ylabel("probability of the explained class", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, title="method (area)", title_fontsize=7)
    return _finish(fig, save)
