import pytest
import torch

from matrixgame.train.error_buffer import ErrorBuffer


def filled(capacity=8):
    buf = ErrorBuffer(bins=4, capacity=capacity, gamma_past=0.5, gamma_memory=0.25)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 4, 2, 2, generator=g)
    predicted = target + torch.randn(2, 3, 4, 2, 2, generator=g)
    buf.add(predicted, target, torch.tensor([0.1, 0.9]))
    return buf, predicted - target


def test_fills_from_model_residuals_by_noise_level():
    buf, delta = filled()
    assert len(buf) == 8  # 2 samples x 4 frames
    assert len(buf.store[0]) == 4 and len(buf.store[3]) == 4  # sigma 0.1 and 0.9
    torch.testing.assert_close(buf.store[0][2], delta[0, :, 2])
    small, _ = filled(capacity=3)  # a full bin replaces its oldest residual
    assert len(small.store[0]) == 3 and torch.equal(small.store[0][0], delta[0, :, 3])


def test_injection_adds_banked_residuals_at_the_configured_scale():
    buf, delta = filled()
    banked = torch.stack([delta[b, :, f] for b in range(2) for f in range(4)])
    past = torch.randn(1, 3, 4, 2, 2)
    memory = torch.randn(1, 3, 2, 2, 2)
    g = torch.Generator().manual_seed(3)
    new_past, new_memory = buf.corrupt(past, memory, g)
    for old, new, gamma in ((past, new_past, 0.5), (memory, new_memory, 0.25)):
        for f in range(old.shape[2]):
            added = (new[0, :, f] - old[0, :, f]) / gamma
            assert (added - banked).flatten(1).abs().amax(1).min() < 1e-6  # one of the banked
    assert buf.inject(past, 0.0) is past
    assert ErrorBuffer().inject(past, 1.0) is past  # nothing banked yet: unchanged


def test_bad_settings():
    with pytest.raises(ValueError, match="bins"):
        ErrorBuffer(bins=0)


def test_the_buffer_round_trips_through_its_state():
    buffer = ErrorBuffer(bins=4, capacity=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(2, 4, 3, 2, 2, generator=g)
        buffer.add(x + 0.1, x, torch.rand(2, generator=g))
    copy = ErrorBuffer(bins=4, capacity=3)
    copy.load_state_dict(buffer.state_dict())
    assert copy.next == buffer.next and len(copy) == len(buffer)
    assert all(torch.equal(a, b) for s, t in zip(copy.store, buffer.store, strict=True)
               for a, b in zip(s, t, strict=True))  # fmt: skip
    like = torch.zeros(4, 2, 2)
    a = copy.sample(5, like, torch.Generator().manual_seed(1))
    b = buffer.sample(5, like, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
