import pytest
import torch

from helpers import golden, random_poses
from matrixgame.geometry import camera_embedding, fold_plucker, plucker_rays


def test_rays_match_release():
    g = golden()
    torch.testing.assert_close(
        plucker_rays(g["plucker.c2w"], g["plucker.K"], 32, 48), g["plucker.rays"]
    )


def test_folding_matches_release():
    g = golden()
    K, rel = g["plucker.K"], g["plucker.relative_framewise"]
    folded = fold_plucker(plucker_rays(rel, K, 32, 48), 2, 3)
    torch.testing.assert_close(folded[None], g["plucker.folded"])
    emb = camera_embedding(g["plucker.c2w"], K, 32, 48, 2, 3, framewise=True)
    torch.testing.assert_close(emb[None], g["plucker.folded"])


def test_rays_are_unit_and_start_at_the_camera():
    c2w = random_poses(3, torch.Generator().manual_seed(0))
    K = torch.tensor([20.0, 22.0, 15.5, 12.0])
    rays = plucker_rays(c2w, K, 24, 32)
    assert rays.shape == (3, 24, 32, 6)
    torch.testing.assert_close(rays[..., 3:].norm(dim=-1), torch.ones(3, 24, 32, dtype=c2w.dtype))
    torch.testing.assert_close(rays[:, 5, 7, :3], c2w[:, :3, 3])
    # the pixel at the principal point looks straight down the optical axis
    centre = plucker_rays(c2w, torch.tensor([20.0, 20.0, 16.0, 12.0]), 24, 32)
    mid = (centre[:, 11, 15, 3:] + centre[:, 12, 16, 3:]) / 2
    torch.testing.assert_close(
        mid / mid.norm(dim=-1, keepdim=True), c2w[:, :3, 2], atol=1e-6, rtol=0
    )


def test_fold_places_each_pixel_in_its_channel():
    rays = torch.arange(2 * 4 * 6 * 6, dtype=torch.float64).reshape(2, 4, 6, 6)  # [F, H, W, 6]
    out = fold_plucker(rays, 2, 3)  # blocks of 2 x 2
    assert out.shape == (24, 2, 2, 3)
    f, y, x, dy, dx, c = 1, 1, 2, 1, 0, 4
    assert out[c * 4 + dy * 2 + dx, f, y, x] == rays[f, y * 2 + dy, x * 2 + dx, c]
    batched = fold_plucker(torch.stack([rays, rays + 1]), 2, 3)
    torch.testing.assert_close(batched[1], out + 1)


def test_bad_inputs_raise():
    c2w = torch.eye(4)[None]
    with pytest.raises(ValueError, match="height must be a positive integer"):
        plucker_rays(c2w, torch.tensor([1.0, 1.0, 0.5, 0.5]), 0, 4)
    with pytest.raises(ValueError, match="focal lengths"):
        plucker_rays(c2w, torch.tensor([0.0, 1.0, 0.5, 0.5]), 4, 4)
    with pytest.raises(ValueError, match="cannot fold"):
        fold_plucker(torch.zeros(1, 5, 4, 6), 2, 2)
