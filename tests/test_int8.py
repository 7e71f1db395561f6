"""INT8 attention projections: the int8 GEMM against its float fake-quant reference, the
quantised tiny DiT against fp32, and the choice of backend."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from matrixgame.accel import capability
from matrixgame.accel.int8 import Int8Linear, int8_mm, quantize_dit, target_names
from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT

COSINE = 0.995


def tiny_dit(seed: int = 0) -> MatrixGameDiT:
    """The tiny preset with its zero-initialised layers (head, camera scale/shift, action
    projections, biases) made random, so that every path reaches the output."""
    torch.manual_seed(seed)
    model = MatrixGameDiT(DIT_PRESETS["tiny"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                nn.init.normal_(p, std=0.02)
    return model


def dit_inputs(cfg, batch=2, memory=2, frames=4, height=4, width=6, seed=1):
    """A non-first clip with memory, camera rays and actions: ``(x, t, kwargs)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_dim, frames, height, width, generator=g)
    t = torch.tensor([[0.0, 0.0, 700.0, 700.0]]).expand(batch, frames)
    kwargs = dict(
        keyboard=(torch.rand(batch, 4 * frames, 6, generator=g) > 0.5).float(),
        mouse=torch.randn(batch, 4 * frames, 2, generator=g) * 0.1,
        plucker=torch.randn(batch, cfg.plucker_channels, memory + frames, height, width,
                            generator=g),
        memory=torch.randn(batch, cfg.in_dim, memory, height, width, generator=g),
        keyboard_memory=-torch.ones(batch, memory, 6),
        mouse_memory=torch.ones(batch, memory, 2),
        memory_index=list(range(memory)),
        first_index=memory,
    )  # fmt: skip
    return x, t, kwargs


def per_sample_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)


BRANCHES = ("self_attn", "cross_attn", "ffn")


@torch.no_grad()
def run_recording(model, x, t, kwargs):
    """The model's output and, by name, the output of every block and of each block's
    attention and FFN branches (before the residual, where quantisation error is not diluted
    by the stream)."""
    recorded, hooks = {}, []
    for i, block in enumerate(model.blocks):
        for name, mod in [("", block)] + [(f".{b}", getattr(block, b)) for b in BRANCHES]:
            key = f"blocks.{i}{name}"
            hooks.append(mod.register_forward_hook(lambda m, a, o, k=key: recorded.update({k: o})))
    try:
        return model(x, t, **kwargs), recorded
    finally:
        for h in hooks:
            h.remove()


@pytest.fixture(scope="module")
def fp32_run():
    model = tiny_dit()
    x, t, kwargs = dit_inputs(model.config)
    return x, t, kwargs, run_recording(model, x, t, kwargs)


# -- the layer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 7, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_gemm_equals_the_fake_quant_reference(tokens, dtype):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48).to(dtype)
    x = torch.randn(2, tokens, 64, dtype=dtype) * 3
    fast, ref = Int8Linear.from_linear(linear), Int8Linear.from_linear(linear, reference=True)
    with torch.no_grad():
        y, want = fast(x), ref(x)
    assert y.shape == (2, tokens, 48) and y.dtype == dtype
    # the int32 accumulator is exact; only float32 summation order (and the bf16 cast) differs
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(y, want, **tol)


def test_int8_mm_is_the_exact_integer_product():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (5, 24), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (24, 12), generator=g, dtype=torch.int8)
    assert torch.equal(int8_mm(a, b), a.int() @ b.int())


def test_layer_quantisation_rounds_per_channel_and_per_token():
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    mod = Int8Linear.from_linear(linear)
    assert mod.qweight.dtype == torch.int8 and mod.qweight.shape == (32, 16)
    assert mod.qweight.abs().amax(0).eq(127).all()  # each output channel uses the full range
    err = (mod.dequantize() - linear.weight).abs()
    assert (err <= mod.weight_scale[:, None] / 2 + 1e-7).all()  # half a step per channel
    assert mod.weight.dtype == torch.float32 and mod.weight.device.type == "meta"
    x = torch.randn(3, 32)
    with torch.no_grad():
        rel = (mod(x) - linear(x)).norm() / linear(x).norm()
    assert rel < 0.02
    assert mod(torch.zeros(2, 32)).isfinite().all()  # an all-zero token has a finite scale


# -- the DiT -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ffn", [False, True])
def test_quantised_dit_within_cosine_of_fp32(fp32_run, ffn):
    x, t, kwargs, (want, want_parts) = fp32_run
    model = tiny_dit()
    report = quantize_dit(model, ffn=ffn, backend="int8")
    out, parts = run_recording(model, x, t, kwargs)
    assert per_sample_cosine(out, want).min() > COSINE
    assert parts.keys() == want_parts.keys()
    for name, got in parts.items():
        assert per_sample_cosine(got, want_parts[name]).min() > COSINE, name
    assert any(n.endswith("ffn.0") for n in report.replaced) == ffn


def test_int8_path_matches_the_reference_backend(fp32_run):
    x, t, kwargs, _ = fp32_run
    fast, ref = tiny_dit(), tiny_dit()
    quantize_dit(fast, ffn=True, backend="int8")
    quantize_dit(ref, ffn=True, backend="reference")
    with torch.no_grad():
        a, b = fast(x, t, **kwargs), ref(x, t, **kwargs)
    # equal per layer (above); through 6 blocks a float-summation difference can move a token's
    # value across a rounding boundary of the next layer's quantiser, so only nearly equal
    assert (a - b).norm() / b.norm() < 1e-3


def test_report_names_every_attention_projection_and_nothing_else():
    model = tiny_dit()
    layers = model.config.num_layers
    report = quantize_dit(model, backend="int8")
    assert report.backend == "int8" and report.quantized
    assert len(report.replaced) == layers * 2 * 4
    assert "blocks.0.self_attn.q" in report.replaced and "blocks.5.cross_attn.o" in report.replaced
    assert {type(model.get_submodule(n)) for n in report.replaced} == {Int8Linear}
    assert not any(isinstance(m, Int8Linear) for m in model.blocks[0].action_model.modules())
    assert quantize_dit(model, backend="int8").replaced == ()  # a second call finds nothing left
    with_ffn = target_names(tiny_dit(), ffn=True)
    assert len(with_ffn) == layers * 10 and "blocks.3.ffn.2" in with_ffn


def test_parameters_outside_the_targets_are_untouched():
    fp32 = tiny_dit()
    model = tiny_dit()
    report = quantize_dit(model, ffn=True, backend="int8")
    before, after = fp32.state_dict(), model.state_dict()
    replaced = tuple(f"{n}." for n in report.replaced)
    kept = {k for k in before if not k.startswith(replaced)}
    assert kept == {k for k in after if not k.startswith(replaced)}
    for k in kept:
        assert torch.equal(before[k], after[k]), k
    assert {k.removeprefix("blocks.0.self_attn.q.") for k in after if "0.self_attn.q." in k} == {
        "qweight",
        "weight_scale",
        "bias",
    }


def test_quantises_a_single_block():
    block = tiny_dit().blocks[1]
    report = quantize_dit(block, ffn=True, backend="reference")
    assert report.replaced[0] == "self_attn.q" and "ffn.0" in report.replaced


# -- the backend -------------------------------------------------------------------------------


def test_auto_on_a_cpu_with_fast_int8(monkeypatch):
    monkeypatch.setattr(capability, "fast_int8", lambda: True)
    report = quantize_dit(model := tiny_dit(), backend="auto")
    assert report.backend == "int8" and report.quantized
    assert isinstance(model.blocks[0].self_attn.q, Int8Linear)
    assert report.hardware.startswith("CPU")


def test_auto_leaves_a_bf16_model_on_the_cpu_as_it_is(monkeypatch):
    monkeypatch.setattr(capability, "fast_int8", lambda: True)
    report = quantize_dit(model := tiny_dit().to(torch.bfloat16), backend="auto")
    assert not report.quantized and "bf16" in report.reason
    assert not any(isinstance(m, Int8Linear) for m in model.modules())
    assert quantize_dit(model, backend="int8").quantized  # asked for: given


def test_auto_falls_back_without_fast_int8(monkeypatch):
    monkeypatch.setattr(capability, "fast_int8", lambda: False)
    fp32, model = tiny_dit(), tiny_dit()
    report = quantize_dit(model)
    assert report.backend == "none" and not report.quantized and report.replaced == ()
    assert "no fast int8" in report.reason
    assert not any(isinstance(m, Int8Linear) for m in model.modules())
    for (k, a), b in zip(fp32.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_forced_int8_without_fast_int8_says_it_is_slow(monkeypatch):
    monkeypatch.setattr(capability, "fast_int8", lambda: False)
    report = quantize_dit(tiny_dit().blocks[0], backend="int8")
    assert report.quantized and "slow" in report.reason


def test_unknown_backend_is_a_value_error():
    model = tiny_dit()
    with pytest.raises(ValueError, match="unknown int8 backend 'triton'"):
        quantize_dit(model, backend="triton")
    assert not any(isinstance(m, Int8Linear) for m in model.modules())


def test_torchao_backend_within_cosine_of_fp32(fp32_run):
    pytest.importorskip("torchao.quantization")
    x, t, kwargs, (want, _) = fp32_run
    model = tiny_dit()
    report = quantize_dit(model, backend="torchao")
    assert report.backend == "torchao" and len(report.replaced) == 48
    with torch.no_grad():
        out = model(x, t, **kwargs)
    assert per_sample_cosine(out, want).min() > COSINE


# -- CUDA --------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(40, 64, 48), (5, 64, 48), (33, 60, 44)])
def test_cuda_int8_gemm_pads_to_cublas_shapes(shape):
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (k, n), generator=g, dtype=torch.int8)
    assert torch.equal(int8_mm(a.cuda(), b.cuda()).cpu(), a.int() @ b.int())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_auto_quantises_and_matches(fp32_run, dtype):
    x, t, kwargs, (want, _) = fp32_run
    model = tiny_dit().cuda().to(dtype)
    report = quantize_dit(model, ffn=True)
    assert report.backend == "int8" and report.hardware.startswith("CUDA")
    cuda = {k: v.cuda().to(dtype) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    with torch.no_grad():
        out = model(x.cuda().to(dtype), t.cuda(), **cuda).float().cpu()
    assert per_sample_cosine(out, want).min() > (COSINE if dtype == torch.float32 else 0.99)
