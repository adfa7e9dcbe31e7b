"""The engine's training iteration: the same update as the plain sequence of docs/method.md,
"Training step" (poly lr, step, backward, SGD, EMA) whatever the SGD kernels, no host reads, the
process settings it needs, and the teacher's second CUDA stream."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from cordaseg.adaptation import adaptation_step
from cordaseg.adaptation.ema import ema_alpha
from cordaseg.adaptation.schedules import poly_lr
from cordaseg.config import ConfigError
from cordaseg.engine.config import OptimConfig, RunConfig, TrainConfig, load_train_config
from cordaseg.engine.iteration import (
    IterationState,
    apply_sgd_flags,
    build_optimizer,
    make_state,
    numerics,
    sgd_flags,
    train_iteration,
)
from cordaseg.models.corda import ModelConfig, build_model, param_groups

SIZE = 64
TINY = ModelConfig(backbone_depth=18, backbone_width=16, head_width=32)
_BUILT = {}


def networks(device: str = "cpu") -> tuple[torch.nn.Module, torch.nn.Module]:
    if "model" not in _BUILT:
        torch.manual_seed(0)
        _BUILT["model"] = build_model(TINY)
    student = copy.deepcopy(_BUILT["model"]).to(device).train()
    teacher = copy.deepcopy(student).requires_grad_(False).train()
    return student, teacher


def make_batch(device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (2, SIZE // 8, SIZE // 8), generator=g)
    label = label.repeat_interleave(8, 1).repeat_interleave(8, 2)  # (2, SIZE, SIZE), blocky classes
    label[:, :3] = 255
    batch = {
        "source_image": torch.rand(2, 3, SIZE, SIZE, generator=g) * 255 - 115,
        "source_label": label,
        "source_depth": 0.05 + 0.5 * torch.rand(2, SIZE, SIZE, generator=g),
        "target_image": torch.rand(2, 3, SIZE, SIZE, generator=g) * 255 - 115,
        "target_depth": 0.05 + 0.5 * torch.rand(2, SIZE, SIZE, generator=g),
    }
    batch["target_depth"][:, :, :4] = 1.0  # invalid
    return {k: v.to(device) for k, v in batch.items()}


def config(implementation: str = "auto", multiplicity: str = "reference", **run) -> TrainConfig:
    return TrainConfig(model=TINY, optim=OptimConfig(iterations=100, implementation=implementation,
                                                     param_multiplicity=multiplicity),
                       run=RunConfig(device="cpu", **run))


def run_iterations(cfg: TrainConfig, iterations: range, device: str = "cpu"):
    student, teacher = networks(device)
    optimizer = build_optimizer(student, cfg, cfg.optim.lr, torch.device(device))
    state = make_state(student, teacher, optimizer, cfg, cfg.optim.lr)
    assert (state.model is student) != cfg.run.compile
    outputs = []
    for i in iterations:
        outputs.append(train_iteration(state, make_batch(device, seed=i), i, torch.Generator(device).manual_seed(i)))
    return student, teacher, outputs


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, **tolerance) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}", **tolerance)


def test_iteration_is_the_plain_sequence_of_the_recipe():
    # Plain SGD on both sides (the reference's multiplicity is tested in tests/test_engine_optim.py).
    cfg = config("for_loop", multiplicity="once")
    iterations = range(3, 5)  # past iteration 0, where the EMA teacher just copies the student
    student, teacher, outputs = run_iterations(cfg, iterations)

    plain_student, plain_teacher = networks()
    optimizer = torch.optim.SGD(param_groups(plain_student, cfg.optim.lr, cfg.optim.head_lr_mult), lr=cfg.optim.lr,
                                momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay, foreach=False)
    for i, out in zip(iterations, outputs):
        lr = poly_lr(cfg.optim.lr, i, cfg.optim.iterations, cfg.optim.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        step = adaptation_step(plain_student, plain_teacher, make_batch(seed=i), cfg.adaptation, i,
                               torch.Generator().manual_seed(i))
        optimizer.zero_grad()
        step.loss.backward()
        optimizer.step()
        alpha = ema_alpha(i, cfg.adaptation.ema_alpha)
        with torch.no_grad():
            for t, s in zip(plain_teacher.parameters(), plain_student.parameters()):
                t.mul_(alpha).add_(s, alpha=1 - alpha)
        assert out.lr == lr
        torch.testing.assert_close(out.step.loss, step.loss.detach())
    assert_same_weights(student, plain_student)
    assert_same_weights(teacher, plain_teacher)
    assert any(not torch.equal(p, q) for p, q in zip(student.parameters(), networks()[0].parameters()))


def test_sgd_kernels_give_the_same_update():
    iterations = range(2)  # the second update uses the momentum buffers
    reference, reference_teacher, _ = run_iterations(config("for_loop"), iterations)
    for implementation in ("fused", "foreach"):
        student, teacher, _ = run_iterations(config(implementation), iterations)
        assert_same_weights(student, reference, rtol=1e-5, atol=1e-6)
        assert_same_weights(teacher, reference_teacher, rtol=1e-5, atol=1e-6)


def test_sgd_flags_and_their_restoration_after_a_resume():
    assert sgd_flags("auto", torch.device("cuda")) == {"fused": True, "foreach": None}
    assert sgd_flags("auto", torch.device("cpu")) == {"fused": None, "foreach": None}
    assert sgd_flags("foreach", torch.device("cpu")) == {"fused": None, "foreach": True}
    assert sgd_flags("for_loop", torch.device("cuda")) == {"fused": None, "foreach": False}

    student, _ = networks()
    saved = build_optimizer(student, config("foreach"), 1e-3, torch.device("cpu")).state_dict()
    resumed = build_optimizer(student, config("fused"), 1e-3, torch.device("cpu"))
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["foreach"] is True  # load_state_dict brings the saved kernels back
    apply_sgd_flags(resumed, config("fused"), torch.device("cpu"))
    assert all(g["fused"] is True and g["foreach"] is None for g in resumed.param_groups)


def test_iteration_reads_no_tensor_on_the_host(monkeypatch):
    """No .item(), bool(), float() in the whole iteration: on a GPU each would be a sync."""
    cfg = config("fused")
    student, teacher = networks()
    state = IterationState(student, teacher, build_optimizer(student, cfg, 1e-3, torch.device("cpu")), cfg, 1e-3)
    batch = make_batch()

    def forbidden(*args, **kwargs):
        raise AssertionError("the iteration read a tensor value on the host")

    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    out = train_iteration(state, batch, 5, torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert torch.isfinite(out.step.loss)


def test_numerics_sets_cudnn_benchmark_on_cuda_only_and_restores_the_process_settings():
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    with numerics(config(), torch.device("cuda")):
        assert torch.backends.cudnn.benchmark is True
        assert not torch.are_deterministic_algorithms_enabled()
    with numerics(config(), torch.device("cpu")):
        assert torch.backends.cudnn.benchmark is False
    with numerics(config(deterministic=True), torch.device("cuda")):
        assert torch.backends.cudnn.benchmark is False
        assert torch.are_deterministic_algorithms_enabled()
    assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before


def test_bf16_channels_last_iteration_updates_the_student():
    cfg = config(precision="bf16", channels_last=True)
    before = [p.clone() for p in networks()[0].parameters()]
    student, _, outputs = run_iterations(cfg, range(1))
    assert torch.isfinite(outputs[0].step.loss)
    assert outputs[0].step.loss.dtype == torch.float32  # losses stay in float32 under autocast
    assert any(not torch.equal(p, q) for p, q in zip(student.parameters(), before))


@pytest.mark.slow
def test_compiled_iteration_gives_the_same_update(monkeypatch):
    """run.compile: the compiled networks share their weights with the originals (which the
    optimiser, the EMA and checkpoints use) and give the same update. Captured with the aot_eager
    backend: the same graphs as the default inductor backend without its minutes of CPU code
    generation (inductor itself matched eager here to 6e-8 in the weights, checked once)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    iterations = range(3, 5)
    try:
        eager, eager_teacher, eager_out = run_iterations(config(), iterations)
        compiled, compiled_teacher, compiled_out = run_iterations(config(compile=True), iterations)
    finally:
        torch._dynamo.reset()
    for a, b in zip(compiled_out, eager_out):
        torch.testing.assert_close(a.step.loss, b.step.loss)
    assert_same_weights(compiled, eager)
    assert_same_weights(compiled_teacher, eager_teacher)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_teacher_on_a_second_stream_gives_the_same_iteration():
    iterations = range(3, 5)
    overlapped, overlapped_teacher, out_a = run_iterations(config(teacher_stream=True), iterations, "cuda")
    in_line, in_line_teacher, out_b = run_iterations(config(teacher_stream=False), iterations, "cuda")
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a.step.loss, b.step.loss)
    assert_same_weights(overlapped, in_line)
    assert_same_weights(overlapped_teacher, in_line_teacher)


def test_speed_options_load_from_overrides_and_bad_values_name_the_key():
    cfg = load_train_config(None, ["optim.implementation=fused", "run.compile=true", "run.teacher_stream=false"])
    assert (cfg.optim.implementation, cfg.run.compile, cfg.run.teacher_stream) == ("fused", True, False)
    assert (TrainConfig().optim.implementation, TrainConfig().run.teacher_stream) == ("auto", True)
    with pytest.raises(ConfigError, match="optim.implementation"):
        load_train_config(None, ["optim.implementation=fastest"])
