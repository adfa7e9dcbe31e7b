"""Synchronised batch norm (cordaseg.engine.sync_batchnorm): two gloo processes with batch 1 each
normalise, back-propagate and update their running statistics like one process with batch 2;
in a single process it is plain batch norm; the converter keeps parameters, flags and state-dict
keys; ``run.sync_batchnorm`` is a validated config option (the two-process training run with it is
in test_engine_train.py)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cordaseg.config import ConfigError
from cordaseg.engine.config import load_train_config
from cordaseg.engine.sync_batchnorm import SyncBatchNorm2d, convert_sync_batchnorm
from cordaseg.models.backbone import DeepLabResNet
from cordaseg.runtime.distributed import unwrap

WORLD_SIZE = 2


class TinyNet(nn.Module):
    """Three conv + BN stages: frozen affine (as the backbone), trainable affine, cumulative average."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4, momentum=0.3)
        self.conv3 = nn.Conv2d(4, 2, 1)
        self.bn3 = nn.BatchNorm2d(2, momentum=None)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
        self.bn1.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


def fixed_batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 2 images with a large mean (where E[x^2] - E[x]^2 loses digits) and a target."""
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 6, 5, generator=generator, dtype=torch.float64) * 2 + 5
    target = torch.randn(2, 2, 6, 5, generator=generator, dtype=torch.float64)
    return image.to(dtype), target.to(dtype)


def run_steps(model: nn.Module, image: torch.Tensor, target: torch.Tensor, steps: int = 2) -> dict:
    """``steps`` SGD iterations on the mean squared error, then a no-grad forward in train mode (as
    the EMA teacher's).

    Returns the first iteration's output, input gradient and parameter gradients, and the final
    buffers and parameters.
    """
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    record = {}
    for step in range(steps):
        image = image.detach().requires_grad_(True)
        output = model(image)
        loss = ((output - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            record["output"] = output.detach()
            record["input_grad"] = image.grad
            record["grads"] = {name: None if p.grad is None else p.grad.clone()
                               for name, p in model.named_parameters()}
        optimizer.step()
    with torch.no_grad():
        record["no_grad_output"] = model(image)
    net = unwrap(model)
    record["buffers"] = {name: b.clone() for name, b in net.named_buffers()}
    record["params"] = {name: p.detach().clone() for name, p in net.named_parameters()}
    return record


def _worker(rank: int, result_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # A file store in the test's own folder: no port that a concurrent job could also pick.
    dist.init_process_group("gloo", init_method=f"file://{result_dir}/store", rank=rank, world_size=WORLD_SIZE)
    try:
        records = {}
        for dtype in (torch.float64, torch.float32):
            net = convert_sync_batchnorm(TinyNet().to(dtype))
            model = nn.parallel.DistributedDataParallel(net)
            image, target = fixed_batch(dtype)
            records[str(dtype)] = run_steps(model, image[rank:rank + 1], target[rank:rank + 1])
        torch.save(records, f"{result_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_records(tmp_path_factory) -> list[dict]:
    result_dir = tmp_path_factory.mktemp("sync_bn")
    processes = mp.spawn(_worker, args=(str(result_dir),), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + 240
    while not processes.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.kill()
            pytest.fail("the two gloo workers did not finish within 240 s")
    return [torch.load(result_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_two_processes_of_batch_1_equal_one_process_of_batch_2(two_process_records, dtype, tol):
    ranks = [records[str(dtype)] for records in two_process_records]
    image, target = fixed_batch(dtype)
    single = run_steps(TinyNet().to(dtype), image, target)  # plain nn.BatchNorm2d on the whole batch

    def close(actual, expected, what):
        torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")

    close(torch.cat([r["output"] for r in ranks]), single["output"], "output")
    close(torch.cat([r["no_grad_output"] for r in ranks]), single["no_grad_output"], "no-grad output")
    # Each rank's loss is the mean over its half of the batch, so its input gradient is that of
    # the sum of both ranks' losses: world_size times the gradient of the batch-2 mean.
    close(torch.cat([r["input_grad"] for r in ranks]) / WORLD_SIZE, single["input_grad"], "input gradient")
    for name, expected in single["grads"].items():
        if expected is None:  # the frozen affine parameters of bn1
            assert name.startswith("bn1.")
            assert all(r["grads"][f"module.{name}"] is None for r in ranks)
            continue
        for r in ranks:  # DDP's average of the ranks' gradients
            close(r["grads"][f"module.{name}"], expected, f"gradient of {name}")
    for name, expected in single["buffers"].items():
        for r in ranks:
            close(r["buffers"][name], expected, f"buffer {name}")
    for name, expected in single["params"].items():
        for r in ranks:
            close(r["params"][name], expected, f"parameter {name} after 2 steps")
    assert single["buffers"]["bn3.num_batches_tracked"] == 3  # 2 steps and the no-grad forward
    assert not torch.equal(single["buffers"]["bn2.running_var"], torch.ones(4, dtype=dtype))


def test_single_process_is_plain_batch_norm():
    plain = TinyNet()
    synced = convert_sync_batchnorm(TinyNet())
    image, target = fixed_batch(torch.float32)
    a, b = run_steps(plain, image, target), run_steps(synced, image, target)
    assert torch.equal(a["output"], b["output"]) and torch.equal(a["input_grad"], b["input_grad"])
    for name in a["buffers"]:
        assert torch.equal(a["buffers"][name], b["buffers"][name]), name
    plain.eval(), synced.eval()
    assert torch.equal(plain(image), synced(image))


def test_converter_shares_parameters_flags_and_state_dict_keys():
    plain = TinyNet().train()
    plain.bn2.eval()
    params = dict(plain.named_parameters())
    converted = convert_sync_batchnorm(TinyNet())
    converted.load_state_dict(plain.state_dict())  # a plain checkpoint loads into the converted model
    converted = convert_sync_batchnorm(plain)
    assert converted is plain
    for name in ("bn1", "bn2", "bn3"):
        old_net, new = TinyNet(), getattr(converted, name)
        old = getattr(old_net, name)
        assert type(new) is SyncBatchNorm2d
        assert (new.eps, new.momentum, new.affine, new.track_running_stats) == \
               (old.eps, old.momentum, old.affine, old.track_running_stats)
        assert new.weight is params[f"{name}.weight"] and new.bias is params[f"{name}.bias"]
    assert not converted.bn1.weight.requires_grad and not converted.bn1.bias.requires_grad
    assert converted.bn2.weight.requires_grad and converted.bn2.bias.requires_grad
    assert not converted.bn2.training and converted.bn1.training
    assert list(converted.state_dict()) == list(TinyNet().state_dict())
    TinyNet().load_state_dict(converted.state_dict())  # and a converted checkpoint into a plain model
    bare = convert_sync_batchnorm(nn.BatchNorm2d(3))
    assert type(bare) is SyncBatchNorm2d and convert_sync_batchnorm(bare) is bare


def test_backbone_batch_norm_freezing_still_applies_after_conversion():
    backbone = convert_sync_batchnorm(DeepLabResNet(depth=18, width=4, freeze_bn_stats=True)).train()
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(type(m) is SyncBatchNorm2d for m in norms)
    assert all(not m.training for m in norms)  # frozen statistics: BN stays in eval mode
    assert all(not p.requires_grad for m in norms for p in m.parameters())  # frozen affine


def test_config_option_is_validated():
    assert load_train_config(None, ["run.sync_batchnorm=true"]).run.sync_batchnorm
    assert not load_train_config(None, []).run.sync_batchnorm  # off unless asked for
    with pytest.raises(ConfigError, match="run.sync_batchnorm"):
        load_train_config(None, ["run.sync_batchnorm=maybe"])
