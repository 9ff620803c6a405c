"""Data-driven PACT clipping levels: alpha per bit-width that minimises quantization error.

The seed starts every alpha at 8 (10 for linear layers). When quantized training starts from a
full-precision model, the activations entering a layer after BN + ReLU mostly lie below 2 or 3,
so at 4 bits a level of 8 can waste most of the 16 levels, and alpha learns far too slowly to
recover in a short schedule (measured: it moved by < 0.1 in 250 steps). Least MSE is not least
loss, though: benchmarks/accuracy/alpha_init.py measures both effects. For every bit-width, layer by layer in forward
order, alpha is set to the candidate with the least mean squared quantization error on that
layer's actual input (which already reflects the clipping chosen for the layers before it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .bitwidth import format_bits, parse_bits, switchable_modules, use_bits
from .functional import quantize_activation
from .layers import QuantLayer

SAMPLE_SIZE = 1 << 16
CANDIDATES = 100


def mse_optimal_alpha(x: Tensor, bits: int, scheme: str = "original", double_side: bool = False) -> Tensor:
    """The clipping level (among CANDIDATES fractions of max|x|) with the least squared error."""
    return mse_optimal(x, bits, scheme, double_side)[0]


def mse_optimal(x: Tensor, bits: int, scheme: str = "original", double_side: bool = False) -> tuple[Tensor, Tensor]:
    """(the clipping level among CANDIDATES fractions of max|x| with the least squared error, that error)."""
    values = x.detach().float().reshape(-1)
    if values.numel() > SAMPLE_SIZE:
        index = torch.randint(values.numel(), (SAMPLE_SIZE,), device=values.device,
                              generator=torch.Generator(values.device).manual_seed(0))
        values = values[index]
    top = values.abs().max() if double_side else values.clamp(min=0).max()
    top = torch.where(top > 0, top, torch.ones_like(top))
    alphas = top * torch.arange(1, CANDIDATES + 1, device=values.device, dtype=values.dtype) / CANDIDATES
    with torch.no_grad():  # the very quantizer forward runs, candidate by candidate
        errors = torch.stack([(quantize_activation(values, alpha, bits, scheme, double_side) - values).pow(2).mean()
                              for alpha in alphas])
    best = errors.argmin()
    return alphas[best], errors[best]


def _chooser(name: str, levels: dict[str, float], first: bool) -> Callable[[nn.Module, tuple], None]:
    """A forward pre-hook that sets the layer's current alpha from its input and records it in `levels`."""
    def hook(layer: nn.Module, inputs: tuple) -> None:
        assert isinstance(layer, QuantLayer)
        layer.choose_side(inputs[0])  # `double_side: auto` decides before the level is chosen for that side
        if not layer.quantizes_input:
            return
        if layer.alpha_shared and not first:
            return  # a shared alpha is chosen once, at the first bit-width
        alpha = mse_optimal_alpha(inputs[0], layer.act_bits, layer.act_quant_scheme, layer.double_side)
        layer.set_current_alpha(alpha)
        levels[name] = float(alpha)
    return hook


@torch.no_grad()
def init_clipping_levels(model: nn.Module, images: Tensor, bits_list: Iterable[object] | None = None, *,
                         choose_shared: bool = True) -> dict:
    """Set every quantized layer's alpha for each bit-width from one forward pass on `images`.

    Runs in eval mode (BN uses its running statistics, which nothing here changes) and restores
    the model's mode and bit-width. Layers with one shared alpha get the level chosen at the
    first bit-width listed (none with `choose_shared=False`). Returns {bits: {layer name: alpha}} for logging.
    """
    modules = switchable_modules(model)
    if not modules:
        raise ValueError("init_clipping_levels needs a model with quantized layers")
    chosen: dict = {}
    was_training = model.training
    model.eval()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer) and m.alpha is not None}
    order = list(bits_list) if bits_list is not None else [format_bits(p) for p in modules[0].bits_list]
    try:
        for bits in order:
            levels: dict[str, float] = {}
            chosen[bits] = levels
            first = choose_shared and bits == order[0]

            handles = [layer.register_forward_pre_hook(_chooser(name, levels, first)) for name, layer in layers.items()]
            try:
                with use_bits(model, format_bits(parse_bits(bits))):
                    model(images)
            finally:
                for handle in handles:
                    handle.remove()
    finally:
        model.train(was_training)
    return chosen
