"""ImageNet-1k class names and the preprocessing of the pretrained ViT checkpoints.

Class names: ``data_files/imagenet_classes.txt`` holds one short human-readable
name per line, 1000 lines, in the standard ILSVRC-2012 order (sorted WordNet
synset ids, n01440764 "tench" first, n15075141 "toilet tissue" last). These are
the commonly used short names (the first lemma of each synset), so two
pairs repeat: "crane" (134 the bird, 517 the machine) and "maillot" (638, 639).

Preprocessing (``preprocess_imagenet``): what timm's evaluation transform does
for the ViT checkpoints of the original Google release and of "How to train your
ViT" (augreg): resize the shorter side to floor(crop / crop_pct) with bicubic
interpolation, cut the centre crop, scale to [0, 1], then normalise with mean
0.5 and std 0.5 per channel, i.e. to [-1, 1] -- the Google checkpoints were
trained on inputs in [-1, 1]. timm's crop_pct is 0.9 for the 224-pixel models
and 1.0 for every 384-pixel fine-tune (``vit_*_384.*``: resize to 384, crop
nothing); ``crop_pct_for`` gives it for an input size.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np

from ._checks import check_array, check_float, describe
from ._files import open_image

__all__ = ["imagenet_class_names", "preprocess_imagenet", "imagenet_preprocess_info",
           "preprocess_kwargs", "top_k", "crop_pct_for", "IMAGENET_MEAN_VIT", "IMAGENET_STD_VIT",
           "CROP_PCT", "CROP_PCT_384"]

IMAGENET_MEAN_VIT = (0.5, 0.5, 0.5)
IMAGENET_STD_VIT = (0.5, 0.5, 0.5)
CROP_PCT = 0.9              # timm's crop_pct for the 224-pixel Google / augreg ViTs
CROP_PCT_384 = 1.0          # ... and for their 384-pixel fine-tunes
CLASSES_FILE = "imagenet_classes.txt"


@lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    try:
        from importlib.resources import files
        text = files("tinyvit").joinpath("data_files", CLASSES_FILE).read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        path = os.path.join(os.path.dirname(__file__), "data_files", CLASSES_FILE)
        with open(path, encoding="utf-8") as f:
            text = f.read()
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"{CLASSES_FILE}: expected 1000 class names, found {len(names)}")
    return names


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, index k = class k of a 1000-way head."""
    return list(_class_names())


def crop_pct_for(image_size) -> float:
    """timm's crop_pct for a Google / augreg ViT at this input size: 1.0 for the 384-pixel
    fine-tunes (timm's pretrained configs for every ``vit_*_384`` model), else 0.9."""
    return CROP_PCT_384 if max(_hw(image_size)) == 384 else CROP_PCT


def imagenet_preprocess_info(image_size=224, crop_pct: float | None = None) -> dict:
    """The preprocessing of a ViT checkpoint at this input size, as a dict.

    {"resize": shorter side before the crop (int, square crops) or (H', W'),
     "crop": (H, W), "crop_pct", "interpolation": "bicubic", "mean", "std"}.
    crop_pct None: ``crop_pct_for(image_size)`` (0.9, or 1.0 at 384 pixels, as timm).
    """
    H, W = _hw(image_size)
    if crop_pct is None:
        crop_pct = crop_pct_for((H, W))
    crop_pct = check_float("crop_pct", crop_pct, minimum=0.0, maximum=1.0, open_min=True)
    resize = (math.floor(H / crop_pct), math.floor(W / crop_pct))
    return {"resize": resize[0] if H == W else resize, "crop": (H, W), "crop_pct": crop_pct,
            "interpolation": "bicubic", "mean": IMAGENET_MEAN_VIT, "std": IMAGENET_STD_VIT}


def preprocess_kwargs(info: dict) -> dict:
    """Keyword arguments for ``preprocess_imagenet`` from ``load_model``'s info (or its "preprocess")."""
    pre = info.get("preprocess", info)
    return {"image_size": tuple(pre["crop"]), "crop_pct": pre["crop_pct"],
            "mean": tuple(pre["mean"]), "std": tuple(pre["std"])}


def _hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        H, W = image_size
    else:
        H = W = image_size
    for v in (H, W):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"image_size: expected a positive int or (H, W), got {image_size!r}")
    return int(H), int(W)


def preprocess_imagenet(image, image_size=224, crop_pct: float | None = None,
                        mean=IMAGENET_MEAN_VIT, std=IMAGENET_STD_VIT, dtype="float32") -> np.ndarray:
    """A PIL image (or a path to one) -> (1, H, W, 3) array, channels last, ready for a ViT.

    1. convert to RGB (grey, palette and RGBA images too);
    2. resize with bicubic interpolation so the shorter side is floor(S / crop_pct),
       S the crop side, keeping the aspect ratio (int(s * long / short) for the
       long side, as torchvision's Resize; for a non-square (H, W) crop, the
       smallest size covering floor(H / crop_pct) x floor(W / crop_pct));
    3. cut the centre (H, W) crop, top = round((h' - H) / 2), left likewise;
    4. divide by 255, subtract mean and divide by std per channel.

    Defaults follow the Google ViT checkpoints as timm serves them: crop_pct None
    means ``crop_pct_for(image_size)`` (0.9, but 1.0 at 384 pixels), bicubic,
    mean = std = 0.5, so values land in [-1, 1]. crop_pct=1.0 keeps the whole
    shorter side. Returns float32 (or dtype) of shape (1, H, W, 3).
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with open_image(image) as im:                # size checked before decoding; one-line errors
            image = im.convert("RGB")
    elif not isinstance(image, Image.Image):
        raise TypeError(f"image: expected a PIL image or a path, got {describe(image)}")
    H, W = _hw(image_size)
    if crop_pct is None:
        crop_pct = crop_pct_for((H, W))
    crop_pct = check_float("crop_pct", crop_pct, minimum=0.0, maximum=1.0, open_min=True)
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean.shape != (3,) or std.shape != (3,) or not (std > 0).all():
        raise ValueError(f"mean, std: expected three numbers each (std > 0), got {mean.tolist()}, "
                         f"{std.tolist()}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    img = image.convert("RGB")
    w, h = img.size
    sh, sw = math.floor(H / crop_pct), math.floor(W / crop_pct)
    if sh == sw:                                   # shorter side to sh, as torchvision Resize(int)
        if w <= h:
            new_w, new_h = sh, int(sh * h / w)
        else:
            new_h, new_w = sh, int(sh * w / h)
    else:                                          # cover (sh, sw), keeping the aspect ratio
        r = max(sh / h, sw / w)
        new_h, new_w = max(sh, round(h * r)), max(sw, round(w * r))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - H) / 2.0)), int(round((new_w - W) / 2.0))
    img = img.crop((left, top, left + W, top + H))
    x = np.asarray(img, dtype=np.float64) / 255.0                  # (H, W, 3) in [0, 1]
    x = (x - mean) / std
    return x[None].astype(dtype)                                   # (1, H, W, 3)


def top_k(logits: np.ndarray, k: int = 5, class_names=None) -> list[tuple[int, str, float]]:
    """The k most probable classes of one image: [(index, name, probability), ...].

    logits (K,) or (1, K). Names come from class_names (default: ImageNet's when
    K == 1000, else the index as a string).
    """
    check_array("logits", logits, kind="f")
    z = logits.reshape(-1).astype(np.float64) if logits.ndim == 1 or logits.shape[0] == 1 else None
    if z is None:
        raise ValueError(f"logits: expected shape (K,) or (1, K), got {logits.shape}")
    p = np.exp(z - z.max())
    p /= p.sum()
    if class_names is None and z.size == 1000:
        class_names = imagenet_class_names()
    order = np.argsort(-p, kind="stable")[:max(1, int(k))]
    return [(int(i), class_names[i] if class_names is not None else str(i), float(p[i]))
            for i in order]
