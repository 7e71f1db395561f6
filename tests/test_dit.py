"""The Matrix-Game 3.0 DiT: equality with the public reference, sizes, gradients."""

import pytest
import torch

from helpers import golden, off_init
from matrixgame.models.actions import ActionConfig
from matrixgame.models.dit import DIT_PRESETS, DiTConfig, MatrixGameDiT

# the reference's tiny config (tests/golden/mg3_dit_tiny.md)
GOLDEN_CONFIG = DiTConfig(
    dim=96,
    ffn_dim=192,
    num_heads=3,
    num_layers=2,
    text_dim=32,
    text_len=8,
    action=ActionConfig(
        blocks=(0,),
        heads=2,
        hidden_size=16,
        keyboard_hidden_dim=32,
        mouse_hidden_dim=32,
        rope_dim_list=(8, 4, 4),
    ),
)


@pytest.fixture(scope="module")
def reference():
    g = golden("mg3_dit_tiny.safetensors")
    model = MatrixGameDiT(GOLDEN_CONFIG).eval()
    model.load_state_dict({k: v for k, v in g.items() if not k.startswith("golden.")})
    return model, g


def run_golden(model, g):
    """The golden model call: a non-first clip with memory, camera and actions."""
    return model(
        g["golden.x"], g["golden.t"], g["golden.context"][None],
        keyboard=g["golden.keyboard_cond"], mouse=g["golden.mouse_cond"],
        plucker=g["golden.plucker_emb"], memory=g["golden.x_memory"],
        memory_t=g["golden.timestep_memory"], keyboard_memory=g["golden.keyboard_cond_memory"],
        mouse_memory=g["golden.mouse_cond_memory"], memory_index=g["golden.memory_latent_idx"],
        first_index=int(g["golden.predict_latent_idx"][0]),
    )  # fmt: skip


@torch.no_grad()
def test_matches_the_reference_with_memory_camera_and_actions(reference):
    model, g = reference
    torch.testing.assert_close(run_golden(model, g), g["golden.out"], atol=1e-5, rtol=0)


@torch.no_grad()
def test_matches_the_reference_null_branch(reference):
    model, g = reference
    out = model(
        g["golden.x"],
        g["golden.t"],
        g["golden.context_null"][None],
        keyboard=g["golden.keyboard_cond_null"],
        mouse=g["golden.mouse_cond_null"],
        plucker=g["golden.plucker_emb"][:, :, 2:],
        first_index=int(g["golden.predict_latent_idx"][0]),
    )
    torch.testing.assert_close(out, g["golden.out_null"], atol=1e-5, rtol=0)


def test_head_wise_rope_frequencies(reference):
    model, g = reference
    want = torch.view_as_complex(g["golden.rope_freqs_real"].contiguous())
    torch.testing.assert_close(model.freqs[:, :16], want)


def test_release_size():
    with torch.device("meta"):
        model = MatrixGameDiT(DIT_PRESETS["mg3-5b"])
    assert sum(p.numel() for p in model.parameters()) == 6_469_915_584


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    cfg = DIT_PRESETS["tiny"]
    model = off_init(MatrixGameDiT(cfg))  # the zero-initialised layers off zero
    x = torch.randn(1, cfg.in_dim, 3, 4, 4)
    out = model(
        x,
        torch.tensor([[0.0, 500.0, 500.0]]),
        torch.randn(1, cfg.text_len, cfg.text_dim),
        keyboard=(torch.rand(1, 12, 6) > 0.5).float(),
        mouse=torch.randn(1, 12, 2) * 0.2,
        plucker=torch.randn(1, cfg.plucker_channels, 4, 4, 4),
        memory=torch.randn(1, cfg.in_dim, 1, 4, 4),
        keyboard_memory=-torch.ones(1, 1, 6),
        mouse_memory=torch.ones(1, 1, 2),
        memory_index=[0],
        first_index=2,
    )
    assert out.shape == x.shape
    out.square().mean().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


def test_inputs_are_checked():
    model = MatrixGameDiT(DIT_PRESETS["tiny"])
    x = torch.randn(1, 16, 1, 4, 4)
    with pytest.raises(ValueError, match="keyboard and mouse"):
        model(x, torch.tensor([0.0]), keyboard=torch.zeros(1, 1, 6))
    with pytest.raises(ValueError, match="timesteps must be"):
        model(x, torch.zeros(1, 7))
    with pytest.raises(ValueError, match="plucker covers"):
        model(x, torch.tensor([0.0]), plucker=torch.zeros(1, 1536, 2, 4, 4))


@torch.no_grad()
def test_bfloat16_agrees_with_float32():
    # the bf16 fast path against the fp32 reference path; RoPE stays complex under .to()
    torch.manual_seed(0)
    model = off_init(MatrixGameDiT(DIT_PRESETS["tiny"]).eval())
    x, t = torch.randn(1, 16, 3, 6, 8), torch.tensor([[0.0, 700.0, 700.0]])
    full = model(x, t)
    half = model.to(torch.bfloat16)(x.bfloat16(), t)
    assert model.freqs.is_complex()
    assert (half.float() - full).abs().max() <= 0.03 * full.abs().max()


def test_attention_backend_is_checked():
    from matrixgame.models.layers import set_attention_backend

    with pytest.raises(ValueError, match="'sdpa' or 'flash'"):
        set_attention_backend("xformers")


@pytest.mark.gpu
def test_flash_attention_matches_sdpa_on_cuda():
    pytest.importorskip("flash_attn")
    from matrixgame.models.layers import attention, set_attention_backend

    q, k, v = (torch.randn(2, 64, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    reference = attention(q, k, v)
    set_attention_backend("flash")
    try:
        fast = attention(q, k, v)
    finally:
        set_attention_backend("sdpa")
    torch.testing.assert_close(fast.float(), reference.float(), atol=2e-2, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = off_init(MatrixGameDiT(DIT_PRESETS["tiny"]))
    x, t = torch.randn(1, 16, 2, 4, 4), torch.tensor([[0.0, 600.0]])
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        model(x, t).square().mean().backward()
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    torch.testing.assert_close(grads[0], grads[1])


@torch.no_grad()
def test_per_sample_positions_equal_separate_calls():
    # windows from different places of a clip batch together: each keeps its own RoPE positions
    torch.manual_seed(0)
    model = off_init(MatrixGameDiT(DIT_PRESETS["tiny"]).eval())
    x, memory = torch.randn(2, 16, 2, 4, 4), torch.randn(2, 16, 2, 4, 4)
    t = torch.tensor([[0.0, 500.0], [0.0, 800.0]])
    mem_index, first = torch.tensor([[0, 1], [2, 5]]), torch.tensor([3, 7])
    both = model(x, t, memory=memory, memory_index=mem_index, first_index=first)
    for i in range(2):
        one = model(x[i : i + 1], t[i : i + 1], memory=memory[i : i + 1],
                    memory_index=mem_index[i], first_index=int(first[i]))  # fmt: skip
        torch.testing.assert_close(both[i : i + 1], one, atol=1e-5, rtol=0)
    shifted = model(x, t, memory=memory, memory_index=mem_index[0], first_index=3)
    assert not torch.allclose(shifted[1], both[1], atol=1e-4)  # positions matter


@torch.no_grad()
def test_a_dit_carried_onto_rotated_latents_is_the_same_dit_turned(reference):
    """``old = R new``: the carried DiT on the new latents (past, current and memory) predicts
    the old DiT's prediction turned by ``R^T``; the rotation is found back from the latents."""
    from matrixgame.train.latent_map import fit_rotation, rotate_dit

    model, g = reference
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(48, 48, generator=gen))

    def turn(x):  # old latents -> new ones
        return torch.einsum("ec,bc...->be...", q.T, x)

    carried = MatrixGameDiT(GOLDEN_CONFIG).eval()
    carried.load_state_dict(rotate_dit(model.state_dict(), q))
    new = {**g, "golden.x": turn(g["golden.x"]), "golden.x_memory": turn(g["golden.x_memory"])}
    torch.testing.assert_close(run_golden(carried, new), turn(run_golden(model, g)),
                               atol=1e-4, rtol=0)  # fmt: skip
    old = torch.randn(48, 5, 6, 7, generator=gen)
    rotation, explained = fit_rotation(old, turn(old[None])[0] + 3.0)  # offsets are centred
    torch.testing.assert_close(rotation, q, atol=1e-4, rtol=0)
    assert explained == pytest.approx(1.0, abs=1e-6)
    noisy = turn(old[None])[0] + 0.5 * torch.randn(old.shape, generator=gen)
    assert 0.65 < fit_rotation(old, noisy)[1] < 0.85  # noise of a quarter of the variance
    with pytest.raises(ValueError, match="latents of different shapes"):
        fit_rotation(old, old[:, :4])
    with pytest.raises(ValueError, match="the DiT takes 48 latent channels, the rotation 32"):
        rotate_dit(model.state_dict(), torch.eye(32))


def test_rope_offsets_move_the_grid_to_real_positions():
    # an offset of k columns rotates each token as the grid k columns further on would;
    # offsets may be fractional, and zero offsets are the plain grid
    from matrixgame.models.layers import apply_rope_3d, rope_frequencies

    g = torch.Generator().manual_seed(0)
    freqs = rope_frequencies(48, 64, 3, sigma=0.1)
    x = torch.randn(2, 3 * 4 * 5, 3, 48, generator=g)
    t_index = torch.tensor([0, 4, 9])
    plain = apply_rope_3d(x, freqs, t_index, 4, 5)
    torch.testing.assert_close(apply_rope_3d(x, freqs, t_index, 4, 5, torch.zeros(3, 2)), plain,
                               atol=1e-5, rtol=0)  # fmt: skip
    moved = apply_rope_3d(x, freqs, t_index, 4, 5, torch.tensor([[1.0, 2.0]] * 3))
    wide = torch.zeros(2, 3, 5, 7, 3, 48)
    wide[:, :, 1:, 2:] = x.reshape(2, 3, 4, 5, 3, 48)
    ref = apply_rope_3d(wide.reshape(2, -1, 3, 48), freqs, t_index, 5, 7)
    ref = ref.reshape(2, 3, 5, 7, 3, 48)[:, :, 1:, 2:].reshape(moved.shape)
    torch.testing.assert_close(moved, ref, atol=1e-5, rtol=0)
    half = apply_rope_3d(x, freqs, t_index, 4, 5, torch.tensor([[0.0, 0.5]] * 3))
    assert not torch.allclose(half, plain, atol=1e-3) and not torch.allclose(half, moved, atol=1e-3)


def test_cross_attention_to_one_token_is_its_value():
    # text_len 1 (a world without text): every query gives the one key weight 1, so inference
    # skips queries, keys and softmax; with grad the full path runs (q and k get gradients)
    from matrixgame.models.dit import CrossAttention
    from matrixgame.models.layers import attention

    torch.manual_seed(0)
    layer = CrossAttention(32, 2, True, 1e-6)
    x, context = torch.randn(2, 7, 32), torch.randn(2, 1, 32)
    q = layer.norm_q(layer.q(x)).unflatten(-1, (2, -1))
    k = layer.norm_k(layer.k(context)).unflatten(-1, (2, -1))
    full = layer.o(attention(q, k, layer.v(context).unflatten(-1, (2, -1))).flatten(2))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, context), full, atol=1e-6, rtol=1e-6)
    layer(x, context).square().sum().backward()
    assert layer.q.weight.grad is not None and layer.k.weight.grad is not None


def _memory_window():
    """A tiny DiT (off-zero init) and a window of 2 memory latents and 3 of x."""
    torch.manual_seed(0)
    model = off_init(MatrixGameDiT(DIT_PRESETS["tiny"]).eval())
    x, memory = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 16, 2, 4, 4)
    t = torch.tensor([[0.0, 0.0, 500.0], [0.0, 0.0, 800.0]])
    return model, x, t, dict(memory=memory, memory_index=torch.tensor([0, 1]), first_index=4)


@torch.no_grad()
def test_the_blocks_share_one_rope_grid_and_give_the_same_prediction():
    # the forward makes the rotations once for all blocks (ctx["rope_grid"]); each block
    # making its own gives the same numbers, bit for bit; a grid of the wrong layout is refused
    from matrixgame.models.layers import rotate

    model, x, t, kwargs = _memory_window()
    tokens, _, e0, ctx = model.prepare(x, t, rope_offset=torch.randn(2, 5, 2) * 3, **kwargs)
    shared = model.run_blocks(tokens, e0, ctx)
    assert torch.equal(shared, model.run_blocks(tokens, e0, {**ctx, "rope_grid": None}))
    q = torch.randn(2, tokens.shape[1] - 1, 2, 32)
    with pytest.raises(ValueError, match="does not fit x"):
        rotate(q, ctx["rope_grid"])


@torch.no_grad()
def test_camera_rope_depends_only_on_the_frames_relative_offsets():
    # RoPE attention sees position differences: moving every frame's grid alike changes
    # nothing, moving the memory frames' grids against the rest changes the prediction
    model, x, t, kwargs = _memory_window()
    offset = torch.randn(2, 5, 2) * 3
    base = model(x, t, rope_offset=offset, **kwargs)
    alike = model(x, t, rope_offset=offset + torch.tensor([1.5, -4.0]), **kwargs)
    torch.testing.assert_close(alike, base, atol=1e-4, rtol=0)
    moved = offset.clone()
    moved[:, :2, 1] += 6.0
    assert not torch.allclose(model(x, t, rope_offset=moved, **kwargs), base, atol=1e-3)
    with pytest.raises(ValueError, match="rope_offset must be"):
        model(x, t, rope_offset=offset[:, 1:], **kwargs)
