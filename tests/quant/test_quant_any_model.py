"""quantize_model on models it was not written for: the clipping side from the data, the report, the float-path warning."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import adabits
from adabits.errors import QuantOptionError


class SignedThenRelu(nn.Module):
    """A linear fed by LayerNorm (signed inputs), then one fed by ReLU (non-negative inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.signed = nn.Linear(16, 16)
        self.after_relu = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_relu(torch.relu(self.signed(self.norm(self.stem(x)))))


def _convert(**options) -> nn.Module:
    torch.manual_seed(0)
    return adabits.quantize_model(SignedThenRelu(), bits_list=[8, 4], first_last_policy=False, **options)


def test_the_clipping_side_is_chosen_from_the_first_input_and_saved():
    model = _convert()
    assert model.signed.clipping_side == "auto (no input seen yet)"
    x = torch.randn(32, 8)
    model(x)
    assert model.signed.double_side and not model.after_relu.double_side
    assert model.signed.clipping_side == "two-sided (auto)" and model.after_relu.clipping_side == "one-sided (auto)"
    # a one-sided clip would have zeroed every negative input of `signed`: two-sided keeps them
    signed_input = model.norm(model.stem(x))
    assert (model.signed.quantized_input(signed_input) < 0).float().mean() > 0.3
    again = _convert()
    again.load_state_dict(model.state_dict())
    assert again.signed.double_side and again.signed.clipping_side == "two-sided (auto)"
    assert not again.after_relu.double_side and again.after_relu.clipping_side == "one-sided (auto)"


def test_alpha_init_chooses_the_side_before_the_level():
    from adabits.quant.clipping import init_clipping_levels

    model = _convert()
    levels = init_clipping_levels(model, torch.randn(64, 8))
    assert model.signed.double_side
    # two-sided levels cover the negative values too: alpha is near max|x|, not max(x, 0) of a one-sided choice
    assert all(levels[bits]["signed"] > 0 for bits in levels)


def test_layer_options_and_the_keyword_force_the_side():
    forced = _convert(layer_options={"signed": {"double_side": False}})
    forced(torch.randn(32, 8))
    assert not forced.signed.double_side and forced.signed.clipping_side == "one-sided"
    everywhere = _convert(double_side=True)
    assert everywhere.after_relu.double_side and everywhere.after_relu.clipping_side == "two-sided"
    with pytest.raises(QuantOptionError, match="double_side must be true, false or 'auto'"):
        _convert(double_side="both")


def test_registered_models_keep_their_configured_side_and_state_dict():
    model = adabits.create_model("resnet20", bits_list=[8, 4], num_classes=10)
    assert not any(key.endswith("clip_side") for key in model.state_dict())
    assert all(layer.clipping_side in ("one-sided", "none (weights only)")
               for layer in model.modules() if isinstance(layer, adabits.QuantLayer))


class WithFloatPaths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.conv1d = nn.Conv1d(8, 8, 3)
        self.attention = nn.MultiheadAttention(8, 2, add_zero_attn=False)
        self.head = nn.Linear(8, 2)


def test_a_float_path_is_warned_about_by_name_unless_excluded():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = adabits.quantize_model(WithFloatPaths(), bits_list=[8, 4])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "embed (Embedding)" in messages[0] and "conv1d (Conv1d)" in messages[1]
    report = adabits.conversion_report(model)
    assert report.float_paths == ["embed", "conv1d"]
    rows = {row.name: row for row in report.rows}
    assert rows["attention.q_proj"].quantized and rows["head"].quantized and "attention" not in rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluded on purpose: no warning
        kept = adabits.quantize_model(WithFloatPaths(), bits_list=[8, 4], layer_options={
            "embed": {"quantize": False}, "conv1d": {"quantize": False}, "attention": {"quantize": False}})
    rows = {row.name: row for row in adabits.conversion_report(kept, ["embed", "conv1d", "attention"]).rows}
    assert rows["attention"].why == "excluded (layer_options)" and "attention.out_proj" not in rows
    assert isinstance(kept.attention, nn.MultiheadAttention)


def test_the_report_prints_one_line_per_layer():
    model = _convert()
    model(torch.randn(4, 8))
    text = str(adabits.conversion_report(model))
    lines = text.splitlines()
    assert lines[0].startswith("layer") and len(lines) == 2 + 4  # header, rule, stem, norm, signed, after_relu
    assert "two-sided (auto)" in text and "normalization, one per bit-width: 8-bit, 4-bit" in text


def test_a_layernorm_becomes_one_per_bit_width_and_takes_a_float_layernorm_state():
    float_norm = nn.LayerNorm(16)
    nn.init.normal_(float_norm.weight)
    model = adabits.quantize_model(nn.Sequential(float_norm), bits_list=[8, 4])
    norm = model[0]
    assert isinstance(norm, adabits.quant.SwitchNorm)
    plain = nn.LayerNorm(16)
    nn.init.normal_(plain.weight)
    norm.load_state_dict(plain.state_dict())
    x = torch.randn(3, 16)
    for bits in (8, 4):
        adabits.set_bits(model, bits)
        torch.testing.assert_close(model(x), plain(x))
    with torch.no_grad():
        norm.norms[1].bias.fill_(1.0)  # the 4-bit copy learns its own shift
    adabits.set_bits(model, 8)
    torch.testing.assert_close(model(x), plain(x))
    adabits.set_bits(model, 4)
    torch.testing.assert_close(model(x), plain(x) + 1.0)
    adabits.quant.add_bits(model, 3)
    adabits.set_bits(model, 3)
    torch.testing.assert_close(model(x), plain(x) + 1.0)  # copied from the nearest bit-width, 4
    kept = adabits.quantize_model(nn.Sequential(nn.LayerNorm(16)), bits_list=[8, 4],
                                  config=adabits.QuantConfig(switchbn=False))
    assert isinstance(kept[0], adabits.quant.SwitchNorm) and kept[0].shared and len(kept[0].norms) == 1


class WithTokens(nn.Module):
    """A ViT's container: a class token and a position embedding, added to activations, never multiplied."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(tokens[:, 0])


def test_added_tokens_of_a_container_are_no_float_path():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = adabits.quantize_model(WithTokens(), bits_list=[8, 4])
    assert adabits.conversion_report(model).float_paths == []
