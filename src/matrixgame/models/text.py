"""The umT5-XXL text encoder as Wan2.2 uses it (parameter names of
``models_t5_umt5-xxl-enc-bf16.pth``), and a wrapper that turns prompts into contexts.

T5 blocks: RMS-style layer norm without mean subtraction, attention without 1/sqrt(d)
scaling and with a learned relative-position bias per layer (umT5: not shared), and a
gated-GELU feed-forward. The tiny preset of the world model needs no text at all; the DiT
takes zeros or precomputed embeddings then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


@dataclass(frozen=True)
class T5Config:
    vocab: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_dist: int = 128
    text_len: int = 512


T5_PRESETS = {"umt5-xxl": T5Config()}


class T5LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class T5Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None, bias: Tensor) -> Tensor:
        b, n = x.shape[0], self.heads
        q, k, v = (
            proj(x).view(b, -1, n, proj.out_features // n) for proj in (self.q, self.k, self.v)
        )
        scores = torch.einsum("binc,bjnc->bnij", q, k) + bias  # no 1/sqrt(d) in T5
        if mask is not None:
            scores = scores.masked_fill(mask.view(b, 1, 1, -1) == 0, torch.finfo(x.dtype).min)
        attn = F.softmax(scores.float(), dim=-1).type_as(scores)
        return self.o(torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, -1, self.o.in_features))


class T5FeedForward(nn.Module):
    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5RelativeEmbedding(nn.Module):
    """A learned bias per head for bucketed relative positions (bidirectional)."""

    def __init__(self, buckets: int, heads: int, max_dist: int) -> None:
        super().__init__()
        self.buckets, self.max_dist = buckets, max_dist
        self.embedding = nn.Embedding(buckets, heads)

    def forward(self, length: int) -> Tensor:
        pos = torch.arange(length, device=self.embedding.weight.device)
        rel = pos[None, :] - pos[:, None]  # key - query
        half = self.buckets // 2
        bucket = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        # logarithmic buckets beyond `exact`, up to max_dist (clamp only keeps log() finite)
        large = (
            exact
            + (
                torch.log(rel.clamp(min=1).float() / exact)
                / math.log(self.max_dist / exact)
                * (half - exact)
            ).long()
        )
        bucket = bucket + torch.where(rel < exact, rel, large.clamp(max=half - 1))
        return self.embedding(bucket).permute(2, 0, 1)[None]  # [1, H, L, L]


class T5Block(nn.Module):
    def __init__(self, c: T5Config) -> None:
        super().__init__()
        self.norm1 = T5LayerNorm(c.dim)
        self.attn = T5Attention(c.dim, c.dim_attn, c.num_heads)
        self.norm2 = T5LayerNorm(c.dim)
        self.ffn = T5FeedForward(c.dim, c.dim_ffn)
        self.pos_embedding = T5RelativeEmbedding(c.num_buckets, c.num_heads, c.max_dist)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = _fp16_clamp(x + self.attn(self.norm1(x), mask, self.pos_embedding(x.shape[1])))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


def _fp16_clamp(x: Tensor) -> Tensor:
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(-limit, limit)
    return x


class T5Encoder(nn.Module):
    """Token ids ``[B, L]`` (and mask ``[B, L]``) -> hidden states ``[B, L, dim]``."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab, config.dim)
        self.blocks = nn.ModuleList(T5Block(config) for _ in range(config.num_layers))
        self.norm = T5LayerNorm(config.dim)

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.token_embedding(ids)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning: fix mojibake (ftfy, when installed), unescape HTML twice,
    collapse whitespace."""
    import html

    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split())


class TextEncoder:
    """Prompts -> DiT contexts: a local tokenizer folder (loaded with ``transformers``),
    padded to ``text_len``, encoded, and each cut back to its own length."""

    def __init__(self, encoder: T5Encoder, tokenizer_dir: str) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as err:
            raise ValueError(
                "prompts need `pip install transformers` (or pass embeddings)"
            ) from err
        self.encoder = encoder
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> list[Tensor]:
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.encoder.config.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        device = self.encoder.token_embedding.weight.device
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        out = self.encoder(ids, mask)
        return [u[:n] for u, n in zip(out, mask.sum(1).tolist(), strict=True)]
