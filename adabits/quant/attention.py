"""The quantized twin of nn.MultiheadAttention: its four projections are QLinear layers.

nn.MultiheadAttention keeps the query/key/value projections as one raw Parameter (`in_proj_weight`)
that `F.multi_head_attention_forward` multiplies directly, so swapping its Linear layers leaves them
in float. Here each projection is a QLinear (DoReFa weights, PACT inputs, switchable clipping per
bit-width); the attention products themselves (Q K^T and the weighted sum of V) stay in float, as
they are products of two activations, which AdaBits does not quantize.

A float nn.MultiheadAttention's state dict loads as it is: `in_proj_weight` / `in_proj_bias` (or the
separate `q_proj_weight`, ...) are split into the three projections' keys on load. `in_proj_weight`
and `in_proj_bias` read None here, as for nn.MultiheadAttention without bias: that turns off the fused
fast paths of nn.TransformerEncoderLayer, which would read the float weights and skip the quantized
projections.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import QuantOptionError
from .bitwidth import FULL_PRECISION
from .config import QuantConfig
from .layers import QLinear

PROJECTIONS = ("q_proj", "k_proj", "v_proj")


class QMultiheadAttention(nn.Module):
    """nn.MultiheadAttention (same constructor, forward and outputs) with quantized projections."""

    in_proj_weight = None  # the packed float projection nn.MultiheadAttention has; see the module docstring
    in_proj_bias = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bits_list: Iterable[object] = (FULL_PRECISION,),
        config: QuantConfig | None = None,
        **layer_options: Any,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise QuantOptionError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        options = {"bits_list": bits_list, "config": config, "device": device, "dtype": dtype, **layer_options}
        self.q_proj = QLinear(embed_dim, embed_dim, bias, **options)
        self.k_proj = QLinear(self.kdim, embed_dim, bias, **options)
        self.v_proj = QLinear(self.vdim, embed_dim, bias, **options)
        self.out_proj = QLinear(embed_dim, embed_dim, bias, **options)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, length, source = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = (self._heads(proj(x)) for proj, x in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        mask = self._additive_mask(attn_mask, key_padding_mask, is_causal, batch, length, source, scores.dtype,
                                   scores.device)
        if mask is not None:
            scores = scores + mask
        weights = F.dropout(scores.softmax(dim=-1), self.dropout, self.training)
        out = (weights @ v).transpose(1, 2).reshape(batch, length, self.embed_dim)
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, weights if batched else weights.squeeze(0)

    def _heads(self, x: Tensor) -> Tensor:
        """(N, L, E) -> (N, heads, L, head_dim)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _additive_mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool, batch: int,
                       length: int, source: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        """nn.MultiheadAttention's masks (boolean: True = not attended; float: added) as one additive mask
        broadcastable to (N, heads, L, S)."""
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=device).triu(1)
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:  # (N * heads, L, S)
                mask = mask.view(batch, self.num_heads, length, source)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).view(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask

    def adapt_state_dict(self, state_dict: dict[str, Tensor], prefix: str) -> None:
        """A float nn.MultiheadAttention's keys (packed or separate projections) as this module's, in place."""
        packed = {"weight": state_dict.pop(f"{prefix}in_proj_weight", None),
                  "bias": state_dict.pop(f"{prefix}in_proj_bias", None)}
        for kind, tensor in packed.items():
            if tensor is not None:
                for name, part in zip(PROJECTIONS, tensor.chunk(3)):
                    state_dict[f"{prefix}{name}.{kind}"] = part
        for name in PROJECTIONS:
            separate = state_dict.pop(f"{prefix}{name}_weight", None)
            if separate is not None:
                state_dict[f"{prefix}{name}.weight"] = separate
        for name in ("bias_k", "bias_v"):
            if f"{prefix}{name}" in state_dict:
                raise QuantOptionError(f"{prefix}{name}: attention with add_bias_kv has no quantized twin")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override,no-untyped-def]
        self.adapt_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, batch_first={self.batch_first}"


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True = not attended) as 0 / -inf; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
