"""QMultiheadAttention and transformers through quantize_model: every weight quantized, no fast path."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import adabits
from adabits.quant.attention import QMultiheadAttention


class TinyViT(nn.Module):
    """The issue's model: a patch conv, two nn.TransformerEncoderLayer, a linear head, plain PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 64, 7, 7)
        layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.encoder(tokens).mean(1))


def _float_reference(twin: QMultiheadAttention) -> nn.MultiheadAttention:
    """torch's attention holding the weights the twin multiplies with."""
    ref = nn.MultiheadAttention(twin.embed_dim, twin.num_heads, batch_first=twin.batch_first)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([getattr(twin, p).quantized_weight() for p in ("q_proj", "k_proj", "v_proj")]))
        ref.in_proj_bias.copy_(torch.cat([getattr(twin, p).bias for p in ("q_proj", "k_proj", "v_proj")]))
        ref.out_proj.weight.copy_(twin.out_proj.quantized_weight())
        ref.out_proj.bias.copy_(twin.out_proj.bias)
    return ref.eval()


@pytest.mark.parametrize("batch_first", [True, False])
def test_the_twin_computes_what_torch_attention_computes_with_its_weights(batch_first):
    torch.manual_seed(0)
    twin = QMultiheadAttention(32, 4, batch_first=batch_first, weight_only=True).eval()  # float inputs: torch's math
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        nn.init.normal_(getattr(twin, proj).bias)
    ref = _float_reference(twin)
    x = torch.randn(3, 5, 32) if batch_first else torch.randn(5, 3, 32)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    cases = [{}, {"key_padding_mask": padding}, {"attn_mask": causal}, {"attn_mask": causal.isinf()},
             {"attn_mask": causal, "key_padding_mask": padding, "average_attn_weights": False}]
    with torch.no_grad():
        for kwargs in cases:
            out, weights = twin(x, x, x, **kwargs)
            ref_out, ref_weights = ref(x, x, x, **kwargs)
            torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-5)
        one = x[0] if batch_first else x[:, 0]  # an unbatched sequence
        torch.testing.assert_close(twin(one, one, one)[0], ref(one, one, one)[0], rtol=1e-5, atol=1e-5)


def test_a_float_attention_state_dict_loads_and_splits_the_packed_projection():
    torch.manual_seed(0)
    float_attention = nn.MultiheadAttention(16, 2)
    twin = QMultiheadAttention(16, 2, bits_list=[8, 4])
    assert adabits.load_fp_state_dict(twin, float_attention.state_dict()) == ([], [])
    q, k, v = float_attention.in_proj_weight.chunk(3)
    assert torch.equal(twin.q_proj.weight, q) and torch.equal(twin.k_proj.weight, k) and torch.equal(twin.v_proj.weight, v)
    assert torch.equal(twin.v_proj.bias, float_attention.in_proj_bias.chunk(3)[2])
    assert torch.equal(twin.out_proj.weight, float_attention.out_proj.weight)
    separate = nn.MultiheadAttention(16, 2, kdim=8, vdim=12)  # q_proj_weight, k_proj_weight, v_proj_weight
    twin = QMultiheadAttention(16, 2, kdim=8, vdim=12, bits_list=[8, 4])
    assert adabits.load_fp_state_dict(twin, separate.state_dict()) == ([], [])
    assert torch.equal(twin.k_proj.weight, separate.k_proj_weight)


def test_quantize_model_quantizes_every_weight_of_a_vit_and_takes_no_fast_path():
    torch.manual_seed(0)
    vit = TinyViT()
    float_state = {k: v.clone() for k, v in vit.state_dict().items()}
    model = adabits.quantize_model(vit, bits_list=[8, 4])
    # the patch conv, the head, per layer two feed-forward linears and four attention projections
    assert sum(isinstance(m, adabits.QuantLayer) for m in model.modules()) == 2 + 2 * (2 + 4)
    assert not any(type(m) in (nn.Linear, nn.Conv2d, nn.MultiheadAttention) for m in model.modules())
    images = torch.randn(4, 1, 28, 28)
    outputs = {}
    for bits in (8, 4):
        adabits.set_bits(model, bits)
        model.eval()
        with torch.no_grad():
            evaluated = model(images)
        for module in model.modules():  # train mode without dropout: the same computation as eval
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            if isinstance(module, QMultiheadAttention):
                module.dropout = 0.0
        model.train()
        with torch.no_grad():
            trained = model(images)
        torch.testing.assert_close(evaluated, trained)
        outputs[bits] = evaluated
    assert (outputs[8] - outputs[4]).norm() > 1e-3 * outputs[8].norm()
    again = adabits.quantize_model(TinyViT(), bits_list=[8, 4])
    assert adabits.load_fp_state_dict(again, float_state) == ([], [])


def test_the_registered_vit_converts_without_a_float_path_and_takes_its_float_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no float path: the position embedding says why it stays float
        model = adabits.create_model("vit_tiny", bits_list=[8, 4])
    float_model = adabits.create_model("vit_tiny", bits_list=[32])
    nn.init.normal_(float_model.norm.norms[0].weight)
    assert adabits.load_fp_state_dict(model, float_model.state_dict()) == ([], [])
    assert all(torch.equal(norm.weight, float_model.norm.norms[0].weight) for norm in model.norm.norms)
    rows = {row.name: row for row in adabits.conversion_report(model).rows}
    assert rows["position"].why.startswith("an added position embedding") and rows["head"].quantized
    images = torch.randn(2, 1, 28, 28)
    model.eval()
    with torch.no_grad(), adabits.use_bits(model, 8):
        eight = model(images)
    with torch.no_grad(), adabits.use_bits(model, 4):
        four = model(images)
    assert (eight - four).norm() > 1e-3 * eight.norm()
