"""Loading the official directory layout, built here from the golden tiny weights."""

import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import golden
from matrixgame.models.loading import from_pretrained, load_dit, normalise_vae_keys
from test_dit import GOLDEN_CONFIG, run_golden

RELEASE_STYLE_CONFIG = {  # WanModel's config.json keys, at the golden model's tiny size
    "_class_name": "WanModel", "_diffusers_version": "0.33.1", "model_type": "ti2v",
    "patch_size": [1, 2, 2], "text_len": 8, "in_dim": 48, "dim": 96, "ffn_dim": 192,
    "freq_dim": 256, "text_dim": 32, "out_dim": 48, "num_heads": 3, "num_layers": 2,
    "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
    "use_memory": True, "sigma_theta": 0.8, "use_text_crossattn": True,
    "action_config": {
        "mouse_dim_in": 2, "keyboard_dim_in": 6, "hidden_size": 16, "img_hidden_size": 96,
        "keyboard_hidden_dim": 32, "mouse_hidden_dim": 32, "vae_time_compression_ratio": 4,
        "windows_size": 3, "heads_num": 2, "patch_size": [1, 2, 2], "qk_norm": True,
        "qkv_bias": False, "rope_dim_list": [8, 4, 4], "rope_theta": 256,
        "mouse_qk_dim_list": [8, 4, 4], "enable_mouse": True, "enable_keyboard": True,
        "blocks": [0], "local_attn_size": 6,
    },
}  # fmt: skip


def _diffusers_names(state):
    """The inverse of the LightVAE renames, for a fixture in diffusers-style naming."""
    out = {}
    for k, v in state.items():
        k = k.replace("decoder.upsamples.", "decoder.up_blocks.").replace(
            ".upsamples.3.", ".upsampler."
        )
        k = k.replace(".upsamples.", ".resnets.").replace(".residual.0.", ".norm1.")
        k = k.replace(".residual.2.", ".conv1.").replace(".residual.3.", ".norm2.")
        k = k.replace(".residual.6.", ".conv2.").replace(".shortcut.", ".conv_shortcut.")
        k = k.replace("decoder.middle.0.", "decoder.mid_block.resnets.0.")
        k = k.replace("decoder.middle.1.", "decoder.mid_block.attentions.0.")
        k = k.replace("decoder.middle.2.", "decoder.mid_block.resnets.1.")
        k = k.replace("decoder.head.0.", "decoder.norm_out.").replace(
            "decoder.head.2.", "decoder.conv_out."
        )
        k = k.replace("decoder.conv1.", "decoder.conv_in.")
        out[("post_quant_conv." + k[6:]) if k.startswith("conv2.") else k] = v
    return out


@pytest.fixture(scope="module")
def release_dir(module_tmp):
    root = module_tmp("Matrix-Game-3.0")
    g = golden("mg3_dit_tiny.safetensors")
    dit = {k: v for k, v in g.items() if not k.startswith("golden.")}
    folder = root / "base_distilled_model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASE_STYLE_CONFIG))
    names = sorted(dit)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[1::2]}  # fmt: skip
    for file, keys in shards.items():
        save_file({k: dit[k].contiguous() for k in keys}, folder / file)
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    v = golden("wan22_vae_tiny.safetensors")
    vae = {k: t for k, t in v.items() if not k.startswith("golden.")}
    torch.save(vae, root / "Wan2.2_VAE.pth")
    light = {k: t for k, t in vae.items() if k.startswith(("decoder.", "conv2."))}
    torch.save({"gen_model": _diffusers_names(light)}, root / "MG-LightVAE.pth")
    return root, g, v


def test_from_pretrained_reproduces_the_reference(release_dir):
    root, g, v = release_dir
    pre = from_pretrained(root, vae="wan2.2")
    assert pre.dit.config == GOLDEN_CONFIG
    with torch.no_grad():
        out = run_golden(pre.dit, g)
        torch.testing.assert_close(out, g["golden.out"], atol=1e-5, rtol=0)
        latent = pre.encoder.encode(v["golden.input"])
        torch.testing.assert_close(latent, v["golden.latent"], atol=1e-5, rtol=0)
        torch.testing.assert_close(pre.vae.decode(latent), v["golden.decoded"], atol=1e-4, rtol=0)


def test_light_vae_in_diffusers_naming_loads_its_decoder(release_dir):
    root, _, v = release_dir
    # the fixture's "light" file holds the golden decoder under diffusers-style names
    pre = from_pretrained(root, vae="light-50")
    assert pre.vae.encoder is None and pre.encoder.encoder is not None
    assert pre.vae.config.pruning_rate == 0.5
    with torch.no_grad():
        decoded = pre.vae.decode(v["golden.latent"])
    torch.testing.assert_close(decoded, v["golden.decoded"], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="no encoder"):
        pre.vae.encode(v["golden.input"])
    pairs = [
        (
            "decoder.up_blocks.1.upsampler.time_conv.weight",
            "decoder.upsamples.1.upsamples.3.time_conv.weight",
        ),
        ("decoder.mid_block.resnets.1.conv2.bias", "decoder.middle.2.residual.6.bias"),
        (
            "encoder.down_blocks.2.resnets.0.conv_shortcut.weight",
            "encoder.downsamples.2.downsamples.0.shortcut.weight",
        ),
        ("decoder.conv_in.weight", "decoder.conv1.weight"),
        ("quant_conv.bias", "conv1.bias"),
        (
            "decoder.upsamples.0.upsamples.1.residual.2.weight",
            "decoder.upsamples.0.upsamples.1.residual.2.weight",
        ),
    ]
    names = dict(pairs)
    assert normalise_vae_keys(dict.fromkeys(names, 0)) == dict.fromkeys(names.values(), 0)


def test_mismatches_are_listed(release_dir, tmp_path):
    root, g, _ = release_dir
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASE_STYLE_CONFIG))
    dit = {k: v for k, v in g.items() if not k.startswith("golden.")}
    dit.pop("head.head.weight")
    dit["blocks.0.extra.weight"] = torch.zeros(1)
    dit["blocks.1.ffn.0.bias"] = torch.zeros(7)
    save_file(dit, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError) as info:
        load_dit(folder)
    text = str(info.value)
    assert "missing (1): head.head.weight" in text
    assert "unexpected (1): blocks.0.extra.weight" in text
    assert "blocks.1.ffn.0.bias: file [7] vs model [192]" in text
    bad = dict(RELEASE_STYLE_CONFIG, attention_mode="sliding")
    (folder / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="does not know: \\['attention_mode'\\]"):
        load_dit(folder)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo this must never run",))


def test_a_malicious_pickle_is_refused_with_our_message(tmp_path):
    from matrixgame.eval.external import load_lpips
    from matrixgame.models.loading import read_pth

    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2), "x": _RunsCode()}, path)
    for load in (read_pth, load_lpips):
        with pytest.raises(ValueError) as err:
            load(path)
        message = str(err.value)
        assert str(path) in message and "system" in message and "refused" in message
        assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="junk.pth"):
        read_pth(tmp_path / "junk.pth")
