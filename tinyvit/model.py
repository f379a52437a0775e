"""The Vision Transformer: a config, its parameters, a forward and a backward.

  images (B, H, W, C)
    -> patchify                      (B, N, P*P*C)   N = (H/P) * (W/P)
    -> patch embedding (linear)      (B, N, D)
    -> prepend the CLS token         (B, T, D)       T = N + 1, CLS at position 0
    -> add position embeddings       (B, T, D)
    -> depth x transformer block     (B, T, D)       pre-norm attention + MLP
    -> final layer norm              (B, T, D)
    -> pool: CLS state or patch mean (B, D)
    -> head (linear)                 (B, K)          logits

Options on the tokens and the pooling (defaults: the original ViT's):
  class_token=False   no CLS token (timm's class_token=False); pool "mean" or "attn"
  num_registers=R     R learned register tokens after the CLS token, never pooled:
                      T = N + 1 + R, tokens [CLS, reg_0 .. reg_R-1, patch_0 ..]
  no_embed_class=True position embeddings for the patches only (timm's no_embed_class),
                      added before the CLS and register tokens are prepended
  pool                "cls", "mean" (patch tokens), "mean_with_cls" (every token: the
                      common bug of averaging the CLS token in), "attn" (a learned query
                      attends over the patch tokens: timm's global_pool="map")

The forward keeps one cache per stage; the backward walks the same stages in
reverse and returns a gradient for every parameter, under the same name.
Parameter names mirror timm's (``blocks.0.attn.qkv.W`` is timm's
``blocks.0.attn.qkv.weight``, transposed): see ``PARAM_DOC`` below.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np

from . import fast_layers
from . import layers as reference_layers
from ._checks import check_array, check_choice, check_int, check_labels, dataclass_from_dict
from .layers import attn_pool_param_shapes, block_param_shapes

POOLS = ("cls", "mean", "mean_with_cls", "attn")
POOL_NAMES = {"cls": "CLS state", "mean": "mean of patch tokens",
              "mean_with_cls": "mean of every token, CLS included",
              "attn": "attention pooling, a learned query"}
GELUS = ("exact", "tanh")
POS_EMBEDS = ("learned", "sincos")
DTYPES = ("float32", "float64")
INIT_STD = 0.02


@dataclass
class ViTConfig:
    """Everything that defines a ViT's architecture (and its initialisation seed)."""

    image_size: int | tuple[int, int] = 32   # H = W, or (H, W)
    in_channels: int = 3                     # C
    patch_size: int = 4                      # P, must divide H and W
    dim: int = 64                            # D, token width
    depth: int = 4                           # number of transformer blocks
    heads: int = 4                           # h, must divide D
    mlp_dim: int = 128                       # M, MLP hidden width
    num_classes: int = 10                    # K
    pool: str = "cls"                        # "cls": CLS token's final state; "mean": mean of patch tokens
    #                                          "mean_with_cls": mean of every token (a pitfall, see POOLS)
    #                                          "attn": attention pooling with a learned query
    gelu: str = "exact"                      # "exact" (erf) or "tanh"
    pos_embed: str = "learned"               # "learned" or "sincos" (fixed)
    dtype: str = "float32"                   # "float32" for training, "float64" for gradient checks
    seed: int = 0                            # initialisation seed
    class_token: bool = True                 # False: no CLS token (then pool "mean" or "attn")
    num_registers: int = 0                   # R register tokens after the CLS token, never pooled
    no_embed_class: bool = False             # True: position embeddings for the patch tokens only
    layer_scale: float | None = None         # LayerScale's initial value (DeiT-III, DINOv2); None: off

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, (list, tuple)):
            if len(size) != 2:
                raise ValueError(f"image_size: expected an int or (H, W), got {size!r}")
            size = tuple(check_int("image_size", s, minimum=1) for s in size)
        else:
            s = check_int("image_size", size, minimum=1)
            size = (s, s)
        self.image_size = size if size[0] != size[1] else size[0]
        for name in ("in_channels", "patch_size", "dim", "depth", "heads", "mlp_dim", "num_classes"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_int("num_registers", self.num_registers, minimum=0)
        if self.layer_scale is not None and (isinstance(self.layer_scale, bool)
                                             or not isinstance(self.layer_scale, numbers.Real)
                                             or not np.isfinite(self.layer_scale)):
            raise ValueError(f"layer_scale: expected None or a finite number (LayerScale's "
                             f"initial value), got {self.layer_scale!r}")
        for name in ("class_token", "no_embed_class"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        check_choice("pool", self.pool, POOLS)
        if not self.class_token and self.pool in ("cls", "mean_with_cls"):
            raise ValueError(f"pool: expected 'mean' or 'attn' with class_token=False (there is no "
                             f"CLS token to read), got {self.pool!r}")
        check_choice("gelu", self.gelu, GELUS)
        check_choice("pos_embed", self.pos_embed, POS_EMBEDS)
        if isinstance(self.dtype, np.dtype) or self.dtype in (np.float32, np.float64):
            self.dtype = np.dtype(self.dtype).name
        check_choice("dtype", self.dtype, DTYPES)
        H, W = self.image_hw
        P = self.patch_size
        if H % P or W % P:
            raise ValueError(f"patch_size: expected a divisor of the image size {H}x{W}, got {P}")
        if self.dim % self.heads:
            raise ValueError(f"heads: expected a divisor of dim={self.dim}, got {self.heads} "
                             f"({self.dim} % {self.heads} = {self.dim % self.heads})")
        if self.pos_embed == "sincos" and self.dim % 4:
            raise ValueError(f"dim: expected a multiple of 4 with pos_embed='sincos', got {self.dim}")

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

    @property
    def grid(self) -> tuple[int, int]:
        H, W = self.image_hw
        return H // self.patch_size, W // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: the CLS token (if any) and the registers."""
        return int(self.class_token) + self.num_registers

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @property
    def num_pos_tokens(self) -> int:
        """Rows of the position embedding: every token, or the patches only (no_embed_class)."""
        return self.num_patches if self.no_embed_class else self.num_tokens

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(d["image_size"], tuple):
            d["image_size"] = list(d["image_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        return dataclass_from_dict(cls, d, "config")


PARAM_DOC = """\
name                         shape         timm name
patch_embed.W                (P*P*C, D)    patch_embed.proj.weight (D, C, P, P), reordered
patch_embed.b                (D,)          patch_embed.proj.bias
cls_token                    (1, 1, D)     cls_token (absent with class_token=False)
reg_token                    (1, R, D)     reg_token (only with num_registers=R > 0)
pos_embed                    (1, T, D)     pos_embed (absent with pos_embed="sincos";
                                           (1, N, D) with no_embed_class=True)
blocks.{i}.norm1.gamma/beta  (D,)          blocks.{i}.norm1.weight/bias
blocks.{i}.attn.qkv.W/b      (D, 3D) (3D,) blocks.{i}.attn.qkv.weight.T/bias
blocks.{i}.attn.proj.W/b     (D, D) (D,)   blocks.{i}.attn.proj.weight.T/bias
blocks.{i}.norm2.gamma/beta  (D,)          blocks.{i}.norm2.weight/bias
blocks.{i}.mlp.fc1.W/b       (D, M) (M,)   blocks.{i}.mlp.fc1.weight.T/bias
blocks.{i}.mlp.fc2.W/b       (M, D) (D,)   blocks.{i}.mlp.fc2.weight.T/bias
blocks.{i}.ls1/ls2.gamma     (D,)          blocks.{i}.ls1/ls2.gamma (with layer_scale only)
norm.gamma/beta              (D,)          norm.weight/bias
attn_pool.latent             (1, 1, D)     attn_pool.latent (only with pool="attn")
attn_pool.q.W/b              (D, D) (D,)   attn_pool.q.weight.T/bias
attn_pool.kv.W/b             (D, 2D) (2D,) attn_pool.kv.weight.T/bias
attn_pool.proj.W/b           (D, D) (D,)   attn_pool.proj.weight.T/bias
attn_pool.norm.gamma/beta    (D,)          attn_pool.norm.weight/bias
attn_pool.mlp.fc1/fc2.W/b    as the blocks attn_pool.mlp.fc1/fc2.weight.T/bias
head.W/b                     (D, K) (K,)   head.weight.T/bias
"""


def param_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every parameter of a model with this config, in forward order."""
    P, C, D, M, K = cfg.patch_size, cfg.in_channels, cfg.dim, cfg.mlp_dim, cfg.num_classes
    shapes = {"patch_embed.W": (P * P * C, D), "patch_embed.b": (D,)}
    if cfg.class_token:
        shapes["cls_token"] = (1, 1, D)
    if cfg.num_registers:
        shapes["reg_token"] = (1, cfg.num_registers, D)
    if cfg.pos_embed == "learned":
        shapes["pos_embed"] = (1, cfg.num_pos_tokens, D)
    block = block_param_shapes(D, M, layer_scale=cfg.layer_scale is not None)
    for i in range(cfg.depth):
        shapes.update({f"blocks.{i}.{k}": s for k, s in block.items()})
    shapes.update({"norm.gamma": (D,), "norm.beta": (D,)})
    if cfg.pool == "attn":
        shapes.update({f"attn_pool.{k}": s for k, s in attn_pool_param_shapes(D, M).items()})
    shapes.update({"head.W": (D, K), "head.b": (K,)})
    return shapes


def init_params(cfg: ViTConfig) -> dict[str, np.ndarray]:
    """Initialise as timm does by default.

    Linear weights (patch embedding, qkv, proj, fc1, fc2, head) and the position
    embeddings: normal with std 0.02 (timm's trunc_normal_(std=.02) cuts at +-2
    in absolute value, 100 standard deviations out, so it is a plain normal).
    The CLS token and the register tokens: normal with std 1e-6, near zero. Biases
    zero. Layer norms: gamma one, beta zero. The attention pool's latent query:
    normal with std D^-0.5 cut at two standard deviations (timm's trunc_normal_tf_).
    """
    rng = np.random.default_rng(cfg.seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name in ("cls_token", "reg_token"):
            value = rng.standard_normal(shape) * 1e-6
        elif name == "attn_pool.latent":
            value = rng.standard_normal(shape)
            while np.any(np.abs(value) > 2.0):            # redraw what falls outside +-2
                bad = np.abs(value) > 2.0
                value[bad] = rng.standard_normal(int(bad.sum()))
            value = value * cfg.dim ** -0.5
        elif name == "pos_embed" or name.endswith(".W"):
            value = rng.standard_normal(shape) * INIT_STD
        elif name.endswith((".ls1.gamma", ".ls2.gamma")):
            value = np.full(shape, float(cfg.layer_scale))
        elif name.endswith(".gamma"):
            value = np.ones(shape)
        else:                                            # biases and layer-norm beta
            value = np.zeros(shape)
        params[name] = value.astype(cfg.dtype)
    return params


# The functions a layer set must provide for ViT to run it (tinyvit.layers, tinyvit.fast_layers,
# or any module or namespace with these names, such as a student's edition of tinyvit.layers).
LAYER_FUNCTIONS = ("patchify_forward", "patchify_backward", "linear_forward", "linear_backward",
                   "cls_forward", "cls_backward", "pos_forward", "pos_backward",
                   "block_forward", "block_backward", "layernorm_forward", "layernorm_backward",
                   "softmax_cross_entropy")
LAYER_SETS = {"reference": reference_layers, "fast": fast_layers}
# The pooling and register functions (tinyvit/layers/pool.py). A layer set without them (a
# namespace written before they existed) runs the reference ones for these stages.
POOL_FUNCTIONS = ("mean_pool_forward", "mean_pool_backward", "attn_pool_forward",
                  "attn_pool_backward", "registers_forward", "registers_backward")


def resolve_layers(layers):
    """None or "reference" -> tinyvit.layers; "fast" -> tinyvit.fast_layers; a module or
    namespace is checked for every function in LAYER_FUNCTIONS and returned as it is."""
    if layers is None:
        return reference_layers
    if isinstance(layers, str):
        check_choice("layers", layers, tuple(LAYER_SETS))
        return LAYER_SETS[layers]
    missing = [f for f in LAYER_FUNCTIONS if not callable(getattr(layers, f, None))]
    if missing:
        raise TypeError(f"layers: expected 'reference', 'fast' or a namespace with the layer "
                        f"functions, got {layers!r}, which lacks {', '.join(missing)}")
    return layers


def layers_name(layers) -> str:
    """"reference", "fast", or the module name of another layer set."""
    for name, module in LAYER_SETS.items():
        if layers is module:
            return name
    return getattr(layers, "__name__", type(layers).__name__)


class ViT:
    """A Vision Transformer whose parameters are one flat dict of named arrays.

    >>> model = ViT(ViTConfig(image_size=28, in_channels=1, patch_size=7, num_classes=10))
    >>> logits, cache = model.forward(images)          # images (B, 28, 28, 1) float32
    >>> grads = model.backward(dlogits, cache)         # same names as model.params

    layers: the set of layer functions the model runs. None or "reference" (the default):
    tinyvit.layers, the textbook forms; "fast": tinyvit.fast_layers, the same numbers with the
    speed tricks (what training and the benchmark use); or any module or namespace with the
    functions of LAYER_FUNCTIONS, such as a student's own. ``model.using("fast")`` gives the
    same model (the same parameter arrays) running another set.
    """

    def __init__(self, config: ViTConfig | None = None, params: dict | None = None, layers=None):
        if config is None:
            config = ViTConfig()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config: expected a ViTConfig, got {type(config).__name__}")
        self.config = config
        self.layers = resolve_layers(layers)
        if config.layer_scale is not None and not callable(
                getattr(self.layers, "layerscale_block_forward", None)):
            raise TypeError(f"layers: layer_scale needs layerscale_block_forward/backward, which "
                            f"{layers_name(self.layers)!r} lacks")
        has_pool = all(callable(getattr(self.layers, f, None)) for f in POOL_FUNCTIONS)
        self._pool_layers = self.layers if has_pool else reference_layers
        self.params = init_params(config) if params is None else self._checked_params(params)
        self._fixed_pos = None
        if config.pos_embed == "sincos":
            gh, gw = config.grid
            table = getattr(self.layers, "sincos_pos_embed", reference_layers.sincos_pos_embed)
            prefix = 0 if config.no_embed_class else config.num_prefix_tokens
            if prefix == 1:
                self._fixed_pos = table(gh, gw, config.dim, cls_token=True, dtype=config.dtype)
            else:                                        # zeros for the prefix tokens, if any
                patches = table(gh, gw, config.dim, cls_token=False, dtype=config.dtype)
                zeros = np.zeros((1, prefix, config.dim), dtype=config.dtype)
                self._fixed_pos = np.concatenate([zeros, patches], axis=1)

    def using(self, layers) -> "ViT":
        """The same model running another layer set: it shares this model's parameter arrays,
        so an update made in place through either is seen by both."""
        other = ViT(self.config, self.params, layers)
        other.params = self.params
        return other

    def _checked_params(self, params: dict) -> dict:
        expected = param_shapes(self.config)
        missing = [k for k in expected if k not in params]
        unexpected = [k for k in params if k not in expected]
        wrong = [f"{k}: expected {expected[k]}, got {tuple(np.shape(params[k]))}"
                 for k in expected if k in params and tuple(np.shape(params[k])) != expected[k]]
        if missing or unexpected or wrong:
            lines = ([f"missing: {', '.join(missing)}"] if missing else []) + \
                    ([f"unexpected: {', '.join(unexpected)}"] if unexpected else []) + wrong
            raise ValueError("params: do not match the config:\n  " + "\n  ".join(lines))
        out = {}
        for k in expected:
            v = params[k]
            check_array(f"params[{k!r}]", v, kind="f", dtype=self.config.dtype)
            out[k] = v
        return out

    # --- input checks ---------------------------------------------------------
    def check_images(self, images):
        """Raises ValueError or TypeError, naming "images", unless images is a finite
        (B, H, W, C) array of the config's size and dtype with B >= 1."""
        cfg = self.config
        H, W = cfg.image_hw
        check_array("images", images, ndim=4, kind="f", finite=False)
        if images.shape[1:] != (H, W, cfg.in_channels):
            raise ValueError(f"images: expected shape (B, {H}, {W}, {cfg.in_channels}) (channels last), "
                             f"got {images.shape}")
        if images.shape[0] == 0:
            raise ValueError("images: expected at least one image, got an empty batch")
        check_array("images", images, kind="f", dtype=cfg.dtype, finite=True)

    def block_params(self, i: int) -> dict:
        """Block i's parameters by their prefix-free names ("norm1.gamma", ...)."""
        return self.prefixed_params(f"blocks.{i}")

    def prefixed_params(self, prefix: str) -> dict:
        """The parameters whose names start with prefix + ".", by the rest of their names."""
        prefix += "."
        return {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}

    # --- forward and backward --------------------------------------------------
    def forward_tokens(self, images: np.ndarray, last_block_cls_only: bool = False):
        """images (B, H, W, C) -> (tokens (B, T, D) after the final layer norm, cache): the
        whole transformer, without pool and head. backward_tokens reverses it.
        cache["attn"][i] is block i's attention probabilities (B, h, T, T); row 0 is what the
        CLS token attends to.

        last_block_cls_only (a layer set with n_queries=n, such as "fast"): the last block
        computes the CLS token alone, so tokens is (B, 1, D). With CLS pooling the head reads
        nothing but that token, so only its query, attention row, residuals and MLP are
        needed there (every token still offers its key and value): the logits and every
        gradient are the same as the full forward's, for (T-1)/T less of the last block's
        MLP and projection work; cache["attn"][-1] is then (B, h, 1, T).
        """
        self.check_images(images)
        cfg, p, L = self.config, self.params, self.layers
        if not isinstance(last_block_cls_only, bool):
            raise TypeError(f"last_block_cls_only: expected True or False, "
                            f"got {type(last_block_cls_only).__name__}")
        if last_block_cls_only and not cfg.class_token:
            raise ValueError("last_block_cls_only: needs a CLS token, got class_token=False")
        if last_block_cls_only and not getattr(L, "SUPPORTS_QUERIES", False):
            raise ValueError(f"last_block_cls_only: needs a layer set whose block_forward takes "
                             f"n_queries=n (layers='fast'), got layers={layers_name(L)!r}")
        if last_block_cls_only and cfg.layer_scale is not None:
            raise ValueError("last_block_cls_only: not available with LayerScale, got "
                             f"layer_scale={cfg.layer_scale!r}")
        cache = {"blocks": []}
        x = self._embed(images, cache)                                           # (B, T, D)
        for i in range(cfg.depth):
            bp = self.block_params(i)
            if cfg.layer_scale is not None:                                      # LayerScale
                x, c = L.layerscale_block_forward(x, bp, cfg.heads, cfg.gelu)    # (B, T, D)
            elif last_block_cls_only and i == cfg.depth - 1:
                x, c = L.block_forward(x, bp, cfg.heads, cfg.gelu, n_queries=1)  # (B, 1, D)
            else:
                x, c = L.block_forward(x, bp, cfg.heads, cfg.gelu)               # (B, T, D)
            cache["blocks"].append(c)
        x, cache["norm"] = L.layernorm_forward(x, p["norm.gamma"], p["norm.beta"])  # (B, T or 1, D)
        cache["shape"] = x.shape
        cache["tokens"] = x
        cache["attn"] = [c[1]["attn"] for c in cache["blocks"]]   # c[1]: the attention's cache
        return x, cache

    def forward(self, images: np.ndarray, last_block_cls_only: bool = False):
        """images (B, H, W, C) -> (logits (B, K), cache): forward_tokens, then the pool and
        the head. cache["attn"][i] is block i's attention probabilities (B, h, T, T); row 0 is
        what the CLS token attends to. With pool="attn", cache["attn_pool"] is the learned
        query's (B, h, 1, N) over the patch tokens; cache["tokens"] is the final layer norm's
        output. last_block_cls_only (pool="cls" only): see forward_tokens."""
        cfg, p, L = self.config, self.params, self.layers
        if last_block_cls_only is True and cfg.pool != "cls":
            raise ValueError(f"last_block_cls_only: needs pool='cls' (with mean pooling the head "
                             f"reads every patch token), got pool={cfg.pool!r}")
        x, cache = self.forward_tokens(images, last_block_cls_only)             # (B, T, D)
        pooled, cache["pool"] = self._pool_forward(x)                            # (B, D)
        logits, cache["head"] = L.linear_forward(pooled, p["head.W"], p["head.b"])  # (B, K)
        if cfg.pool == "attn":
            cache["attn_pool"] = cache["pool"]["attn"]
        return logits, cache

    def _embed(self, images, cache: dict):
        """images (B, H, W, C) -> the token sequence (B, T, D) that enters block 0: patches,
        their embedding, the CLS and register tokens and the position embeddings. Each
        stage's cache goes into ``cache``."""
        cfg, p, L = self.config, self.params, self.layers
        x, cache["patchify"] = L.patchify_forward(images, cfg.patch_size)        # (B, N, P*P*C)
        x, cache["embed"] = L.linear_forward(x, p["patch_embed.W"], p["patch_embed.b"])  # (B, N, D)
        pos = p["pos_embed"] if cfg.pos_embed == "learned" else self._fixed_pos
        if cfg.no_embed_class:                           # positions for the patches only
            x, cache["pos"] = L.pos_forward(x, pos)                              # (B, N, D)
        if cfg.class_token:
            x, cache["cls"] = L.cls_forward(x, p["cls_token"])                   # (B, N + 1, D)
        if cfg.num_registers:                            # right after the CLS token
            x, cache["reg"] = self._pool_layers.registers_forward(
                x, p["reg_token"], int(cfg.class_token))                         # (B, T, D)
        if not cfg.no_embed_class:
            x, cache["pos"] = L.pos_forward(x, pos)                              # (B, T, D)
        return x

    def residual_streams(self, images: np.ndarray) -> dict:
        """What flows along the residual stream, block by block (for probes and diagnostics).

        Returns {"embed": x0 (B, T, D), the tokens entering block 0, and "blocks": one dict
        per block with "attn" (B, T, D) the attention branch's output a, "mlp" (B, T, D) the
        MLP branch's output m, and "out" (B, T, D) the block's output, where
            x_mid = x_in + a,   out = x_mid + m
        (x_in is the previous block's "out", or "embed")}. Computed with the reference
        layers (tinyvit.layers), whatever the model's layer set.
        """
        self.check_images(images)
        cfg, R = self.config, reference_layers
        x = self._embed(images, {})
        streams = {"embed": x, "blocks": []}
        for i in range(cfg.depth):
            p = self.block_params(i)
            n1 = R.layernorm_forward(x, p["norm1.gamma"], p["norm1.beta"])[0]
            a = R.attention_forward(n1, p["attn.qkv.W"], p["attn.qkv.b"], p["attn.proj.W"],
                                    p["attn.proj.b"], cfg.heads)[0]
            x_mid = x + (a if cfg.layer_scale is None else a * p["ls1.gamma"])
            n2 = R.layernorm_forward(x_mid, p["norm2.gamma"], p["norm2.beta"])[0]
            m = R.mlp_forward(n2, p["mlp.fc1.W"], p["mlp.fc1.b"], p["mlp.fc2.W"], p["mlp.fc2.b"],
                              cfg.gelu)[0]
            if cfg.layer_scale is not None:              # the branches as they are added
                a, m = a * p["ls1.gamma"], m * p["ls2.gamma"]
            x = x + a + m
            streams["blocks"].append({"attn": a, "mlp": m, "out": x})
        return streams

    def _pool_forward(self, x):
        """The final tokens x (B, T, D) -> (pooled (B, D), cache), as config.pool says."""
        cfg, S = self.config, self._pool_layers
        first = cfg.num_prefix_tokens                    # the first patch token
        if cfg.pool == "cls":
            return x[:, 0, :], None                      # the CLS token's final state
        if cfg.pool == "mean":
            return S.mean_pool_forward(x, first)         # the patch tokens only
        if cfg.pool == "mean_with_cls":
            return S.mean_pool_forward(x, 0)             # every token: CLS (and registers) too
        return S.attn_pool_forward(x[:, first:, :], self.prefixed_params("attn_pool"),
                                   cfg.heads, cfg.gelu)  # "attn": over the patch tokens

    def _pool_backward(self, dpooled, cache, g: dict):
        """dpooled (B, D) -> dx (B, T, D) at the final tokens; the attention pool's gradients
        go into g."""
        cfg, S = self.config, self._pool_layers
        B, T, D = cache["shape"]
        if cfg.pool == "cls":
            dx = np.zeros((B, T, D), dtype=dpooled.dtype)
            dx[:, 0, :] = dpooled                        # only the CLS token fed the head
            return dx
        if cfg.pool in ("mean", "mean_with_cls"):
            return S.mean_pool_backward(dpooled, cache["pool"])   # 1/n to each averaged token
        dpatches, gp = S.attn_pool_backward(dpooled, cache["pool"])   # (B, N, D)
        g.update({f"attn_pool.{k}": v for k, v in gp.items()})
        dx = np.zeros((B, T, D), dtype=dpooled.dtype)
        dx[:, cfg.num_prefix_tokens:, :] = dpatches
        return dx

    def _backward(self, dlogits: np.ndarray, cache, attn_grads: list | None = None):
        """The whole backward: (grads, dimages). With a list attn_grads, puts the gradient
        of each block's attention probabilities in it, first block first."""
        cfg, L = self.config, self.layers
        B, T, D = cache["shape"]                         # T = 1 after a CLS-only last block
        check_array("dlogits", dlogits, ndim=2, kind="f", dtype=cfg.dtype)
        if dlogits.shape != (B, cfg.num_classes):
            raise ValueError(f"dlogits: expected shape {(B, cfg.num_classes)}, got {dlogits.shape}")
        g = {}
        dpooled, g["head.W"], g["head.b"] = L.linear_backward(dlogits, cache["head"])   # (B, D)
        dx = self._pool_backward(dpooled, cache, g)                                   # (B, T, D)
        grads, dimages = self.backward_tokens(dx, cache, attn_grads)
        grads.update(g)
        return {k: grads[k] for k in self.params}, dimages    # forward order, as params

    def backward_tokens(self, dtokens: np.ndarray, cache, attn_grads: list | None = None):
        """dtokens (B, T, D), the gradient at the tokens forward_tokens returned -> (grads,
        dimages): the gradient of every parameter before pool and head, and of the images.
        With a list attn_grads, puts the gradient of each block's attention probabilities in it."""
        cfg, L = self.config, self.layers
        check_array("dtokens", dtokens, ndim=3, kind="f", dtype=cfg.dtype)
        if dtokens.shape != tuple(cache["shape"]):
            raise ValueError(f"dtokens: expected shape {tuple(cache['shape'])}, got {dtokens.shape}")
        g = {}
        dx, g["norm.gamma"], g["norm.beta"] = L.layernorm_backward(dtokens, cache["norm"])
        block_backward = L.block_backward if cfg.layer_scale is None else L.layerscale_block_backward
        for i in reversed(range(cfg.depth)):
            if attn_grads is not None:
                attn_grads.insert(0, self._attention_probs_grad(dx, cache["blocks"][i]))
            dx, gb = block_backward(dx, cache["blocks"][i])
            for k, v in gb.items():
                g[f"blocks.{i}.{k}"] = v
        if not cfg.no_embed_class:
            dx, dpos = L.pos_backward(dx, cache["pos"])
        if cfg.num_registers:
            dx, g["reg_token"] = self._pool_layers.registers_backward(dx, cache["reg"])
        if cfg.class_token:
            dx, g["cls_token"] = L.cls_backward(dx, cache["cls"])   # dcls: batch sum at position 0
        if cfg.no_embed_class:
            dx, dpos = L.pos_backward(dx, cache["pos"])
        if cfg.pos_embed == "learned":
            g["pos_embed"] = dpos
        dpatches, g["patch_embed.W"], g["patch_embed.b"] = L.linear_backward(dx, cache["embed"])
        dimages = L.patchify_backward(dpatches, cache["patchify"])   # (B, H, W, C)
        return {k: g[k] for k in self.params if k in g}, dimages   # forward order, as params

    def _attention_probs_grad(self, dout, block_cache):
        """The gradient of the loss at a block's attention probabilities A (B, h, n, T), from
        the gradient dout at the block's output: back through residual 2 and the MLP branch to
        the attention output, then through the projection and o = A @ v (dA = do @ v^T)."""
        L = self.layers
        if self.config.layer_scale is None:
            c_n1, c_attn, c_n2, c_mlp = block_cache
            dn2 = L.mlp_backward(dout, c_mlp)[0]
            da = dout + L.layernorm_backward(dn2, c_n2)[0]   # (B, n, D) at the attention output
        else:                                            # the same through the two LayerScales
            c_n1, c_attn, _, ls1, c_n2, c_mlp, _, ls2 = block_cache
            dn2 = L.mlp_backward(dout * ls2, c_mlp)[0]
            da = (dout + L.layernorm_backward(dn2, c_n2)[0]) * ls1
        dmerged = L.linear_backward(da, c_attn["proj_cache"])[0]          # (B, n, D)
        A, v = c_attn["attn"], c_attn["v"]
        B, h, n, T = A.shape
        do = dmerged.reshape(B, n, h, -1).transpose(0, 2, 1, 3)            # (B, h, n, d)
        return do @ v.swapaxes(-1, -2)                   # (B, h, n, T)

    def backward(self, dlogits: np.ndarray, cache) -> dict:
        """dlogits (B, K) -> grads, a dict with the same names as ``params``."""
        return self._backward(dlogits, cache)[0]

    def backward_with_input(self, dlogits: np.ndarray, cache):
        """dlogits (B, K) -> (grads, dimages): the parameter gradients and the gradient with
        respect to the input images (B, H, W, C)."""
        return self._backward(dlogits, cache)

    def attention_grads(self, dlogits: np.ndarray, cache) -> list[np.ndarray]:
        """dlogits (B, K) -> one array per block: the gradient of sum(dlogits * logits) with
        respect to that block's attention probabilities, the shape of cache["attn"][i]."""
        dattn = []
        self._backward(dlogits, cache, attn_grads=dattn)
        return dattn

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Logits (B, K) for images (B, H, W, C)."""
        return self.forward(images)[0]

    def attention_maps(self, images: np.ndarray) -> list[np.ndarray]:
        """One (B, h, T, T) array of attention probabilities per block."""
        return self.forward(images)[1]["attn"]

    def loss_and_grads(self, images, labels, label_smoothing: float = 0.0,
                       last_block_cls_only: bool | None = None):
        """Softmax cross-entropy on a batch: returns (loss, grads, logits).

        last_block_cls_only: None (the default) runs the last block on the CLS token
        alone when pool="cls" and the layer set can (layers="fast"): same results, less
        work (see forward). The reference layers always compute every token."""
        check_labels("labels", labels, self.config.num_classes,
                     batch=images.shape[0] if isinstance(images, np.ndarray) and images.ndim else None)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
                or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: expected a number in [0, 1), got {label_smoothing!r}")
        if last_block_cls_only is None:
            last_block_cls_only = (self.config.pool == "cls" and self.config.layer_scale is None
                                   and getattr(self.layers, "SUPPORTS_QUERIES", False))
        logits, cache = self.forward(images, last_block_cls_only=last_block_cls_only)
        loss, dlogits = self.layers.softmax_cross_entropy(logits, labels, float(label_smoothing))
        return loss, self.backward(dlogits, cache), logits

    # --- description ---------------------------------------------------------------
    def num_params(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    def summary(self) -> str:
        """A table of the parameters and of the activation shapes at each stage."""
        cfg = self.config
        H, W = cfg.image_hw
        C, P, N, T, D = cfg.in_channels, cfg.patch_size, cfg.num_patches, cfg.num_tokens, cfg.dim
        h, d, M, K = cfg.heads, cfg.head_dim, cfg.mlp_dim, cfg.num_classes
        R = cfg.num_registers
        prefix = " + ".join((["CLS"] if cfg.class_token else []) + ([f"{R} registers"] if R else []))
        lines = [f"ViT: {H}x{W}x{C} images, {P}x{P} patches ({cfg.grid[0]}x{cfg.grid[1]} grid, "
                 f"N={N}, T={T} with {prefix or 'no CLS'}), D={D}, depth={cfg.depth}, heads={h} (d={d}), "
                 f"M={M}, K={K}, pool={cfg.pool}, gelu={cfg.gelu}, pos_embed={cfg.pos_embed}, "
                 f"{cfg.dtype}", "", "Activations (B = batch):"]
        stages = [("images", f"(B, {H}, {W}, {C})"), ("patchify", f"(B, {N}, {P * P * C})"),
                  ("patch embedding", f"(B, {N}, {D})"), (f"prepend {prefix or 'nothing'}", f"(B, {T}, {D})"),
                  ("+ position embedding", f"(B, {T}, {D})"),
                  (f"{cfg.depth} x block: attention q/k/v", f"(B, {h}, {T}, {d}) each"),
                  ("  attention probabilities", f"(B, {h}, {T}, {T})"),
                  ("  MLP hidden", f"(B, {T}, {M})"), ("  block output", f"(B, {T}, {D})"),
                  ("final layer norm", f"(B, {T}, {D})"),
                  ("pool (" + POOL_NAMES[cfg.pool] + ")", f"(B, {D})"), ("head -> logits", f"(B, {K})")]
        width = max(len(s) for s, _ in stages)
        lines += [f"  {s:<{width}}  {shape}" for s, shape in stages]
        lines += ["", "Parameters:"]
        width = max(len(k) for k in self.params)
        for k, v in self.params.items():
            lines.append(f"  {k:<{width}}  {str(v.shape):<14} {v.size:>9,}")
        lines.append(f"  {'total':<{width}}  {'':<14} {self.num_params():>9,}")
        return "\n".join(lines)
