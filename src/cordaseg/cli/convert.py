"""``cordaseg convert``: reference checkpoints -> the project's checkpoint format."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from cordaseg.errors import CordasegError
from cordaseg.models.checkpoint import convert_file
from cordaseg.models.convert import REFERENCE_VARIANTS
from cordaseg.runtime.outputs import check_file


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a reference CorDA checkpoint into a cordaseg checkpoint",
        description=(
            "Convert a reference checkpoint (training dict with model/ema_model/optimizer/iteration/config, "
            "or a bare state dict, keys optionally prefixed 'module.') into the cordaseg format. The "
            "variant is read off the keys; pass --variant where they are ambiguous."
        ),
    )
    p.add_argument("src", help="reference checkpoint (.pth)")
    p.add_argument("--out", required=True, help="where to write the cordaseg checkpoint (a new file)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never the input itself)")
    p.add_argument("--variant", choices=REFERENCE_VARIANTS, help="reference model variant")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling for old files that weights_only loading cannot read (runs code from the file)",
    )
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    src, out = Path(args.src), Path(args.out)
    if out.exists() and src.exists() and os.path.samefile(src, out):
        raise CordasegError(f"--out {out}: is the input checkpoint itself; converting in place would replace "
                            "the original, so write the converted file under another name")
    check_file(out, "--out", overwrite=args.overwrite)
    summary = convert_file(args.src, args.out, variant=args.variant, trust_pickle=args.trust_pickle)
    print(f"converted {args.src} -> {args.out}")
    print(json.dumps(summary, indent=2))
    return 0
