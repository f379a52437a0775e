"""The ``tinyvit`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys

import numpy as np


def cmd_demo(args) -> int:
    """Build a small model, print its summary, and check its gradients."""
    from . import ViT, ViTConfig
    from .gradcheck import check_model, format_errors

    cfg = ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=16,
                    num_classes=3, dtype="float64", seed=args.seed)
    model = ViT(cfg)
    print(model.summary())
    rng = np.random.default_rng(args.seed)
    images = rng.random((2, 8, 8, 1))
    errors = check_model(model, images)          # random upstream gradient on the logits
    print("\nGradient check (float64, centred differences), relative error per tensor:")
    print(format_errors(errors, 1e-7))
    return 0 if max(errors.values()) < 1e-7 else 1


COMMAND_MODULES = ("train", "bench", "assignment")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyvit", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="print a small model's summary and check its gradients")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    # Commands that live in their own modules: each module has add_command(subparsers),
    # which adds its parser and sets func=... on it.
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"tinyvit.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"tinyvit.{name}":
                continue
            raise
        module.add_command(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"tinyvit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
