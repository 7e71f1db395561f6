import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import golden, random_poses
from matrixgame.geometry import (
    Frusta,
    ViewVolume,
    frustum_samples,
    overlap_exact,
    overlap_sampled,
    pose_from_angles,
    select_memory_reference,
    topk_overlap,
)

VIEW = ViewVolume.from_fov(160, 120, 90.0, near=0.1, far=30.0)


def pose(x, y, z, yaw, pitch=0.0, roll=0.0):
    return pose_from_angles(torch.tensor([x, y, z], dtype=torch.float64), yaw, pitch, roll)


def random_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the pairs near each other with similar headings (overlaps spread over (0, 1)),
    half anywhere in a 20 m cube."""
    g = torch.Generator().manual_seed(seed)
    a = random_poses(n, g, extent=20.0)
    m = n // 2
    yaw_a = torch.rad2deg(torch.atan2(a[:m, 1, 2], a[:m, 0, 2]))  # where A's optical axis points
    near = pose_from_angles(
        a[:m, :3, 3] + torch.randn(m, 3, generator=g, dtype=torch.float64) * 2,
        yaw_a + torch.randn(m, generator=g, dtype=torch.float64) * 40,
        torch.randn(m, generator=g, dtype=torch.float64) * 15,
    )
    far = random_poses(n - m, g, extent=20.0)
    return a, torch.cat([near, far])


def test_exact_matches_release():
    g = golden()
    K = g["overlap.K33"]
    intr = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    # The release's frustum hull includes the camera centre, so its near plane has no effect:
    # both of its results are the near = 0 pyramid's.
    for key, far in (("overlap.exact_near0_far30", 30.0), ("overlap.exact_near05_far10", 10.0)):
        view = ViewVolume(intr, 1280, 720, 0.0, far)
        pairs = zip(g["overlap.c2w_a"], g["overlap.c2w_b"], strict=True)
        ours = torch.tensor([overlap_exact(a, b, view) for a, b in pairs], dtype=torch.float64)
        torch.testing.assert_close(ours, g[key], atol=1e-6, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    st.floats(-50, 50),
    st.floats(-50, 50),
    st.floats(-5, 5),
    st.floats(-180, 180),
    st.floats(-60, 60),
    st.floats(-180, 180),
)
def test_self_overlap_is_one(x, y, z, yaw, pitch, roll):
    A = pose(x, y, z, yaw, pitch, roll)
    assert overlap_exact(A, A, VIEW) == pytest.approx(1.0, abs=1e-9)
    assert float(overlap_sampled(A.float(), A[None].float(), VIEW)[0]) >= 0.98


@settings(max_examples=40, deadline=None)
@given(st.floats(-50, 50), st.floats(-50, 50), st.floats(-180, 180), st.floats(0.0, 20.0))
def test_cameras_facing_away_do_not_overlap(x, y, yaw, gap):
    A = pose(x, y, 0.0, yaw)
    # B stands `gap` metres behind A, looking the other way
    back = torch.tensor(
        [
            -torch.cos(torch.deg2rad(torch.tensor(yaw))).item(),
            -torch.sin(torch.deg2rad(torch.tensor(yaw))).item(),
            0.0,
        ]
    )
    B = pose(x + gap * back[0].item(), y + gap * back[1].item(), 0.0, yaw + 180.0)
    assert overlap_exact(A, B, VIEW) == 0.0
    assert float(overlap_sampled(A, B[None], VIEW)[0]) == 0.0


def test_estimator_agrees_with_exact():
    a, b = random_pairs(200, seed=1)
    exact = torch.tensor([overlap_exact(x, y, VIEW) for x, y in zip(a, b, strict=True)])
    assert 0.1 < exact.mean() < 0.6 and (exact > 0.3).sum() > 30  # a spread of overlaps
    est = torch.stack([overlap_sampled(x, y[None], VIEW)[0] for x, y in zip(a, b, strict=True)])
    assert (est - exact).abs().mean() <= 0.02
    # batched: one query against many candidates gives the same numbers
    batch = overlap_sampled(a[0], b, VIEW)
    single = torch.stack([overlap_sampled(a[0], y[None], VIEW)[0] for y in b])
    torch.testing.assert_close(batch, single)
    many = overlap_sampled(a[:3], Frusta.from_poses(b, VIEW), VIEW)
    torch.testing.assert_close(many[2], overlap_sampled(a[2], b, VIEW))


@pytest.mark.slow
def test_compiled_overlap_equals_eager_at_any_pool_size():
    """The fused (torch.compile) count gives the eager scores exactly, for one query and for
    several, and pools of any size run one graph (a recompile per step would cost seconds)."""
    from torch._dynamo.utils import counters

    a, b = random_pairs(400, seed=4)
    frusta = Frusta.from_poses(b, VIEW)
    counters.clear()
    for n in (400, 137, 250):
        assert torch.equal(overlap_sampled(a[0], frusta[:n], VIEW, compiled=True),
                           overlap_sampled(a[0], frusta[:n], VIEW))  # fmt: skip
    assert torch.equal(overlap_sampled(a[:3], frusta, VIEW, compiled=True),
                       overlap_sampled(a[:3], frusta, VIEW))  # fmt: skip
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # 1 and 3 queries
    idx, _ = topk_overlap(a[5], b, VIEW, 7, compiled=True)
    assert torch.equal(idx, topk_overlap(a[5], b, VIEW, 7)[0])


def test_topk_prefers_overlap_then_recency():
    A = pose(0, 0, 0, 0)
    cands = torch.stack([pose(0, 0, 0, 0), pose(0, 0, 0, 180), pose(0, 0, 0, 20), pose(0, 0, 0, 0)])
    idx, score = topk_overlap(A, cands, VIEW, 3)
    assert idx.tolist() == [3, 0, 2] and score[0] >= 0.99 > score[2] > 0.5
    with pytest.raises(ValueError, match="k must lie"):
        topk_overlap(A, cands, VIEW, 5)


def test_reference_scheme_matches_release():
    g = golden()
    # The release's poses are left-handed (det -1): mirror the world's y axis to make them
    # right-handed; overlaps are unchanged by the mirror.
    mirror = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    c2w = (mirror @ g["mem.c2w"]).float()
    idx, conf = select_memory_reference(c2w, [96, 88, 80, 72, 64], list(range(1, 57)))
    assert idx == g["mem.selected_fov"].tolist()
    assert conf == pytest.approx(g["mem.confidence_fov"].tolist(), abs=1e-6)


def test_grid_samples_follow_release_layout():
    pts = frustum_samples(ViewVolume.released(), 1000, "grid")
    assert pts.shape == (1000, 3)
    assert pts[:, 2].min() == pytest.approx(0.1) and pts[:, 2].max() == pytest.approx(30.0)
    vol = frustum_samples(VIEW, 4096)
    # uniform by volume: the depth's cube is uniform between near^3 and far^3
    frac = ((vol[:, 2] ** 3 - 0.1**3) / (30.0**3 - 0.1**3)).mean()
    assert frac == pytest.approx(0.5, abs=0.01)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="near < far"):
        ViewVolume.from_fov(160, 120, 90.0, near=5.0, far=1.0)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        ViewVolume.from_fov(0, 120, 90.0, near=0.1, far=1.0)
    with pytest.raises(ValueError, match="NaN"):
        overlap_sampled(torch.full((4, 4), float("nan")), torch.eye(4)[None], VIEW)
    with pytest.raises(ValueError, match="one pose"):
        overlap_exact(torch.eye(4)[None], torch.eye(4), VIEW)
    with pytest.raises(ValueError, match="pattern"):
        frustum_samples(VIEW, 10, "spiral")


@pytest.mark.gpu
def test_cuda_matches_cpu():
    a, b = random_pairs(64, seed=2)
    cpu = overlap_sampled(a[:4].float(), b.float(), VIEW)
    gpu = overlap_sampled(a[:4].float().cuda(), b.float().cuda(), VIEW)
    assert (gpu.cpu() - cpu).abs().max() <= 2 / 128  # boundary points may round differently
