"""DAFormer's optimiser and schedule as options: the warm-up + poly formula at hand-computed
iterations, the AdamW parameter groups, and an exact AdamW resume through a checkpoint file."""

from __future__ import annotations

import pytest
import torch

from cordaseg.adaptation.schedules import poly_lr
from cordaseg.config import ConfigError
from cordaseg.engine.config import OptimConfig, RunConfig, TrainConfig, load_train_config
from cordaseg.engine.iteration import apply_sgd_flags, build_optimizer
from cordaseg.engine.lr_schedule import scheduled_lr, warmup_factor
from cordaseg.engine.optim import MultiplicitySGD
from cordaseg.models.corda import ModelConfig, build_model

DAFORMER = OptimConfig(name="adamw", iterations=40_000, lr=6e-5, poly_power=1.0, warmup_iterations=1500,
                       warmup_ratio=1e-6, weight_decay=0.01)


# Hand computations, lr 6e-5, T = 40,000, p = 1, W = 1,500, r = 1e-6:
#   i = 0:      poly = 6e-5;                  factor = 1 - 1 * (1 - 1e-6) = 1e-6           -> 6e-11
#   i = 750:    poly = 6e-5 * 0.98125 = 5.8875e-5;  factor = 1 - 0.5 * 0.999999 = 0.5000005
#               -> 5.8875e-5 * 0.5000005 = 2.94375294375e-5
#   i = 1499:   poly = 6e-5 * (1 - 1499/40000) = 5.77515e-5; factor = 1 - (1/1500) * 0.999999
#               = 0.999333334 -> 5.77515e-5 * 0.999333334 = 5.771300...e-5
#   i = 1500:   warm-up over: poly = 6e-5 * 0.9625 = 5.775e-5
#   i = 20,000: 3e-5;  i = 39,999: 6e-5 / 40,000 = 1.5e-9;  i = 40,000: 0
@pytest.mark.parametrize(("iteration", "expected"), [
    (0, 6e-11),
    (750, 2.94375294375e-5),
    (1499, 5.77515e-5 * (1 - 0.999999 / 1500)),
    (1500, 5.775e-5),
    (20_000, 3e-5),
    (39_999, 1.5e-9),
    (40_000, 0.0),
])
def test_daformer_schedule_at_hand_computed_iterations(iteration, expected):
    assert scheduled_lr(6e-5, iteration, DAFORMER) == pytest.approx(expected, rel=1e-9, abs=0)


def test_warmup_rises_linearly_and_never_exceeds_poly():
    factors = [warmup_factor(i, 1500, 1e-6) for i in range(0, 1501, 100)]
    assert factors[0] == pytest.approx(1e-6) and factors[-1] == 1.0
    steps = [b - a for a, b in zip(factors, factors[1:])]
    assert steps == pytest.approx([steps[0]] * len(steps), rel=1e-9)  # linear
    for i in range(0, 2000, 37):
        assert scheduled_lr(6e-5, i, DAFORMER) <= poly_lr(6e-5, i, 40_000, 1.0)


def test_default_schedule_is_the_unchanged_poly():
    optim = OptimConfig()
    assert optim.name == "sgd" and optim.warmup_iterations == 0
    for i in (0, 1, 1234, 125_000, 249_999, 250_000):
        assert scheduled_lr(2.5e-4, i, optim) == poly_lr(2.5e-4, i, 250_000, 0.9)


@pytest.mark.parametrize(("key", "value"), [
    ("optim.name", "adam"), ("optim.warmup_iterations", -1), ("optim.warmup_ratio", 0.0),
    ("optim.warmup_ratio", 1.5), ("optim.betas", [0.9, 1.0]), ("optim.eps", 0.0),
])
def test_invalid_optim_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        load_train_config(None, [f"{key}={value}"])


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="corda", backbone_depth=18, backbone_width=4, head_width=8, num_classes=3))


def tiny_daformer() -> torch.nn.Module:
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="deeplab", decoder="daformer", backbone="mit_b0", backbone_width=8,
                                   backbone_blocks=(1, 1, 1, 1), decoder_width=16, head_width=16, num_classes=3))


def adamw_config(**optim) -> TrainConfig:
    fields = {"name": "adamw", "lr": 6e-5, "weight_decay": 0.01, "no_decay_norms": True, **optim}
    return TrainConfig(optim=OptimConfig(**fields), run=RunConfig(device="cpu"))


def test_adamw_groups_follow_daformer_paramwise_cfg():
    model = tiny_daformer()
    optimizer = build_optimizer(model, adamw_config(), 6e-5, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["backbone", "backbone_norm", "heads"]
    assert [groups[n]["lr"] for n in groups] == pytest.approx([6e-5, 6e-5, 6e-4])
    assert [groups[n]["weight_decay"] for n in groups] == [0.01, 0.0, 0.01]
    assert all(g["betas"] == (0.9, 0.999) and g["multiplicity"] == 1 for g in groups.values())
    names = {id(p): name for name, p in model.named_parameters()}
    exempt = {names[id(p)] for p in groups["backbone_norm"]["params"]}
    backbone = {names[id(p)] for p in groups["backbone"]["params"]}
    heads = {names[id(p)] for p in groups["heads"]["params"]}
    # mmcv's rule: encoder parameters named "norm" lose their decay; the decoder keeps it.
    assert exempt and all(n.startswith("backbone.") and "norm" in n for n in exempt)
    assert all(n.startswith("backbone.") and "norm" not in n.split(".")[-2] for n in backbone)
    assert not any(n.startswith("backbone.") for n in heads)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert exempt | backbone | heads == trainable and len(exempt) + len(backbone) + len(heads) == len(trainable)


def test_sgd_stays_the_default_optimizer():
    model = tiny_model()
    cfg = TrainConfig(run=RunConfig(device="cpu"))
    assert type(build_optimizer(model, cfg, 2.5e-4, torch.device("cpu"))) is MultiplicitySGD


def fake_gradients(model: torch.nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) if p.requires_grad else None


def run_steps(model, optimizer, cfg, steps: range) -> None:
    for i in steps:
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(cfg.optim.lr, i, cfg.optim) * group["lr_mult"]
        fake_gradients(model, i)
        optimizer.step()


def test_adamw_state_resumes_exactly_through_a_checkpoint_file(tmp_path):
    cfg = adamw_config(iterations=8, warmup_iterations=3)
    device = torch.device("cpu")
    straight = tiny_model()
    straight_opt = build_optimizer(straight, cfg, cfg.optim.lr, device)
    run_steps(straight, straight_opt, cfg, range(6))

    first = tiny_model()
    first_opt = build_optimizer(first, cfg, cfg.optim.lr, device)
    run_steps(first, first_opt, cfg, range(3))
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, tmp_path / "ckpt.pt")
    del first, first_opt

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = tiny_model()
    resumed.load_state_dict(saved["model"])
    resumed_opt = build_optimizer(resumed, cfg, cfg.optim.lr, device)
    resumed_opt.load_state_dict(saved["optimizer"])
    apply_sgd_flags(resumed_opt, cfg, device)
    run_steps(resumed, resumed_opt, cfg, range(3, 6))

    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    state_a, state_b = straight_opt.state_dict()["state"], resumed_opt.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        for field in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state_a[key][field], state_b[key][field]), (key, field)
