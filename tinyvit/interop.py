"""Pretrained weights in and out: the original Google ViT ``.npz`` files and timm state dicts.

Two layouts are read and written, exactly, in pure NumPy:

* **Google** -- the ``.npz`` files of the original Vision Transformer release
  (ViT-Ti/16, ViT-S/16, ViT-B/16, ... from github.com/google-research/vision_transformer).
  Flax names, kernels stored (in, out), attention kernels split by head::

    embedding/kernel (P, P, C, D)  embedding/bias (D,)   cls (1, 1, D)
    Transformer/posembed_input/pos_embedding (1, T, D)
    Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias} (D,)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value}/kernel (D, h, d)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value}/bias (h, d)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/out/kernel (h, d, D), out/bias (D,)
    Transformer/encoderblock_{i}/LayerNorm_2/{scale,bias} (D,)
    Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/kernel (D, M), bias (M,)
    Transformer/encoderblock_{i}/MlpBlock_3/Dense_1/kernel (M, D), bias (D,)
    Transformer/encoder_norm/{scale,bias} (D,)    head/kernel (D, K), head/bias (K,)

  Some files put ``opt/target/`` in front of every name (the Flax optimizer's
  copy of the weights). Some ImageNet-21k files carry ``pre_logits/{kernel,bias}``,
  a Dense + tanh layer between the encoder and the head; tinyvit has no such
  layer, so it is skipped with a warning.

  Because tinyvit flattens a patch in (row, column, channel) order and stores
  linear weights (in, out), every Google array maps by a plain reshape:
  the (P, P, C, D) kernel is ``patch_embed.W`` (P*P*C, D) (row ``(py*P + px)*C + c``),
  the (D, h, d) query/key/value kernels are the three (D, D) column blocks of
  ``qkv.W`` (head j in columns j*d .. j*d + d - 1 of its block), and the
  (h, d, D) out kernel is ``proj.W`` (D, D).

* **timm** -- a ``timm`` ``VisionTransformer`` state dict saved as an ``.npz`` of
  named arrays (torch names, Linear weights (out, in), the patch embedding a
  Conv2d weight (D, C, P, P)). On the timm side::

    import numpy as np, timm
    m = timm.create_model("vit_tiny_patch16_224", pretrained=True)
    np.savez("vit_ti16_timm.npz", **{k: v.numpy() for k, v in m.state_dict().items()})

Loading is strict: every array of the file must be used and every parameter
found, with the shape the inferred config asks for; otherwise one ValueError
lists every missing key, every unexpected key and every wrong shape.

What the files do not record, and the loaders therefore take as arguments:
the pooling (``pool``, default "cls" as in both releases), the GELU form
(``gelu``, default "exact" as timm computes it; the JAX reference code calls
flax's ``nn.gelu``, whose default is the tanh approximation, so ``gelu="tanh"``
follows that code to the last digit), and for timm the number of heads (a
fused (3D, D) qkv weight does not show it; the standard widths 192/384/768/
1024/1280 are recognised).

When the image size asked for gives a different patch grid from the
checkpoint's, the position embeddings are resampled (``resample=``):
"bicubic" (the default) is antialiased bicubic, the numbers of
``F.interpolate(mode="bicubic", antialias=True, align_corners=False)``, which
is what timm does when it loads a state dict into a model of another size
(``timm.create_model(..., img_size=...)``, ``resample_abs_pos_embed``);
"bilinear" is ``F.interpolate(mode="bilinear", antialias=False)``, what older
timm code and earlier tinyvit did. The two give different logits (about 1e-2
relative on a real checkpoint), so pick the one the reference you compare with used.

The arrays of an ``.npz`` are read in two steps: the headers first (shapes,
dtypes), from which the config is inferred and the layout checked, then the
data; a file whose header claims more than it holds, or more than the config
asks for, fails with one line before anything large is allocated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping

import numpy as np

from ._checks import check_choice, describe
from ._files import NpzReader, check_memory, save_npz
from .layers import sincos_pos_embed
from .model import DTYPES, GELUS, POOLS, ViT, ViTConfig

# LayerScale (timm's blocks.{i}.ls1.gamma / ls2.gamma): read and written when ViTConfig has it
HAS_LAYER_SCALE = "layer_scale" in {f.name for f in dataclasses.fields(ViTConfig)}
LAYER_SCALE_INIT = 1e-5          # the config's init value for a loaded file (the file holds the gammas)
RESAMPLE_METHODS = ("bicubic", "bilinear")
DEFAULT_RESAMPLE = "bicubic"     # timm's: create_model(..., img_size=...) on a state dict

__all__ = ["load_google_vit", "save_google_vit", "load_timm", "save_timm", "load_model",
           "detect_format", "resize_bilinear", "resize_bicubic", "resample_pos_embed", "google_arrays",
           "timm_arrays", "TIMM_HEADS"]

GOOGLE_PREFIX = "opt/target/"
GOOGLE_POS = "Transformer/posembed_input/pos_embedding"
GOOGLE_IGNORED = ("pre_logits/kernel", "pre_logits/bias")
_MHA = "MultiHeadDotProductAttention_1"

# Heads of the standard timm / Google ViT widths (head width 64, except ViT-H: 16 x 80).
TIMM_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


# ---------------------------------------------------------------------------
# Bilinear resampling of position embeddings
# ---------------------------------------------------------------------------
def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation with half-pixel centres.

    Output sample j sits at input coordinate src = (j + 0.5) * n_in / n_out - 0.5
    (align_corners=False), clamped at 0 below; it mixes inputs floor(src) and
    floor(src) + 1 (clamped to the last index) with weights 1 - frac and frac.
    """
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    A = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(A, (rows, i0), 1.0 - frac)
    np.add.at(A, (rows, i1), frac)                       # i1 == i0 at the edge: weights add to 1
    return A


def resize_bilinear(grid: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of a (h, w, D) array to (h2, w2, D), channels last.

    The same numbers as ``torch.nn.functional.interpolate(x, size, mode="bilinear",
    align_corners=False, antialias=False)`` on the (1, D, h, w) transpose:
    separable, rows first then columns, computed in float64 and returned in the
    input's dtype. No antialiasing when shrinking.
    """
    return _resize_separable(grid, size, _interp_matrix)


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5, as Pillow and torch's antialiased bicubic use)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1                     # |x| < 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a                # 1 <= |x| < 2
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _aa_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D antialiased bicubic resampling, half-pixel centres.

    Output sample i is centred at input coordinate c = (i + 0.5) * s, s = n_in / n_out.
    When shrinking (s > 1) the cubic kernel is stretched by s, so it averages over
    every input it covers (the antialiasing); when enlarging it keeps its width of 4.
    Inputs j with |j + 0.5 - c| inside the kernel's support get weight
    kernel((j + 0.5 - c) / max(s, 1)); each row is divided by its sum, which also
    handles the borders (no clamped or mirrored samples). This is the scheme of
    Pillow's resize and of torch.nn.functional.interpolate(mode="bicubic",
    antialias=True, align_corners=False).
    """
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    A = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):                                          # n_out <= a few hundred
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)                    # int(): toward zero, as torch
        hi = min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = _keys_cubic((j - centre + 0.5) / stretch)
        total = w.sum()
        A[i, lo:hi] = w / total if total != 0 else w
    return A


def _resize_separable(grid: np.ndarray, size, matrix) -> np.ndarray:
    if not isinstance(grid, np.ndarray) or grid.ndim != 3:
        raise ValueError(f"grid: expected an array of shape (h, w, D), got {describe(grid)}")
    h2, w2 = _pair("size", size)
    h, w, D = grid.shape
    check_memory("size", f"{h2}x{w2}", h2 * w2 * D * 8 * 3, f"a resampled grid of width {D}")
    Ah, Aw = matrix(h, h2), matrix(w, w2)                                  # (h2, h), (w2, w)
    x = grid.astype(np.float64)
    x = (Ah @ x.reshape(h, w * D)).reshape(h2, w, D)                       # rows
    x = np.matmul(Aw, x)                                                   # (h2, w2, D), columns
    return x.astype(grid.dtype)


def resize_bicubic(grid: np.ndarray, size) -> np.ndarray:
    """Antialiased bicubic resize of a (h, w, D) array to (h2, w2, D), channels last.

    The numbers of ``torch.nn.functional.interpolate(x, size, mode="bicubic",
    align_corners=False, antialias=True)`` on the (1, D, h, w) transpose, which is
    what timm's ``resample_abs_pos_embed`` calls (timm computes in float32, this in
    float64, returned in the input's dtype). See ``_aa_bicubic_matrix``.
    """
    return _resize_separable(grid, size, _aa_bicubic_matrix)


def resample_pos_embed(pos_embed: np.ndarray, new_grid, old_grid=None,
                       method: str = DEFAULT_RESAMPLE) -> np.ndarray:
    """pos_embed (1, 1 + gh*gw, D) -> (1, 1 + gh2*gw2, D).

    The CLS position is kept as it is; the patch positions, laid out row by row
    on the (gh, gw) grid, are resized to (gh2, gw2). old_grid defaults to the
    square grid that fits the number of patches.

    method "bicubic" (default): antialiased bicubic, what timm does when it loads a
        state dict into a model of another image size (``timm.create_model(...,
        img_size=...)`` and ``resample_abs_pos_embed``, for timm and Google files alike).
    method "bilinear": ``F.interpolate(mode="bilinear", antialias=False)``, what
        older timm code (``resize_pos_embed(..., interpolation="bilinear")``) and
        tinyvit before this option did.
    """
    check_choice("method", method, RESAMPLE_METHODS)
    if not isinstance(pos_embed, np.ndarray) or pos_embed.ndim != 3 or pos_embed.shape[0] != 1 \
            or pos_embed.shape[1] < 2:
        raise ValueError(f"pos_embed: expected shape (1, T, D) with T >= 2, got {describe(pos_embed)}")
    N, D = pos_embed.shape[1] - 1, pos_embed.shape[2]
    gh, gw = _square_grid("pos_embed", N) if old_grid is None else _pair("old_grid", old_grid)
    if gh * gw != N:
        raise ValueError(f"old_grid: expected gh * gw = {N} (the patch positions in pos_embed), "
                         f"got {gh}x{gw} = {gh * gw}")
    gh2, gw2 = _pair("new_grid", new_grid)
    if (gh2, gw2) == (gh, gw):
        return pos_embed.copy()
    resize = resize_bicubic if method == "bicubic" else resize_bilinear
    patches = resize(pos_embed[0, 1:].reshape(gh, gw, D), (gh2, gw2))      # (gh2, gw2, D)
    return np.concatenate([pos_embed[:, :1], patches.reshape(1, gh2 * gw2, D)], axis=1)


def _pair(name, value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        a, b = value
    else:
        a = b = value
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected a positive int or a pair (h, w), got {value!r}")
    return int(a), int(b)


def _square_grid(name, n: int) -> tuple[int, int]:
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"{name}: holds {n} patch positions, not a square grid; pass the image "
                         "size the checkpoint was made for as image_size=(H, W) or "
                         "checkpoint_grid=(gh, gw)")
    return g, g


# ---------------------------------------------------------------------------
# Reading a file, checking a layout
# ---------------------------------------------------------------------------
class _Header:
    """An array of a file not read yet: its shape and dtype from the .npy header."""

    def __init__(self, reader: NpzReader, name: str):
        self.reader, self.name = reader, name
        self.shape, self.dtype = reader.shapes[name], reader.dtypes[name]
        self.ndim = len(self.shape)


def _read_arrays(path_or_dict, what: str) -> dict:
    """name -> array (from a mapping) or _Header (from an .npz path: shapes known, data not
    read). ``_materialize`` reads the data once the layout has been checked."""
    if isinstance(path_or_dict, Mapping):
        items = dict(path_or_dict)
    elif isinstance(path_or_dict, (str, os.PathLike)):
        reader = NpzReader(path_or_dict, what)             # one-line errors naming the file
        items = {k: _Header(reader, k) for k in reader.files}
    else:
        raise TypeError(f"{what}: expected a path to an .npz file or a dict of arrays, "
                        f"got {describe(path_or_dict)}")
    out = {}
    for k, v in items.items():
        if not isinstance(k, str):
            raise TypeError(f"{what}: expected string keys, got {describe(k)}")
        v = v if isinstance(v, _Header) else np.asarray(v)
        if v.dtype.kind != "f":
            raise TypeError(f"{what}[{k!r}]: expected a floating-point array, got dtype {v.dtype}")
        out[k] = v
    return out


def _materialize(arrays: dict) -> dict:
    """The same dict with every _Header replaced by its data (the file is closed after)."""
    out = {k: v.reader.read(v.name) if isinstance(v, _Header) else v for k, v in arrays.items()}
    for v in arrays.values():
        if isinstance(v, _Header):
            v.reader.close()
    return out


def _sizes(arrays, key: str, letters: str, show=lambda k: k) -> tuple[int, ...]:
    """The shape of arrays[key], checked to have one axis per letter, each of size >= 1
    (config inference reads sizes off these; a 0-d bias or 0 heads stops here)."""
    shape = tuple(arrays[key].shape)
    if len(shape) != len(letters) or min(shape, default=1) < 1:
        want = "(" + ", ".join(letters) + ("," if len(letters) == 1 else "") + ")"
        raise ValueError(f"{show(key)}: expected shape {want} with every size >= 1, got {shape}")
    return shape


def _depth(arrays, head: str, sep: str, fmt: str) -> int:
    """The number of blocks, from the highest block index (gaps are then reported as
    missing keys). An index beyond the number of arrays in the file cannot be a real
    block: refused, so a name like blocks.999999999 cannot make the layout table huge."""
    found = _block_indices(arrays, head, sep)
    depth = found[-1] + 1 if found else 0
    if depth > len(arrays):
        raise ValueError(f"{fmt} checkpoint: expected block numbers below the {len(arrays)} arrays "
                         f"in the file, got {head}{found[-1]}{sep}...")
    return depth


def _check_layout(arrays: dict, expected: dict, fmt: str, show=lambda k: k):
    """Raise one ValueError naming every missing key, unexpected key and wrong shape."""
    missing = [show(k) for k in expected if k not in arrays]
    unexpected = [show(k) for k in arrays if k not in expected]
    wrong = [f"{show(k)}: expected shape {expected[k]}, got {arrays[k].shape}"
             for k in expected if k in arrays and tuple(arrays[k].shape) != tuple(expected[k])]
    if missing or unexpected or wrong:
        lines = []
        if missing:
            lines.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if wrong:
            lines.append(f"wrong shapes ({len(wrong)}):")
            lines += ["  " + w for w in wrong]
        raise ValueError(f"{fmt} checkpoint does not match the layout of the config inferred "
                         "from it:\n  " + "\n  ".join(lines))


def _block_indices(keys, head: str, sep: str) -> list[int]:
    """Block numbers i found in keys that start with head + str(i) + sep."""
    found = set()
    for k in keys:
        if k.startswith(head):
            num = k[len(head):].split(sep, 1)[0]
            if num.isdigit():
                found.add(int(num))
    return sorted(found)


def _need(arrays, keys, fmt, show=lambda k: k):
    """The arrays the config is inferred from: all present, or one error naming the absent ones."""
    absent = [show(k) for k in keys if k not in arrays]
    if absent:
        raise ValueError(f"{fmt} checkpoint: cannot infer the model config, missing keys: "
                         + ", ".join(absent))


def _either(arrays, first, second):
    """first if the file has it, else second (inference prefers a 1-D bias: its length is
    the width, whatever the orientation of the matching weight)."""
    return first if first in arrays else second


def _grids(T: int, P: int, image_size, checkpoint_grid):
    """(checkpoint grid, requested grid, requested image size) for a pos-embed with T tokens."""
    N = T - 1
    want = None if image_size is None else _pair("image_size", image_size)
    want_grid = None
    if want is not None:
        if want[0] % P or want[1] % P:
            raise ValueError(f"image_size: expected multiples of the patch size {P}, got "
                             f"{want[0]}x{want[1]}")
        want_grid = (want[0] // P, want[1] // P)
    if checkpoint_grid is not None:
        src = _pair("checkpoint_grid", checkpoint_grid)
        if src[0] * src[1] != N:
            raise ValueError(f"checkpoint_grid: expected gh * gw = {N} (the checkpoint's patch "
                             f"positions), got {src[0]}x{src[1]}")
    elif want_grid is not None and want_grid[0] * want_grid[1] == N:
        src = want_grid                    # the grid asked for has as many patches: take it as is
    else:
        src = _square_grid("pos_embedding", N)
    grid = src if want_grid is None else want_grid
    return src, grid, (grid[0] * P, grid[1] * P)


def _positions(pos, src, grid, pos_embed, dim, fmt, notes, resample=None):
    """The checkpoint's (1, T, D) position embedding, fitted to the new grid -> (value or None)."""
    if pos_embed == "sincos":
        table = sincos_pos_embed(src[0], src[1], dim, cls_token=True, dtype=np.float64)
        err = float(np.abs(pos.astype(np.float64) - table).max())
        if err > 1e-5:
            raise ValueError(f"pos_embed: expected the checkpoint's position embedding to be the "
                             f"fixed sin-cos table for pos_embed='sincos', but it differs by up "
                             f"to {err:.3g}; load it with pos_embed='learned'")
        return None
    if src != tuple(grid):
        check_memory("image_size", f"{grid[0]}x{grid[1]} patches", grid[0] * grid[1] * dim * 8 * 3,
                     "the resampled position embeddings")
        resample = resample or DEFAULT_RESAMPLE
        how = "bilinearly" if resample == "bilinear" else "bicubically with antialiasing"
        notes.append(f"position embeddings resampled {how} from a {src[0]}x{src[1]} grid "
                     f"to {grid[0]}x{grid[1]}")
        return resample_pos_embed(pos, grid, src, method=resample)
    return pos


def _make_model(cfg_kw, params, dtype):
    cfg = ViTConfig(**cfg_kw, dtype=dtype)
    params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params.items()}
    return ViT(cfg, params)


def _check_options(pool, gelu, pos_embed, dtype, resample=DEFAULT_RESAMPLE):
    check_choice("resample", resample, RESAMPLE_METHODS)
    check_choice("pool", pool, POOLS)
    check_choice("gelu", gelu, GELUS)
    check_choice("pos_embed", pos_embed, ("learned", "sincos"))
    check_choice("dtype", np.dtype(dtype).name if dtype in (np.float32, np.float64) else dtype,
                 DTYPES)
    return np.dtype(dtype).name


def _save_npz(arrays: dict, path) -> None:
    """Write arrays to path atomically (tinyvit._files: temporary file, then rename)."""
    save_npz(path, arrays)


def _layer_scale(cfg) -> bool:
    return getattr(cfg, "layer_scale", None) is not None


def _model_arrays(model):
    if not isinstance(model, ViT):
        raise TypeError(f"model: expected a tinyvit ViT, got {describe(model)}")
    cfg, p = model.config, model.params
    pos = p["pos_embed"] if cfg.pos_embed == "learned" else model._fixed_pos
    return cfg, p, pos


# ---------------------------------------------------------------------------
# Google layout
# ---------------------------------------------------------------------------
def _google_shapes(D, h, M, K, P, C, depth, T) -> dict[str, tuple]:
    d = D // h
    s = {"embedding/kernel": (P, P, C, D), "embedding/bias": (D,), "cls": (1, 1, D),
         GOOGLE_POS: (1, T, D)}
    for i in range(depth):
        b, a = f"Transformer/encoderblock_{i}/", f"Transformer/encoderblock_{i}/{_MHA}/"
        s.update({b + "LayerNorm_0/scale": (D,), b + "LayerNorm_0/bias": (D,)})
        for n in ("query", "key", "value"):
            s.update({a + n + "/kernel": (D, h, d), a + n + "/bias": (h, d)})
        s.update({a + "out/kernel": (h, d, D), a + "out/bias": (D,),
                  b + "LayerNorm_2/scale": (D,), b + "LayerNorm_2/bias": (D,),
                  b + "MlpBlock_3/Dense_0/kernel": (D, M), b + "MlpBlock_3/Dense_0/bias": (M,),
                  b + "MlpBlock_3/Dense_1/kernel": (M, D), b + "MlpBlock_3/Dense_1/bias": (D,)})
    s.update({"Transformer/encoder_norm/scale": (D,), "Transformer/encoder_norm/bias": (D,),
              "head/kernel": (D, K), "head/bias": (K,)})
    return s


def google_arrays(model: ViT) -> dict[str, np.ndarray]:
    """A tinyvit model's parameters as a dict in the Google layout (no prefix).

    patch_embed.W (P*P*C, D) -> embedding/kernel (P, P, C, D); qkv.W (D, 3D) ->
    query/key/value kernels (D, h, d); proj.W (D, D) -> out/kernel (h, d, D);
    fc1/fc2 -> MlpBlock_3/Dense_0/Dense_1; norms -> scale/bias. A sin-cos model
    writes its fixed table as the position embedding.
    """
    cfg, p, pos = _model_arrays(model)
    if _layer_scale(cfg):
        raise ValueError("model: the Google ViT layout has no LayerScale (ls1/ls2 gammas); save a "
                         f"model with layer_scale={cfg.layer_scale} with save_timm instead")
    _google_options_check(cfg)
    P, C, D, h, d = cfg.patch_size, cfg.in_channels, cfg.dim, cfg.heads, cfg.head_dim
    out = {"embedding/kernel": p["patch_embed.W"].reshape(P, P, C, D),
           "embedding/bias": p["patch_embed.b"], "cls": p["cls_token"], GOOGLE_POS: pos}
    for i in range(cfg.depth):
        t, b = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        a = b + _MHA + "/"
        out[b + "LayerNorm_0/scale"], out[b + "LayerNorm_0/bias"] = p[t + "norm1.gamma"], p[t + "norm1.beta"]
        W, bias = p[t + "attn.qkv.W"], p[t + "attn.qkv.b"]           # (D, 3D), (3D,)
        for j, n in enumerate(("query", "key", "value")):
            out[a + n + "/kernel"] = W[:, j * D:(j + 1) * D].reshape(D, h, d)
            out[a + n + "/bias"] = bias[j * D:(j + 1) * D].reshape(h, d)
        out[a + "out/kernel"] = p[t + "attn.proj.W"].reshape(h, d, D)
        out[a + "out/bias"] = p[t + "attn.proj.b"]
        out[b + "LayerNorm_2/scale"], out[b + "LayerNorm_2/bias"] = p[t + "norm2.gamma"], p[t + "norm2.beta"]
        out[b + "MlpBlock_3/Dense_0/kernel"], out[b + "MlpBlock_3/Dense_0/bias"] = p[t + "mlp.fc1.W"], p[t + "mlp.fc1.b"]
        out[b + "MlpBlock_3/Dense_1/kernel"], out[b + "MlpBlock_3/Dense_1/bias"] = p[t + "mlp.fc2.W"], p[t + "mlp.fc2.b"]
    out["Transformer/encoder_norm/scale"] = p["norm.gamma"]
    out["Transformer/encoder_norm/bias"] = p["norm.beta"]
    out["head/kernel"], out["head/bias"] = p["head.W"], p["head.b"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_google_vit(model: ViT, path) -> None:
    """Write a tinyvit model as a Google ViT ``.npz`` (the layout ``load_google_vit`` reads).

    Written atomically (temporary file + rename), in the model's dtype, without
    the ``opt/target/`` prefix. The layout has no field for the pooling or the
    GELU form: a pool="mean" model must be loaded back with pool="mean".
    """
    _save_npz(google_arrays(model), path)


def _google_unprefixed(raw: dict):
    """A Google checkpoint's arrays without the "opt/target/" prefix of the training state
    (when it has one) -> (arrays, prefix, ignored keys, notes). Arrays outside the prefix keep
    their name behind a NUL (reported as unexpected, without it); optimizer state and the
    GOOGLE_IGNORED arrays are left out and listed."""
    prefix = GOOGLE_PREFIX if any(k.startswith(GOOGLE_PREFIX) for k in raw) else ""
    notes, ignored = [], []
    arrays = {}
    for k, v in raw.items():
        if prefix and not k.startswith(prefix):
            if k.startswith("opt/"):                        # optimizer state beside the weights
                ignored.append(k)
                continue
            arrays["\0" + k] = v                            # reported as unexpected, unprefixed
            continue
        name = k[len(prefix):]
        if name in GOOGLE_IGNORED:
            ignored.append(k)
            continue
        arrays[name] = v
    if any(k.startswith(prefix + "pre_logits/") for k in ignored):
        msg = ("pre_logits (a Dense + tanh layer between the encoder and the head in some "
               "ImageNet-21k checkpoints) ignored: tinyvit has no such layer, so the head reads "
               "the encoder output directly and its logits differ from the original model's")
        notes.append(msg)
        warnings.warn(msg, stacklevel=4)
    if any(k.startswith("opt/") and not k.startswith(GOOGLE_PREFIX) for k in ignored):
        notes.append("optimizer state (opt/... outside opt/target/) ignored")
    return arrays, prefix, ignored, notes


def _google_block_params(a: dict, i: int, D: int) -> dict:
    """Block i's parameters under tinyvit's names, from a Google checkpoint's arrays."""
    t, b = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
    m = b + _MHA + "/"
    p = {t + "norm1.gamma": a[b + "LayerNorm_0/scale"], t + "norm1.beta": a[b + "LayerNorm_0/bias"]}
    # (D, h, d) -> (D, h*d): head j in columns j*d .. j*d+d-1, then [q | k | v]
    p[t + "attn.qkv.W"] = np.concatenate([a[m + n + "/kernel"].reshape(D, D)
                                          for n in ("query", "key", "value")], axis=1)
    p[t + "attn.qkv.b"] = np.concatenate([a[m + n + "/bias"].reshape(D)
                                          for n in ("query", "key", "value")])
    p[t + "attn.proj.W"] = a[m + "out/kernel"].reshape(D, D)               # (h, d, D) -> (h*d, D)
    p[t + "attn.proj.b"] = a[m + "out/bias"]
    p[t + "norm2.gamma"], p[t + "norm2.beta"] = a[b + "LayerNorm_2/scale"], a[b + "LayerNorm_2/bias"]
    p[t + "mlp.fc1.W"], p[t + "mlp.fc1.b"] = a[b + "MlpBlock_3/Dense_0/kernel"], a[b + "MlpBlock_3/Dense_0/bias"]
    p[t + "mlp.fc2.W"], p[t + "mlp.fc2.b"] = a[b + "MlpBlock_3/Dense_1/kernel"], a[b + "MlpBlock_3/Dense_1/bias"]
    return p


def _load_google(path_or_dict, image_size=None, *, pool="cls", gelu="exact", dtype="float32",
                 pos_embed="learned", checkpoint_grid=None, resample=DEFAULT_RESAMPLE):
    dtype = _check_options(pool, gelu, pos_embed, dtype, resample)
    raw = _read_arrays(path_or_dict, "checkpoint")
    fmt = "Google ViT"
    arrays, prefix, ignored, notes = _google_unprefixed(raw)
    show = lambda k: k[1:] if k.startswith("\0") else prefix + k

    blk0 = "Transformer/encoderblock_0/"
    need = ["embedding/kernel", blk0 + _MHA + "/query/kernel",
            _either(arrays, blk0 + "MlpBlock_3/Dense_0/bias", blk0 + "MlpBlock_3/Dense_0/kernel"),
            _either(arrays, "head/bias", "head/kernel"), GOOGLE_POS]
    _need(arrays, need, fmt, show)
    P, P2, C, D = _sizes(arrays, "embedding/kernel", "PPCD", show)
    if P != P2:
        raise ValueError(f"{show('embedding/kernel')}: expected shape (P, P, C, D) with square "
                         f"patches, got {(P, P2, C, D)}")
    q = _sizes(arrays, need[1], "Dhd", show)
    h = q[1]
    M = _sizes(arrays, need[2], "M" if need[2].endswith("bias") else "DM", show)[-1]
    K = _sizes(arrays, need[3], "K" if need[3].endswith("bias") else "DK", show)[-1]
    T = _sizes(arrays, GOOGLE_POS, "1TD", show)[1]
    if T < 2:
        raise ValueError(f"{show(GOOGLE_POS)}: expected shape (1, T, D) with T >= 2, got "
                         f"{arrays[GOOGLE_POS].shape}")
    depth = _depth(arrays, "Transformer/encoderblock_", "/", fmt)
    if h * q[2] != D:
        raise ValueError(f"{show(need[1])}: expected (D, h, d) with h * d = D = {D}, got {q}")
    _check_layout(arrays, _google_shapes(D, h, M, K, P, C, depth, T), fmt, show)

    src, grid, size = _grids(T, P, image_size, checkpoint_grid)
    a = _materialize(arrays)
    pos = _positions(a[GOOGLE_POS], src, grid, pos_embed, D, fmt, notes, resample)
    p = {"patch_embed.W": a["embedding/kernel"].reshape(P * P * C, D),      # row (py*P+px)*C + c
         "patch_embed.b": a["embedding/bias"], "cls_token": a["cls"]}
    if pos is not None:
        p["pos_embed"] = pos
    for i in range(depth):
        p.update(_google_block_params(a, i, D))
    p["norm.gamma"], p["norm.beta"] = a["Transformer/encoder_norm/scale"], a["Transformer/encoder_norm/bias"]
    p["head.W"], p["head.b"] = a["head/kernel"], a["head/bias"]
    cfg_kw = dict(image_size=size, in_channels=C, patch_size=P, dim=D, depth=depth, heads=h,
                  mlp_dim=M, num_classes=K, pool=pool, gelu=gelu, pos_embed=pos_embed)
    model = _make_model(cfg_kw, p, dtype)
    info = {"format": "google", "prefix": prefix, "ignored": ignored, "notes": notes,
            "checkpoint_grid": src}
    return model, info


def load_google_vit(path_or_dict, image_size=None, *, pool: str = "cls", gelu: str = "exact",
                    dtype: str = "float32", pos_embed: str = "learned",
                    checkpoint_grid=None, resample: str = DEFAULT_RESAMPLE) -> ViT:
    """Read a Google ViT ``.npz`` (or a dict of its arrays) into a tinyvit ``ViT``.

    The config is read off the arrays: P, C, D from ``embedding/kernel`` (P, P, C, D),
    the depth from the ``encoderblock_{i}`` present, h from a query kernel (D, h, d),
    M from ``Dense_0`` (D, M), K from ``head/kernel`` (D, K), and the patch grid
    from the position embedding (1, T, D): T - 1 = gh * gw, square unless the
    grid of ``image_size`` (or ``checkpoint_grid``) has T - 1 patches.

    image_size: int or (H, W); None keeps the checkpoint's. When its grid differs,
        the position embeddings are resampled (the CLS position kept), with
    resample: "bicubic" (default: antialiased, what timm does when it loads a file at
        another size) or "bilinear" (F.interpolate bilinear); see ``resample_pos_embed``.
    pool, gelu: not recorded in the file. Defaults "cls" (the release's
        classifier="token") and "exact" (timm's; "tanh" is what the JAX code computes).
    dtype: "float32" (default) or "float64"; the arrays are converted to it.
    pos_embed: "learned" (default), or "sincos" to drop a position embedding that
        is the fixed sin-cos table (checked to 1e-5), as ``save_google_vit`` writes
        for a sin-cos model.
    checkpoint_grid: (gh, gw) of the checkpoint, for non-square grids.

    ``opt/target/`` prefixes are removed; ``pre_logits`` is skipped with a warning.
    Any missing key, unexpected key or wrong shape: one ValueError listing them all.
    """
    return _load_google(path_or_dict, image_size, pool=pool, gelu=gelu, dtype=dtype,
                        pos_embed=pos_embed, checkpoint_grid=checkpoint_grid, resample=resample)[0]


# ---------------------------------------------------------------------------
# timm layout
# ---------------------------------------------------------------------------
def _timm_shapes(D, M, K, P, C, depth, T, layer_scale: bool = False) -> dict[str, tuple]:
    s = {"cls_token": (1, 1, D), "pos_embed": (1, T, D), "patch_embed.proj.weight": (D, C, P, P),
         "patch_embed.proj.bias": (D,)}
    for i in range(depth):
        b = f"blocks.{i}."
        s.update({b + "norm1.weight": (D,), b + "norm1.bias": (D,),
                  b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
                  b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
                  b + "norm2.weight": (D,), b + "norm2.bias": (D,),
                  b + "mlp.fc1.weight": (M, D), b + "mlp.fc1.bias": (M,),
                  b + "mlp.fc2.weight": (D, M), b + "mlp.fc2.bias": (D,)})
        if layer_scale:
            s.update({b + "ls1.gamma": (D,), b + "ls2.gamma": (D,)})
    s.update({"norm.weight": (D,), "norm.bias": (D,), "head.weight": (K, D), "head.bias": (K,)})
    return s


def timm_arrays(model: ViT) -> dict[str, np.ndarray]:
    """A tinyvit model's parameters as a timm VisionTransformer state dict (NumPy arrays).

    Linear weights are transposed to torch's (out, in); patch_embed.W (P*P*C, D)
    becomes the Conv2d weight (D, C, P, P). A sin-cos model writes its fixed
    table as ``pos_embed``.
    """
    cfg, p, pos = _model_arrays(model)
    P, C, D = cfg.patch_size, cfg.in_channels, cfg.dim
    out = {**_timm_token_arrays(cfg, p), "pos_embed": pos,     # cls_token, reg_token, attn_pool.*
           # (P*P*C, D) -> (P, P, C, D) -> (D, C, P, P)
           "patch_embed.proj.weight": p["patch_embed.W"].reshape(P, P, C, D).transpose(3, 2, 0, 1),
           "patch_embed.proj.bias": p["patch_embed.b"]}
    for i in range(cfg.depth):
        t = f"blocks.{i}."
        for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2")):
            out[t + theirs + ".weight"], out[t + theirs + ".bias"] = p[t + ours + ".gamma"], p[t + ours + ".beta"]
        for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            out[t + name + ".weight"], out[t + name + ".bias"] = p[t + name + ".W"].T, p[t + name + ".b"]
        if _layer_scale(cfg):
            for name in ("ls1", "ls2"):
                out[t + name + ".gamma"] = p[t + name + ".gamma"]
    out["norm.weight"], out["norm.bias"] = p["norm.gamma"], p["norm.beta"]
    out["head.weight"], out["head.bias"] = p["head.W"].T, p["head.b"]
    order = list(_timm_shapes(D, cfg.mlp_dim, cfg.num_classes, P, C, cfg.depth, cfg.num_tokens,
                              _layer_scale(cfg)))
    order = [k for k in order if k in out] + [k for k in out if k not in order]
    return {k: np.ascontiguousarray(out[k]) for k in order}


def save_timm(model: ViT, path) -> None:
    """Write a tinyvit model as a timm VisionTransformer state dict in an ``.npz``.

    Written atomically, in the model's dtype. On the timm side, load it into
    ``timm.create_model(..., img_size=H (or (H, W)), patch_size=P, in_chans=C,
    embed_dim=D, depth=depth, num_heads=h, mlp_ratio=M/D, num_classes=K)``
    with ``load_state_dict({k: torch.from_numpy(v) for k, v in np.load(path).items()})``.
    pool="mean": create it with ``global_pool="avg", fc_norm=False, class_token=True``
    (tinyvit normalises every token, then averages the patch tokens, which is what
    timm's ``norm`` before an "avg" pool does). gelu="tanh": ``act_layer="gelu_tanh"``.
    Token and pooling options on the timm side: num_registers=R: ``reg_tokens=R``;
    class_token=False: ``class_token=False``; no_embed_class=True: ``no_embed_class=True``;
    pool="attn": ``global_pool="map"``; pool="mean_with_cls": ``global_pool="avg",
    fc_norm=False, pool_include_prefix=True``.
    """
    _save_npz(timm_arrays(model), path)


_FC_NORM_MSG = (
    "fc_norm.weight, fc_norm.bias with pool='mean': this timm model averages the patch tokens "
    "first and then applies a layer norm (global_pool='avg' with fc_norm); tinyvit applies its "
    "final layer norm to every token and then averages, LN(mean(x)) != mean(LN(x)), so these "
    "weights cannot be loaded exactly for mean pooling (with pool='cls' they load as the final "
    "norm: the same function). Files written by tinyvit's save_timm for pool='mean' use 'norm' "
    "instead (timm side: global_pool='avg', fc_norm=False, class_token=True).")


def _load_timm(path_or_dict, image_size=None, *, heads=None, pool="cls", gelu="exact",
               dtype="float32", pos_embed="learned", checkpoint_grid=None, resample=DEFAULT_RESAMPLE,
               no_embed_class=None):
    dtype = _check_options(pool, gelu, pos_embed, dtype, resample)
    a = _read_arrays(path_or_dict, "state_dict")
    fmt = "timm"
    notes = []
    if any(k.startswith("fc_norm.") for k in a):
        # timm's fc_norm: the final norm applied after pooling (its `norm` is then an identity
        # and absent from the file). Pooling the CLS token first and normalising it, or
        # normalising every token and then taking the CLS token, is the same function.
        if pool != "cls":
            raise ValueError(_FC_NORM_MSG)
        if any(k.startswith("norm.") for k in a):
            raise ValueError("norm.weight and fc_norm.weight: expected one final norm (timm makes "
                             "the other an identity), got both")
        a = {("norm." + k[len("fc_norm."):] if k.startswith("fc_norm.") else k): v for k, v in a.items()}
        notes.append("fc_norm read as the final norm: with CLS pooling (pool='cls') normalising the "
                     "pooled CLS token equals normalising every token first")
    need = ["patch_embed.proj.weight", _either(a, "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc1.weight"),
            _either(a, "head.bias", "head.weight"), "pos_embed"]
    _need(a, need, fmt)
    D, C, P, P2 = _sizes(a, "patch_embed.proj.weight", "DCPP")
    if P != P2:
        raise ValueError(f"patch_embed.proj.weight: expected shape (D, C, P, P) with square patches, "
                         f"got {(D, C, P, P2)}")
    M = _sizes(a, need[1], "M" if need[1].endswith("bias") else "MD")[0]   # the bias when there is one
    K = _sizes(a, need[2], "K" if need[2].endswith("bias") else "KD")[0]
    T = _sizes(a, "pos_embed", "1TD")[1]
    if T < 2:
        raise ValueError(f"pos_embed: expected shape (1, T, D) with T >= 2, got {a['pos_embed'].shape}")
    depth = _depth(a, "blocks.", ".", fmt)
    layer_scale = HAS_LAYER_SCALE and any(".ls1.gamma" in k or ".ls2.gamma" in k for k in a)
    tok = _timm_token_options(a, pool, no_embed_class, P, image_size, checkpoint_grid, notes)
    expected = _timm_shapes(D, M, K, P, C, depth, T, layer_scale)
    del expected["cls_token"]
    expected.update(_timm_token_shapes(D, M, tok))       # cls_token, reg_token, attn_pool.*
    try:
        _check_layout(a, expected, fmt)
    except ValueError as e:
        if not HAS_LAYER_SCALE and any(".ls1.gamma" in k or ".ls2.gamma" in k for k in a):
            raise ValueError(f"{e}\n  (ls1.gamma/ls2.gamma are LayerScale, which this tinyvit's "
                             "ViTConfig does not have)") from None
        raise
    if heads is None:
        if D not in TIMM_HEADS:
            raise ValueError(f"heads: a timm state dict does not record the number of heads "
                             f"(qkv.weight is (3D, D)) and D={D} is not a standard ViT width "
                             f"({', '.join(f'{k}->{v}' for k, v in TIMM_HEADS.items())}); pass heads=...")
        heads = TIMM_HEADS[D]
        notes.append(f"heads={heads} taken from the standard ViT of width D={D} "
                     "(the file does not record it)")
    if isinstance(heads, bool) or not isinstance(heads, (int, np.integer)) or heads < 1 or D % heads:
        raise ValueError(f"heads: expected a positive divisor of D={D}, got {heads!r}")

    # _grids counts one CLS row in T: pass the patch rows + 1 whatever the file's prefix rows
    src, grid, size = _grids(T - tok["pos_prefix"] + 1, P, image_size, checkpoint_grid)
    a = _materialize(a)
    pos = _positions_with_prefix(a["pos_embed"], tok["pos_prefix"], src, grid, pos_embed, D, fmt,
                                 notes, resample)
    w = a["patch_embed.proj.weight"]
    p = {"patch_embed.W": w.transpose(2, 3, 1, 0).reshape(P * P * C, D),   # (D,C,P,P) -> (P,P,C,D)
         "patch_embed.b": a["patch_embed.proj.bias"], **_timm_token_params(a, tok)}
    if pos is not None:
        p["pos_embed"] = pos
    for i in range(depth):
        t = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            p[t + n + ".gamma"], p[t + n + ".beta"] = a[t + n + ".weight"], a[t + n + ".bias"]
        for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            p[t + n + ".W"], p[t + n + ".b"] = a[t + n + ".weight"].T, a[t + n + ".bias"]
        if layer_scale:
            for n in ("ls1", "ls2"):
                p[t + n + ".gamma"] = a[t + n + ".gamma"]          # same name, same (D,) vector
    p["norm.gamma"], p["norm.beta"] = a["norm.weight"], a["norm.bias"]
    p["head.W"], p["head.b"] = a["head.weight"].T, a["head.bias"]
    cfg_kw = dict(image_size=size, in_channels=C, patch_size=P, dim=D, depth=depth, heads=int(heads),
                  mlp_dim=M, num_classes=K, pool=tok["pool"], gelu=gelu, pos_embed=pos_embed,
                  class_token=tok["class_token"], num_registers=tok["num_registers"],
                  no_embed_class=tok["no_embed_class"])
    if layer_scale:
        cfg_kw["layer_scale"] = LAYER_SCALE_INIT
        notes.append(f"LayerScale (ls1.gamma, ls2.gamma) loaded; layer_scale={LAYER_SCALE_INIT} is "
                     "only the config's init value, the file's gammas are used")
    model = _make_model(cfg_kw, p, dtype)
    return model, {"format": "timm", "ignored": [], "notes": notes, "checkpoint_grid": src}


def load_timm(path_or_dict, image_size=None, *, heads: int | None = None, pool: str = "cls",
              gelu: str = "exact", dtype: str = "float32", pos_embed: str = "learned",
              checkpoint_grid=None, resample: str = DEFAULT_RESAMPLE,
              no_embed_class: bool | None = None) -> ViT:
    """Read a timm VisionTransformer state dict (an ``.npz`` of named arrays, or a dict) into a ViT.

    P, C, D from ``patch_embed.proj.weight`` (D, C, P, P), M from ``fc1.weight``
    (M, D), K from ``head.weight`` (K, D), depth from the ``blocks.{i}`` present,
    the grid from ``pos_embed`` (1, T, D) as in ``load_google_vit``.

    heads: not in the file; None recognises the standard widths in ``TIMM_HEADS``
        (192 -> 3, 384 -> 6, 768 -> 12, 1024 -> 16, 1280 -> 16) and otherwise asks for it.
    pool: "cls" (timm's global_pool="token", the default) or "mean" for a file
        written by ``save_timm`` from a pool="mean" model. A file with ``fc_norm``
        (the final norm applied after pooling) loads with pool="cls", where it is
        the same function as tinyvit's final norm; with pool="mean" it is refused
        with an explanation: normalise-then-average (tinyvit) and
        average-then-normalise (timm's fc_norm) are different functions.
    LayerScale (``blocks.{i}.ls1.gamma``, ``ls2.gamma``: DeiT-III, DINOv2-style
        blocks) loads into ``blocks.{i}.ls1.gamma`` / ``ls2.gamma`` when ViTConfig
        has ``layer_scale``.
    Other arguments as in ``load_google_vit``. Strict: any missing key,
    unexpected key (e.g. ``dist_token``, ``norm_pre``) or wrong shape gives one
    ValueError listing them all.

    Token and pooling options, read off the file: no ``cls_token`` -> class_token=False
    (then pass pool="mean" or a file with attn_pool); ``reg_token`` (1, R, D) ->
    num_registers=R; ``attn_pool.*`` -> pool="attn" (timm's global_pool="map");
    a ``pos_embed`` without rows for the CLS and register tokens -> no_embed_class=True.
    no_embed_class: None infers that from the number of rows (and image_size or
        checkpoint_grid when given); pass True or False when both readings fit.
    """
    return _load_timm(path_or_dict, image_size, heads=heads, pool=pool, gelu=gelu, dtype=dtype,
                      pos_embed=pos_embed, checkpoint_grid=checkpoint_grid, resample=resample,
                      no_embed_class=no_embed_class)[0]


# ---------------------------------------------------------------------------
# Auto-detection, for the CLI and the plots
# ---------------------------------------------------------------------------
def detect_format(keys) -> str:
    """'google', 'timm' or 'tinyvit' from the array names of a file; ValueError otherwise."""
    keys = list(keys)
    names = {k[len(GOOGLE_PREFIX):] if k.startswith(GOOGLE_PREFIX) else k for k in keys}
    if "embedding/kernel" in names or any(k.startswith("Transformer/") for k in names):
        return "google"
    if "patch_embed.proj.weight" in names or "blocks.0.attn.qkv.weight" in names:
        return "timm"
    if "patch_embed.W" in names or any(k.endswith(".attn.qkv.W") for k in names):
        return "tinyvit"
    shown = ", ".join(sorted(keys)[:6]) + (", ..." if len(keys) > 6 else "")
    raise ValueError("path: expected a Google ViT .npz (embedding/kernel, Transformer/...) or a "
                     f"timm state dict (patch_embed.proj.weight, blocks.0...), got keys: {shown or 'none'}")


def load_model(path, image_size=None, *, heads: int | None = None, pool: str = "cls",
               gelu: str = "exact", dtype: str = "float32", resample: str = DEFAULT_RESAMPLE):
    """Load a Google ViT ``.npz`` or a timm state dict ``.npz``, whichever ``path`` holds.

    Returns (model, info) where info has:
      "format": "google" or "timm"
      "class_names": the 1000 ImageNet names (list of str) when K == 1000, else None
      "preprocess": {"resize": int (shorter side before the crop), "crop": (H, W),
                     "crop_pct": 0.9 (1.0 for 384-pixel models, as timm), "interpolation": "bicubic",
                     "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
          -- pass it on as ``preprocess_imagenet(img, image_size=crop, crop_pct=...,
          mean=..., std=...)`` (``tinyvit.imagenet.preprocess_kwargs(info)`` does this);
          mean/std 0.5 is right for the Google release and timm's augreg ViTs,
          not for DeiT or CLIP weights.
      "notes": list of str (resampling, ignored pre_logits, inferred heads)
      "ignored": keys skipped in the file; "checkpoint_grid": (gh, gw) of the file.
    Raises ValueError for a tinyvit checkpoint (load it with tinyvit's own
    loader) or a file in neither layout.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a path to an .npz file, got {describe(path)}")
    arrays = _read_arrays(path, "path")
    fmt = detect_format(arrays)
    if fmt == "tinyvit":
        raise ValueError(f"path: {os.fspath(path)!r} holds tinyvit parameter names, not a Google "
                         "or timm checkpoint; load it with tinyvit's checkpoint loader")
    if fmt == "google":
        model, info = _load_google(arrays, image_size, pool=pool, gelu=gelu, dtype=dtype,
                                   resample=resample)
    else:
        model, info = _load_timm(arrays, image_size, heads=heads, pool=pool, gelu=gelu, dtype=dtype,
                                 resample=resample)
    from .imagenet import imagenet_preprocess_info, imagenet_class_names
    K = model.config.num_classes
    info["class_names"] = imagenet_class_names() if K == 1000 else None
    info["preprocess"] = imagenet_preprocess_info(model.config.image_hw)
    return model, info


# ---------------------------------------------------------------------------
# timm's token and pooling options: class_token=False, reg_tokens, no_embed_class,
# global_pool="map" (attn_pool.*). Used by timm_arrays and _load_timm above.
# ---------------------------------------------------------------------------
# tinyvit's attention-pool names -> timm's (under "attn_pool."); ".W" arrays are transposed
_TIMM_ATTN_POOL = {"latent": "latent", "q.W": "q.weight", "q.b": "q.bias", "kv.W": "kv.weight",
                   "kv.b": "kv.bias", "proj.W": "proj.weight", "proj.b": "proj.bias",
                   "norm.gamma": "norm.weight", "norm.beta": "norm.bias",
                   "mlp.fc1.W": "mlp.fc1.weight", "mlp.fc1.b": "mlp.fc1.bias",
                   "mlp.fc2.W": "mlp.fc2.weight", "mlp.fc2.b": "mlp.fc2.bias"}


def _timm_token_arrays(cfg, p) -> dict:
    """The CLS token, the register tokens and the attention pool of a tinyvit model, in
    timm's names and orientation (only those the model has)."""
    out = {}
    if cfg.class_token:
        out["cls_token"] = p["cls_token"]
    if cfg.num_registers:
        out["reg_token"] = p["reg_token"]
    if cfg.pool == "attn":
        for ours, theirs in _TIMM_ATTN_POOL.items():
            v = p["attn_pool." + ours]
            out["attn_pool." + theirs] = v.T if ours.endswith(".W") else v
    return out


def _timm_token_shapes(D, M, tok) -> dict:
    """The shapes timm gives those arrays, for the options in tok (see _timm_token_options)."""
    s = {}
    if tok["class_token"]:
        s["cls_token"] = (1, 1, D)
    if tok["num_registers"]:
        s["reg_token"] = (1, tok["num_registers"], D)
    if tok["pool"] == "attn":
        from .layers import attn_pool_param_shapes
        for ours, shape in attn_pool_param_shapes(D, M).items():
            s["attn_pool." + _TIMM_ATTN_POOL[ours]] = shape[::-1] if ours.endswith(".W") else shape
    return s


def _timm_token_params(a, tok) -> dict:
    """tinyvit's cls_token, reg_token and attn_pool.* parameters from a timm state dict."""
    p = {}
    if tok["class_token"]:
        p["cls_token"] = a["cls_token"]
    if tok["num_registers"]:
        p["reg_token"] = a["reg_token"]
    if tok["pool"] == "attn":
        for ours, theirs in _TIMM_ATTN_POOL.items():
            v = a["attn_pool." + theirs]
            p["attn_pool." + ours] = v.T if ours.endswith(".W") else v
    return p


def _is_square(n: int) -> bool:
    return n >= 1 and math.isqrt(n) ** 2 == n


def _timm_token_options(a, pool, no_embed_class, P, image_size, checkpoint_grid, notes) -> dict:
    """Read the token and pooling options off a timm state dict's arrays.

    class_token: whether ``cls_token`` is there; num_registers: ``reg_token``'s (1, R, D);
    pool: "attn" when ``attn_pool.*`` is there (timm's global_pool="map"); no_embed_class:
    whether ``pos_embed`` (1, L, D) has rows for the CLS and register tokens (L = N + 1 + R)
    or for the patches only (L = N). The file does not say which when both L and L - 1 - R
    could be a patch grid: no_embed_class=None infers it from image_size, checkpoint_grid
    or which of the two is a square, and otherwise asks for it.
    """
    class_token = "cls_token" in a
    reg = a.get("reg_token")
    if reg is not None and (reg.ndim != 3 or reg.shape[0] != 1):
        raise ValueError(f"reg_token: expected shape (1, R, D), got {reg.shape}")
    R = 0 if reg is None else int(reg.shape[1])
    if any(k.startswith("attn_pool.") for k in a):
        if pool not in ("cls", "attn"):
            raise ValueError(f"pool: this timm file has attn_pool.* (global_pool='map'), "
                             f"expected pool='attn', got {pool!r}")
        if pool == "cls":
            notes.append("pool='attn': the file has attn_pool.* (timm's global_pool='map')")
        pool = "attn"
    prefix = int(class_token) + R
    L = a["pos_embed"].shape[1] if a.get("pos_embed") is not None and a["pos_embed"].ndim == 3 else None
    if no_embed_class is not None and not isinstance(no_embed_class, bool):
        raise TypeError(f"no_embed_class: expected True, False or None, got {no_embed_class!r}")
    if no_embed_class is None:
        no_embed_class = False
        if prefix and L is not None:
            N = None
            if checkpoint_grid is not None:
                gh, gw = _pair("checkpoint_grid", checkpoint_grid)
                N = gh * gw
            elif image_size is not None:
                H, W = _pair("image_size", image_size)
                N = (H // P) * (W // P) if (L in ((H // P) * (W // P), (H // P) * (W // P) + prefix)) \
                    else None
            if N is not None:
                no_embed_class = L == N
            elif _is_square(L) and _is_square(L - prefix):
                raise ValueError(f"no_embed_class: pos_embed has {L} rows, which fits both a "
                                 f"{math.isqrt(L)}^2 grid without the {prefix} CLS/register "
                                 f"rows and a {math.isqrt(L - prefix)}^2 grid with them; pass "
                                 "no_embed_class=True or False (or image_size)")
            else:
                no_embed_class = _is_square(L) and not _is_square(L - prefix)
    return {"class_token": class_token, "num_registers": R, "pool": pool,
            "no_embed_class": no_embed_class,
            "pos_prefix": 0 if no_embed_class else prefix}


def _positions_with_prefix(pos, pos_prefix, src, grid, pos_embed, dim, fmt, notes,
                           resample=DEFAULT_RESAMPLE):
    """_positions for a pos_embed with pos_prefix rows before the patches (not just one)."""
    if pos_prefix == 1:
        return _positions(pos, src, grid, pos_embed, dim, fmt, notes, resample)
    head, patches = pos[:, :pos_prefix], pos[:, pos_prefix:]
    if pos_embed == "sincos" and np.any(head != 0):
        raise ValueError("pos_embed: expected zeros in the CLS/register rows for "
                         "pos_embed='sincos'; load it with pos_embed='learned'")
    one = np.concatenate([np.zeros((1, 1, pos.shape[2]), pos.dtype), patches], axis=1)
    fitted = _positions(one, src, grid, pos_embed, dim, fmt, notes, resample)
    return None if fitted is None else np.concatenate([head, fitted[:, 1:]], axis=1)


def _google_options_check(cfg) -> None:
    """The Google layout has a CLS token, no registers and a position row for every token."""
    if not cfg.class_token or cfg.num_registers or cfg.no_embed_class or cfg.pool == "attn":
        raise ValueError(
            "model: the Google ViT layout holds a CLS token and one position row per token, no "
            f"registers and no attention pool; got class_token={cfg.class_token}, num_registers="
            f"{cfg.num_registers}, no_embed_class={cfg.no_embed_class}, pool={cfg.pool!r} "
            "(save it with save_timm instead)")
