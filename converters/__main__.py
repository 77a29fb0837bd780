"""Convert an EPAM-Net PyTorch checkpoint into an epam-jax (orbax) checkpoint.

    python -m converters SRC.pth OUT_DIR [--model epam|backbone|rgb|pose]
        [--num-classes N] [--attention-type T] [--verify]

Prints what was mapped and the parameter count per component; ``--verify``
also runs the pinned PyTorch reference and the Flax model on the same random
input and prints the largest difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from converters.convert import (
    MODELS,
    ConversionError,
    count_parameters,
    normalize_keys,
    read_torch_checkpoint,
    torch_to_flax,
)
from epam_jax.attention import ATTENTION_TYPES
from epam_jax.checkpoints import build_model, describe, save_variables


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m converters", description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path, help="PyTorch checkpoint (.pth)")
    p.add_argument("out_dir", type=Path, help="directory to write the orbax checkpoint to")
    p.add_argument("--model", choices=MODELS, default="epam",
                   help="what to build: the full network, the two-stream backbone, or one stream")
    p.add_argument("--num-classes", type=int, default=None,
                   help="expected classes (default: read from the checkpoint)")
    p.add_argument("--attention-type", choices=ATTENTION_TYPES, default=None,
                   help="expected attention (default: read from the checkpoint)")
    p.add_argument("--verify", action="store_true",
                   help="compare the PyTorch reference and the Flax model on a random input")
    p.add_argument("--verify-size", choices=("small", "full"), default="small",
                   help="input size for --verify: small (16x64x64 rgb) or full (16x224x224)")
    return p.parse_args(argv)


def verify(state_dict: dict, variables: dict, model: str, size: str) -> float:
    """Largest relative difference between the reference and the Flax model outputs."""
    import jax
    import torch

    from converters.reference import build_reference

    meta = describe(variables)
    kw = {"num_classes": meta["num_classes"] or 60}
    if meta["attention_type"]:
        kw["attention_type"] = meta["attention_type"]
    ref = build_reference(model, **kw)
    ref.load_state_dict(state_dict, strict=True)
    ref.eval()
    flax_model = build_model(model, **kw)
    side = 224 if size == "full" else 64
    rng = np.random.default_rng(0)
    rgb = rng.standard_normal((1, 3, 16, side, side)).astype(np.float32)
    pose = rng.random((1, 17, 48, side // 4, side // 4)).astype(np.float32)
    inputs = {"rgb": (rgb,), "pose": (pose,)}.get(model, (rgb, pose))
    with torch.no_grad():
        ref_out = ref(*(torch.from_numpy(x) for x in inputs))
    ndhwc = [x.transpose(0, 2, 3, 4, 1) for x in inputs]
    out = jax.jit(flax_model.apply)(variables, *ndhwc)
    ref_out = ref_out if isinstance(ref_out, tuple) else (ref_out,)
    out = out if isinstance(out, tuple) else (out,)
    worst = 0.0
    for r, o in zip(ref_out, out, strict=True):
        r = r.numpy()
        if r.ndim == 5:
            r = r.transpose(0, 2, 3, 4, 1)
        worst = max(worst, float(np.abs(r - np.asarray(o)).max() / np.abs(r).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        raw = read_torch_checkpoint(args.src)
        state_dict, dropped = normalize_keys(raw, args.model)
        variables = torch_to_flax(
            state_dict, args.model, num_classes=args.num_classes,
            attention_type=args.attention_type,
        )
    except (ConversionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    meta = describe(variables)
    print(f"source      {args.src}")
    print(f"model       {meta['model']}  num_classes={meta['num_classes']}  "
          f"attention={meta['attention_type']}")
    mapped = sum(1 for k in state_dict if not k.endswith("num_batches_tracked"))
    print(f"tensors     {mapped} mapped, {len(dropped)} of other components left out")
    for name, count in count_parameters(variables).items():
        print(f"  {name:<18}{count:>12,d} parameters")
    if args.verify:
        err = verify(state_dict, variables, args.model, args.verify_size)
        print(f"verify      max relative difference vs PyTorch reference: {err:.3e}")
        if err > 1e-4:
            print("error: the converted model does not match the reference", file=sys.stderr)
            return 1
    try:
        path = save_variables(args.out_dir, variables, source=str(args.src))
    except (FileExistsError, PermissionError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"written     {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
