"""Self-supervised target depth in one call (the CorDA paper, section 4.1).

The paper trains CorDA with target depth that needs no labels: stereo depth for Cityscapes. On a
tree with stereo pairs and camera files (the synthetic world's target, or real Cityscapes),
:func:`self_supervised_target_depth` trains the stereo depth network, then writes a view of the
tree (images linked, not copied) whose depth files are the network's predictions, ready to use as
``target.root`` of a CorDA config (``target.depth: stereo`` for ``stereo-mat``, ``mono`` for
``cityscapes-mono``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cordaseg.config import from_dict
from cordaseg.depth.export import export_depth, link_tree
from cordaseg.depth.trainer import DepthTrainConfig, train_depth


def self_supervised_target_depth(target_root: str | Path, work_dir: str | Path, *, fmt: str = "stereo-mat",
                                 split: str = "train", config: dict[str, Any] | None = None,
                                 progress: bool = False) -> tuple[Path, Path]:
    """Train stereo depth on ``target_root`` and export it; returns (tree with exported depth, checkpoint).

    ``config`` is a nested dict of :class:`DepthTrainConfig` values (e.g. ``{"optim": {"iterations":
    300}, "run": {"device": "cuda"}}``); ``data.root`` and ``run.out_dir`` are filled in.
    """
    work_dir = Path(work_dir)
    values = dict(config or {})
    values["data"] = {"layout": "cityscapes", **values.get("data", {}), "root": str(target_root), "split": split}
    values["run"] = {**values.get("run", {}), "out_dir": str(work_dir / "depth_run")}
    cfg = from_dict(DepthTrainConfig, values)
    checkpoint = train_depth(cfg, progress=progress)
    tree = link_tree(target_root, work_dir / "target")
    export_depth(checkpoint, target_root, fmt, out_root=tree, split=split, device=cfg.run.device, progress=progress)
    return tree, checkpoint
