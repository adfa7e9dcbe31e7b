"""Training checkpoints: atomic writes, keeping the last K, and exact resume.

A training checkpoint is the project checkpoint format (``"format": "cordaseg"``,
``"format_version": 1``, ``"model_config"``, ``"model"``) plus what a resumed run needs to continue
exactly as an uninterrupted one: ``"teacher"``, ``"optimizer"``, ``"iteration"``, ``"config"``
(the resolved :class:`~cordaseg.engine.config.TrainConfig` as a dict), ``"rng"`` and
``"data_state"``. Everything stored is a tensor, dict, list, number or string, so the file loads
with ``torch.load(weights_only=True)``; Python and NumPy RNG states are stored as integer tensors.

Files are written with :func:`cordaseg.runtime.files.atomic_save` (a temporary name in the
same directory, then ``os.replace``), so a run killed while saving never leaves a truncated
checkpoint behind. Checkpoints also carry ``"run_id"`` and ``"lineage"``
(:mod:`cordaseg.engine.run_folder`); a branch's checkpoints are named with its lineage id,
``checkpoint_00000022.<lineage>.pt``, so that they never replace the files of the line it left.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cordaseg.config import to_dict
from cordaseg.errors import CheckpointError
from cordaseg.models.checkpoint import model_config_of
from cordaseg.models.checkpoint_file import FORMAT, FORMAT_VERSION, read_file

_NAME = re.compile(r"^checkpoint_(\d+)(?:\.[0-9a-f]{12})?\.pt$")


def checkpoint_name(iteration: int, tag: str | None = None) -> str:
    """File name of the training checkpoint taken after ``iteration`` completed iterations;
    ``tag`` (a branch's lineage id) goes before the suffix."""
    return f"checkpoint_{iteration:08d}.pt" if tag is None else f"checkpoint_{iteration:08d}.{tag}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of every training checkpoint in ``directory`` (of every lineage), oldest
    first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found, key=lambda item: (item[0], item[1].name))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest training checkpoint in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest training checkpoints; returns the deleted paths."""
    if keep_last < 1:
        return []
    found = list_checkpoints(directory)
    removed = [path for _, path in found[:-keep_last]]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (weights only); a missing or foreign file is a CheckpointError."""
    data = read_file(path)  # no trust option: cordaseg's own checkpoints never need full unpickling
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cordaseg checkpoint (no 'format': '{FORMAT}' entry)")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {data.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    missing = [k for k in ("model", "teacher", "optimizer", "iteration", "config") if k not in data]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing '{missing[0]}'); cannot resume from it")
    return data


# ----------------------------------------------------------------------------------------------
# RNG states. Python's and NumPy's states are tuples of machine words; they are stored as int64
# tensors so that the checkpoint stays loadable with weights_only=True.


def capture_rng_state() -> dict[str, Any]:
    """States of Python's ``random``, NumPy's global RNG, torch's CPU RNG and every CUDA RNG."""
    py_version, py_words, py_gauss = random.getstate()
    np_kind, np_words, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what we save)
    state: dict[str, Any] = {
        "python": {
            "version": int(py_version),
            "words": torch.tensor(py_words, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "kind": str(np_kind),
            "words": torch.from_numpy(np.asarray(np_words, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only where the device count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["words"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (restoring the legacy global RNG)
        (npy["kind"], npy["words"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def check_same_model(payload: dict[str, Any], model_cfg: Any, path: str | Path) -> None:
    """Raise a CheckpointError naming the first ``model.<key>`` where the checkpoint's network
    differs from the configured one (a checkpoint of another variant)."""
    saved = to_dict(model_config_of(payload, path))
    wanted = to_dict(model_cfg)
    for key, value in wanted.items():
        if saved.get(key) != value:
            raise CheckpointError(
                f"{path} is a checkpoint of another variant: it has model.{key}={saved.get(key)!r}, "
                f"the config asks for model.{key}={value!r}"
            )
