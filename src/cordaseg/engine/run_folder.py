"""The run folder: which run it holds, which checkpoint a run starts from, and what it may replace.

A run folder (``run.out_dir``) holds one *run*, named by a run id, and its training checkpoints.
Each checkpoint also carries a *lineage* id: the line of training it belongs to. Resuming from the
newest checkpoint of a lineage continues that lineage; resuming from an older one (``--resume
DIR/checkpoint_00000020.pt`` while 25 and 30 exist) starts a new lineage, a branch, beside the old
one. ``run.json`` records the run id, the lineage the folder's last run belongs to, where that
run started, its branches and every accepted config change. From it:

- auto-resume continues the current lineage, falling back to the next older checkpoint (with a
  warning naming the bad file) when the newest cannot be read; checkpoints of another lineage are
  never taken, and a folder where the choice is ambiguous is refused with what to do;
- pruning keeps the newest ``checkpoint.keep_last`` checkpoints of the writing run's own lineage
  and never touches another lineage's files (:func:`prune_lineage`); a branch's checkpoints and
  best model carry its lineage id in their names (``checkpoint_00000022.<lineage>.pt``,
  ``best.<lineage>.pt``), so they never replace the files of the line it left;
- a run that reuses the folder with another config is refused unless ``--allow-config-change``
  (keys that do not change what is trained, such as ``logging.*`` or ``run.num_workers``, may
  always change: :data:`FREE_KEYS`);
- a folder that holds another run's ``config.yaml`` / ``metrics.jsonl`` without a checkpoint is
  refused; the same run stopped before its first checkpoint (same config, ``run.json`` saying it
  started from scratch) starts again from scratch, its metrics cleared.

Everything here reads files; the trainer writes ``run.json`` (:func:`write_record`) once it starts.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cordaseg.config import ConfigError, to_dict
from cordaseg.engine import checkpoint as ckpt
from cordaseg.errors import CheckpointError, CordasegError
from cordaseg.models.checkpoint_scan import scan_checkpoint

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"

FREE_KEYS = ("run.out_dir", "run.num_workers", "run.auto_resume", "run.device", "logging.", "checkpoint.every",
             "checkpoint.keep_last", "checkpoint.init", "checkpoint.trust_pickle", "eval.batch_size")
"""Config keys (or key prefixes ending in '.') that a resumed run may change freely: they change
where and how a run reports, or which device computes, not what it trains."""


def new_id() -> str:
    """A short random id for a run or a lineage."""
    return uuid.uuid4().hex[:12]


# ----------------------------------------------------------------------------------------------
# run.json


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The folder's ``run.json``, or None when there is none."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CordasegError(f"{path}: not readable JSON ({err}); it records which run the folder holds, "
                            "so fix or delete it") from None
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
        raise CordasegError(f"{path}: has no 'run_id'; it records which run the folder holds, so fix or delete it")
    return record


def write_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``run.json`` atomically (a temporary file renamed over it)."""
    path = Path(run_dir) / RUN_FILE
    tmp = path.with_name(f".{RUN_FILE}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def remove_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete what a run killed while writing left behind: ``.checkpoint_*.tmp`` and the other
    temporary files of atomic writes in the folder. Returns the deleted paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = []
    for pattern in (".checkpoint_*.tmp", ".best*.pt.*.tmp", f".{RUN_FILE}.tmp", ".config.yaml.tmp", "metrics.tmp"):
        for path in run_dir.glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------------------------
# Lineages of checkpoints


def checkpoint_identity(path: str | Path) -> tuple[str | None, str | None] | None:
    """(run id, lineage id) of a training checkpoint, read without reading its tensors (memory
    mapped); (None, None) for a checkpoint written before these ids existed; None when the file
    cannot be read."""
    scan = scan_checkpoint(path)
    if scan.kind != "torch-zip" or scan.unsafe_globals:
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # damaged in a way the scan cannot see
        return None
    if not isinstance(payload, dict):
        return None
    return payload.get("run_id"), payload.get("lineage")


_UNREADABLE = object()


def _lineage_of(path: Path) -> Any:
    """The lineage id of a checkpoint (None for one written before lineages existed), or a
    marker equal to no lineage when the file cannot be read."""
    identity = checkpoint_identity(path)
    return _UNREADABLE if identity is None else identity[1]


def lineage_checkpoints(run_dir: str | Path, lineage: str | None) -> list[tuple[int, Path]]:
    """(iteration, path) of the readable checkpoints of one lineage, oldest first."""
    return [(iteration, path) for iteration, path in ckpt.list_checkpoints(run_dir)
            if _lineage_of(path) == lineage]


def prune_lineage(run_dir: str | Path, lineage: str, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints of ``lineage``; checkpoints of other
    lineages and unreadable files are left alone. Returns the deleted paths."""
    own = lineage_checkpoints(run_dir, lineage)
    removed = [path for _, path in own[:-keep_last]] if keep_last >= 1 else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _newest_by_lineage(found: list[tuple[int, Path]], identities: dict[Path, Any]) -> dict[str | None, Path]:
    newest: dict[str | None, Path] = {}
    for _, path in found:  # oldest first: the last one seen is the newest
        if identities[path] is not None:
            newest[identities[path][1]] = path
    return newest


def find_resume_checkpoint(run_dir: str | Path, record: dict[str, Any] | None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint auto-resume continues from, and its contents.

    The newest readable checkpoint of the folder's current lineage (``run.json``); an unreadable
    one is skipped with a warning naming it. Raises CheckpointError when there is none, and when
    the folder holds several lineages and ``run.json`` does not say which one to continue.
    """
    run_dir = Path(run_dir)
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"--resume: no checkpoint_*.pt in run.out_dir {run_dir}")
    identities = {path: checkpoint_identity(path) for _, path in found}
    newest = _newest_by_lineage(found, identities)
    current = record.get("lineage") if record else None
    start = (record or {}).get("start") or {}
    if current in newest:
        lineage = current
    elif len(newest) == 1 and not start.get("branch"):
        lineage = next(iter(newest))
    elif not newest:
        lineage = None  # nothing readable: every candidate below fails with its own warning
    else:
        options = "; ".join(f"--resume {path}" for path in newest.values())
        if start.get("branch"):
            raise CheckpointError(
                f"run.out_dir {run_dir}: its last run branched from {start.get('checkpoint')} and was stopped "
                f"before writing a checkpoint, beside checkpoints of the line it branched from; say which "
                f"to continue: --resume {start.get('checkpoint')} (the branch again), or {options}"
            )
        raise CheckpointError(
            f"run.out_dir {run_dir}: holds checkpoints of {len(newest)} lines of training (branches) and "
            f"{RUN_FILE} does not say which is current; resume one explicitly ({options}), or move the "
            "others to another folder"
        )
    candidates = [path for _, path in reversed(found)
                  if identities[path] is None or identities[path][1] == lineage]
    skipped = []
    for path in candidates:
        try:
            return path, ckpt.load_checkpoint(path)
        except CheckpointError as err:
            skipped.append(path)
            warnings.warn(f"skipping {path}, resuming from an older checkpoint: {err}", stacklevel=2)
    raise CheckpointError(f"run.out_dir {run_dir}: no readable checkpoint to resume from (tried "
                          f"{', '.join(p.name for p in skipped)})")


# ----------------------------------------------------------------------------------------------
# Config changes


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def _is_free(key: str) -> bool:
    return any(key == free or (free.endswith(".") and key.startswith(free)) for free in FREE_KEYS)


def _comparable(key: str, value: Any) -> Any:
    if key.endswith(".root") and isinstance(value, str) and value:
        return str(Path(value).resolve())  # a relative and an absolute spelling of one folder
    return value


def config_differences(saved: dict[str, Any] | None, cfg: Any) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for every key where ``cfg`` differs from the ``saved`` config
    mapping, except :data:`FREE_KEYS`. An empty or missing saved config compares equal."""
    if not saved:
        return []
    from cordaseg.engine.config import train_config_from_dict

    try:  # fill keys added since the checkpoint was written with their defaults
        saved = to_dict(train_config_from_dict(saved))
    except ConfigError:
        pass  # keys renamed or removed since: compare what is there
    old, new = _flatten(saved), _flatten(to_dict(cfg))
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if _is_free(key):
            continue
        a, b = old.get(key), new.get(key)
        if _comparable(key, a) != _comparable(key, b):
            changes.append((key, a, b))
    return changes


def describe_changes(changes: list[tuple[str, Any, Any]], limit: int = 4) -> str:
    shown = ", ".join(f"{key}: {a!r} -> {b!r}" for key, a, b in changes[:limit])
    return shown + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


# ----------------------------------------------------------------------------------------------
# Where a run starts


@dataclass
class RunStart:
    """Where a training run starts and what it may do to its folder."""

    run_id: str
    """The folder's run id (kept when continuing, new for a new run)."""
    lineage: str
    """The lineage the run's checkpoints get."""
    resume_path: Path | None = None
    """The training checkpoint it continues from."""
    resume: dict[str, Any] | None = None
    """That checkpoint's contents."""
    branch_of: str | None = None
    """When the run branches: the lineage it branches from (its newer checkpoints are kept)."""
    restart: bool = False
    """True when the same run starts again from scratch in its own folder (metrics cleared)."""
    config_changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    """Accepted config changes (``--allow-config-change``), recorded in ``run.json``."""
    record: dict[str, Any] | None = None
    """The folder's ``run.json`` as found (None for a new folder)."""

    @property
    def root_lineage(self) -> str:
        """The folder's first lineage, whose checkpoints have plain names."""
        if self.record and self.record.get("root_lineage"):
            return self.record["root_lineage"]
        return self.branch_of if self.branch_of is not None else self.lineage

    @property
    def tag(self) -> str | None:
        """What this run's checkpoint names carry: its lineage id on a branch, else nothing."""
        return None if self.lineage == self.root_lineage else self.lineage

    def new_record(self, iteration: int) -> dict[str, Any]:
        """``run.json`` for this start."""
        record = dict(self.record or {})
        record["run_id"] = self.run_id
        record["root_lineage"] = self.root_lineage
        record.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        start = {"checkpoint": None if self.resume_path is None else str(self.resume_path),
                 "iteration": iteration, "branch": self.branch_of is not None}
        if record.get("lineage") != self.lineage:
            record["start"] = start
            if self.branch_of is not None:
                record.setdefault("branches", []).append(
                    {"lineage": self.lineage, "from_lineage": self.branch_of, **start,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        record.setdefault("start", start)
        record["lineage"] = self.lineage
        if self.config_changes:
            record.setdefault("config_changes", []).append({
                "iteration": iteration, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "lineage": self.lineage,
                "changes": {key: [a, b] for key, a, b in self.config_changes},
            })
        return record


def _leftovers(run_dir: Path) -> list[str]:
    return [name for name in (CONFIG_FILE, METRICS_FILE, RUN_FILE) if (run_dir / name).exists()]


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    import yaml

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _check_changes(cfg: Any, saved: dict[str, Any] | None, allow: bool, what: str,
                   run_dir: Path) -> list[tuple[str, Any, Any]]:
    changes = config_differences(saved, cfg)
    if changes and not allow:
        raise ConfigError(
            f"run.out_dir {run_dir}: {what} was trained with another config ({describe_changes(changes)}); "
            "pass --allow-config-change to continue it with the new values (recorded in "
            f"{run_dir / RUN_FILE}), or choose another run.out_dir"
        )
    return changes


def _with_accepted_changes(saved: dict[str, Any] | None, record: dict[str, Any] | None, lineage: str | None,
                           iteration: int) -> dict[str, Any] | None:
    """The config of a checkpoint of ``lineage`` at ``iteration``, with the changes accepted
    (``--allow-config-change``) when that lineage was last continued from that very checkpoint:
    the values it runs with from there on, though no checkpoint holds them yet."""
    if not saved or not record:
        return saved
    accepted = [c for c in record.get("config_changes", [])
                if c.get("lineage") == lineage and c.get("iteration") == iteration]
    if not accepted:
        return saved
    flat = _flatten(saved)
    for change in accepted:
        flat.update({key: new for key, (_, new) in change["changes"].items()})
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *sections, name = key.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return nested


def plan_start(cfg: Any, resume: bool | str | Path | None, allow_config_change: bool = False) -> RunStart:
    """Decide where the run of ``cfg`` starts (see the module docstring for the rules).

    ``resume``: None resumes from the current lineage's newest checkpoint when
    ``run.auto_resume`` is set and there is one; True requires one; a path resumes from that
    file. Raises a CordasegError naming the folder or file for every refusal.
    """
    run_dir = Path(cfg.run.out_dir)
    record = read_record(run_dir)
    found = ckpt.list_checkpoints(run_dir)
    if resume is True or (resume is None and cfg.run.auto_resume and found):
        path, payload = find_resume_checkpoint(run_dir, record)
    elif resume is None and found:
        raise ConfigError(f"run.out_dir: {run_dir} already holds checkpoints; pass --resume, set "
                          "run.auto_resume=true or choose another run.out_dir")
    elif resume not in (None, False):
        path = Path(resume)
        payload = ckpt.load_checkpoint(path)
    else:
        return _plan_fresh(cfg, run_dir, record, found, allow_config_change)

    ckpt.check_same_model(payload, cfg.model, path)
    iteration = int(payload["iteration"])
    if iteration > cfg.optim.iterations:
        raise ConfigError(f"optim.iterations: {cfg.optim.iterations} is less than the iteration "
                          f"{iteration} of {path}")
    same_folder = path.parent.resolve() == run_dir.resolve()
    run_id, lineage = payload.get("run_id"), payload.get("lineage")
    if not same_folder:
        # Continuing a checkpoint of another folder starts a new run here.
        if found:
            raise ConfigError(f"run.out_dir: {run_dir} already holds checkpoints of its own run; resuming "
                              f"{path} there would mix two runs. Choose an empty run.out_dir")
        rerun = record is not None and (record.get("start") or {}).get("checkpoint") == str(path)
        if _leftovers(run_dir) and not rerun:
            raise ConfigError(f"run.out_dir: {run_dir} holds {', '.join(_leftovers(run_dir))} of another run; "
                              f"choose an empty run.out_dir to continue {path} in")
        changes = _check_changes(cfg, payload.get("config"), allow_config_change, str(path), run_dir)
        if rerun:
            return RunStart(record["run_id"], record["lineage"], path, payload, record=record,
                            config_changes=changes)
        return RunStart(new_id(), new_id(), path, payload, config_changes=changes)
    if record is not None and run_id is not None and run_id != record["run_id"]:
        raise CheckpointError(f"{path}: belongs to run {run_id}, but run.out_dir {run_dir} holds run "
                              f"{record['run_id']} (see its {RUN_FILE}); was the file copied here?")
    saved = _with_accepted_changes(payload.get("config"), record, lineage, iteration)
    changes = _check_changes(cfg, saved, allow_config_change, path.name, run_dir)
    newer = [p for it, p in found if it > iteration and _lineage_of(p) == lineage]
    run_id = run_id or (record or {}).get("run_id") or new_id()
    if newer:
        return RunStart(run_id, new_id(), path, payload, branch_of=lineage or "", record=record,
                        config_changes=changes)
    return RunStart(run_id, lineage or new_id(), path, payload, record=record, config_changes=changes)


def _plan_fresh(cfg: Any, run_dir: Path, record: dict[str, Any] | None, found: list, allow: bool) -> RunStart:
    leftovers = _leftovers(run_dir)
    if not leftovers:
        return RunStart(new_id(), new_id())
    start = (record or {}).get("start") or {}
    if found:
        raise ConfigError(f"run.out_dir: {run_dir} holds checkpoints of an earlier run; resume it (--resume) "
                          "or choose another run.out_dir")
    if record is None:
        raise ConfigError(
            f"run.out_dir: {run_dir} holds {', '.join(leftovers)} of an earlier run but no checkpoint to "
            "resume from; starting here would replace its config and mix its metrics. Choose another "
            "run.out_dir, or delete those files first"
        )
    if start.get("checkpoint"):
        raise ConfigError(
            f"run.out_dir: {run_dir}: its run started from {start['checkpoint']} and was stopped before "
            f"writing a checkpoint; start it again with --resume {start['checkpoint']}, or choose another "
            "run.out_dir"
        )
    changes = _check_changes(cfg, _saved_config(run_dir), allow, "its run (stopped before its first checkpoint)",
                             run_dir)
    return RunStart(record["run_id"], record.get("lineage") or new_id(), record=record, restart=True,
                    config_changes=changes)
