"""Host reads of tensor values, counted on CPU (src/cordaseg/engine/host_reads.py): the counter
sees each kind of read once, and the training iteration as ``cordaseg train`` runs it makes none
for CorDA (the shipped recipe, parameter multiplicity included), DACS and source-only, with and
without the merged student pass. On a GPU each read would be a host-device sync;
``benchmarks/train_step.py`` prints this count beside CUDA's sync-debug count."""

from __future__ import annotations

import copy

import pytest
import torch

from cordaseg.adaptation import adaptation_step
from cordaseg.engine.config import train_config_from_dict
from cordaseg.engine.host_reads import READ_METHODS, count_host_reads
from cordaseg.engine.iteration import build_optimizer, make_state, train_iteration
from cordaseg.engine.trainer import derive_seed
from cordaseg.models.corda import build_model

SIZE = 64
TINY = {"backbone_depth": 18, "backbone_width": 16, "head_width": 32}


def test_each_kind_of_read_is_counted_once():
    x = torch.arange(-3.0, 5.0).reshape(2, 4)
    with count_host_reads() as reads:
        x.sum().item()
        bool(x.max() > 0)  # Tensor.__bool__, not again as the aten._local_scalar_dense it calls
        float(x[0, 0])
        x.tolist()
        x.numpy()
        x.cpu()
        x[x > 0]  # boolean-mask indexing sizes its output from the mask
        torch.nonzero(x)
        torch.unique(x)
        torch.equal(x, x)
        x.repeat_interleave(torch.tensor([1, 2]), dim=0)
    assert dict(reads) == {
        "Tensor.item": 1, "Tensor.__bool__": 1, "Tensor.__float__": 1, "Tensor.tolist": 1, "Tensor.numpy": 1,
        "Tensor.cpu": 1, "aten.index.Tensor": 1, "aten.nonzero.default": 1, "aten._unique2.default": 1,
        "aten.equal.default": 1, "aten.repeat_interleave.Tensor": 1,
    }
    assert reads.total == 11


def test_reads_free_code_counts_zero_and_the_methods_come_back():
    before = {name: getattr(torch.Tensor, name) for name in READ_METHODS}
    x = torch.randn(4, 8, requires_grad=True)
    with count_host_reads() as reads:
        y = (x.softmax(1) * torch.where(x > 0, x, 0.0)).sum()
        y.backward()
        x.repeat_interleave(torch.tensor([1, 2, 1, 1]), dim=0, output_size=5)
        torch.zeros(2, 256, dtype=torch.bool).scatter_(1, torch.tensor([[1], [3]]), True)
    assert reads.total == 0, dict(reads)
    assert {name: getattr(torch.Tensor, name) for name in READ_METHODS} == before
    assert "item" not in torch.Tensor.__dict__


def recipe(method: str, merged: bool):
    """The shipped recipe (``recipe.fidelity: reference``) on the tiny network, on CPU."""
    return train_config_from_dict({
        "model": {**TINY, "arch": "deeplab" if method != "corda" else "corda"},
        "adaptation": {"method": method, "merged_student_pass": merged},
        "run": {"device": "cpu", "precision": "fp32"},
    })


def make_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (2, SIZE // 8, SIZE // 8), generator=g)
    label = label.repeat_interleave(8, 1).repeat_interleave(8, 2)  # (2, SIZE, SIZE), blocky classes
    label[:, :3] = 255
    depth = 0.05 + 0.5 * torch.rand(2, SIZE, SIZE, generator=g)
    return {
        "source_image": torch.rand(2, 3, SIZE, SIZE, generator=g) * 255 - 115,
        "source_label": label,
        "source_depth": depth,
        "target_image": torch.rand(2, 3, SIZE, SIZE, generator=g) * 255 - 115,
        "target_depth": depth.flip(1).masked_fill(torch.rand(2, SIZE, SIZE, generator=g) < 0.05, 1.0),
    }


@pytest.mark.parametrize(("method", "merged"), [
    ("corda", False), ("corda", True), ("dacs", False), ("dacs", True), ("source_only", False),
])
def test_training_iteration_reads_nothing_on_the_host(method, merged):
    cfg = recipe(method, merged)
    assert cfg.optim.param_multiplicity == "reference"
    torch.manual_seed(0)
    student = build_model(cfg.model).train()
    teacher = copy.deepcopy(student).requires_grad_(False).train() if cfg.adaptation.uses_target else None
    optimizer = build_optimizer(student, cfg, cfg.optim.lr, torch.device("cpu"))
    assert max(group["multiplicity"] for group in optimizer.param_groups) > 1
    state = make_state(student, teacher, optimizer, cfg, cfg.optim.lr)
    nonfinite = torch.zeros((), dtype=torch.bool)
    # Iteration 0 creates the momentum buffers and copies the teacher; the next one updates the
    # buffers and is the first to take pseudo-labels from the teacher's final head.
    for i in (0, cfg.adaptation.initial_head_until):
        batch = make_batch(i)
        with count_host_reads() as reads:
            # The trainer's loop body around the iteration (minus loading and logging).
            generator = torch.Generator().manual_seed(derive_seed(0, 3, i, 0))
            out = train_iteration(state, batch, i, generator)
            nonfinite |= ~torch.isfinite(out.step.loss.detach())
        assert reads.total == 0, f"iteration {i}: {dict(reads)}"
    assert not nonfinite


def test_a_read_inside_the_iteration_is_counted():
    cfg = recipe("source_only", merged=False)
    student = build_model(cfg.model).train()
    state = make_state(student, None, build_optimizer(student, cfg, cfg.optim.lr, torch.device("cpu")), cfg,
                       cfg.optim.lr)

    def logging_step(*args, **kwargs):
        out = adaptation_step(*args, **kwargs)
        out.loss.item()  # what a per-iteration log line would do
        return out

    with count_host_reads() as reads:
        train_iteration(state, make_batch(0), 0, torch.Generator().manual_seed(0), step=logging_step)
    assert dict(reads) == {"Tensor.item": 1}
