"""The umT5 text encoder against the public reference (tests/golden/umt5_tiny.md)."""

import torch

from helpers import golden
from matrixgame.models.text import T5_PRESETS, T5Config, T5Encoder

TINY = T5Config(vocab=64, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)


@torch.no_grad()
def test_matches_the_reference():
    g = golden("umt5_tiny.safetensors")
    model = T5Encoder(TINY).eval()
    model.load_state_dict({k: v for k, v in g.items() if not k.startswith("golden.")})
    out = model(g["golden.ids"], g["golden.mask"])
    torch.testing.assert_close(out, g["golden.out"], atol=1e-5, rtol=0)
    torch.testing.assert_close(model(g["golden.ids"]), g["golden.out_nomask"], atol=1e-5, rtol=0)
    long = model(g["golden.long.ids"], g["golden.long.mask"])  # the log-spaced buckets
    torch.testing.assert_close(long, g["golden.long.out"], atol=1e-5, rtol=0)


def test_release_size():
    with torch.device("meta"):
        model = T5Encoder(T5_PRESETS["umt5-xxl"])
    assert len(model.state_dict()) == 242  # the names of models_t5_umt5-xxl-enc-bf16.pth
    assert model.state_dict().keys() >= {
        "token_embedding.weight",
        "blocks.23.pos_embedding.embedding.weight",
    }


def test_load_t5_from_pth(tmp_path):
    from matrixgame.models.loading import load_t5

    g = golden("umt5_tiny.safetensors")
    torch.save({k: v for k, v in g.items() if not k.startswith("golden.")}, tmp_path / "t5.pth")
    model = load_t5(tmp_path / "t5.pth", TINY)
    with torch.no_grad():
        torch.testing.assert_close(
            model(g["golden.ids"], g["golden.mask"]), g["golden.out"], atol=1e-5, rtol=0
        )


def test_prompt_cleaning():
    from matrixgame.models.text import clean_prompt

    assert clean_prompt("  a &amp;amp; b\n\tc  ") == "a & b c"
