import pytest
import torch

from matrixgame.models.dit import DIT_PRESETS
from matrixgame.models.moe import ViewpointMoE


def test_routes_by_noise_level_and_viewpoint():
    torch.manual_seed(0)
    moe = ViewpointMoE(DIT_PRESETS["tiny"]).eval()
    with torch.no_grad():  # distinct experts: perturb the zero-initialised heads differently
        for expert in (moe.high_first, moe.high_third, moe.low):
            expert.head.head.weight.normal_(0, 0.02)
    x = torch.randn(3, 16, 1, 4, 4)
    t = torch.tensor([950.0, 950.0, 100.0])
    with torch.no_grad():
        out = moe(x, t, viewpoint=["first", "third", "third"])
        assert (
            moe.expert(950.0, "third") is moe.high_third and moe.expert(100.0, "first") is moe.low
        )
        torch.testing.assert_close(out[0:1], moe.high_first(x[0:1], t[0:1]))
        torch.testing.assert_close(out[1:2], moe.high_third(x[1:2], t[1:2]))
        torch.testing.assert_close(out[2:3], moe.low(x[2:3], t[2:3]))
    with pytest.raises(ValueError, match="viewpoint must be"):
        moe(x, t, viewpoint="sideways")
