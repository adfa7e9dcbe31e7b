"""Two nodes on one machine: two ``torchrun --nnodes 2 --nproc_per_node 1`` launches (node ranks
0 and 1, static rendezvous on 127.0.0.1, gloo) run ``cordaseg train`` on the tiny config, as the
README's multi-node command does across machines. Each node has its own working directory, so the
test can see that only node 0 writes the (relative) run folder, and both ranks end with the same
weights."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cordaseg.engine import checkpoint as ckpt
from cordaseg.engine.logging import read_metrics
from test_engine_train import TINY, tiny_overrides, trees  # noqa: F401 - trees is a fixture

REPO = Path(__file__).resolve().parents[1]

# ``cordaseg train`` through the CLI, with train() wrapped to dump each rank's final weights.
CLI_RANK_SCRIPT = """
import importlib, os, sys, torch
from cordaseg import cli

train_command = importlib.import_module("cordaseg.cli.train")  # the module that calls train()
train, dumps = train_command.train, sys.argv[1]

def train_and_dump(*args, **kwargs):
    result = train(*args, **kwargs)
    params = {f"student.{k}": v.detach() for k, v in result.student.named_parameters()}
    params.update({f"teacher.{k}": v.detach() for k, v in result.teacher.named_parameters()})
    torch.save(params, os.path.join(dumps, f"rank{os.environ['RANK']}.pt"))
    return result

train_command.train = train_and_dump
sys.exit(cli.main(["train", *sys.argv[2:]]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_in_sync(trees, tmp_path):  # noqa: F811 - the imported fixture
    script = tmp_path / "rank_script.py"
    script.write_text(CLI_RANK_SCRIPT)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    overrides = tiny_overrides(trees, Path("run"), "optim.iterations=3", "optim.batch_size=1",
                               "checkpoint.every=3", "eval.every=3", "logging.every=1", "logging.image_every=3")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    port = free_port()
    launches = []
    for node_rank in (0, 1):
        node_dir = tmp_path / f"node{node_rank}"  # each node's working directory (its local disk)
        node_dir.mkdir()
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
                   str(script), str(dumps), "--config", str(TINY), *overrides]
        launches.append(subprocess.Popen(command, cwd=node_dir, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, start_new_session=True))
    try:
        outputs = [launch.communicate(timeout=300)[0] for launch in launches]
    finally:
        for launch in launches:
            if launch.poll() is None:
                os.killpg(launch.pid, signal.SIGKILL)
                launch.wait()
    for node_rank, (launch, output) in enumerate(zip(launches, outputs)):
        assert launch.returncode == 0, f"node {node_rank}:\n{output[-3000:]}"

    assert "done: 3 iterations" in outputs[0] and "done:" not in outputs[1]
    rank0 = torch.load(dumps / "rank0.pt", weights_only=True)
    rank1 = torch.load(dumps / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name

    run_dir = tmp_path / "node0" / "run"
    assert not (tmp_path / "node1" / "run").exists()
    assert [r["iteration"] for r in read_metrics(run_dir, "train")] == [1, 2, 3]
    assert [it for it, _ in ckpt.list_checkpoints(run_dir)] == [3]
    saved = ckpt.load_checkpoint(run_dir / ckpt.checkpoint_name(3))
    assert saved["data_state"]["world_size"] == 2
