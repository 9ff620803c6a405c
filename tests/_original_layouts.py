"""State-dict layouts of the original AdaBits code's models, restated from its models/*.py (key names
and shapes only, independently of our models and of adabits.models.checkpoint_keys).

Every QConv2d / QLinear there holds an `alpha`: 0-d with `switch_alpha` off, one entry per bit-width
with it on; the weight-only first conv holds one too and never uses it. A SwitchBN2d holds `bn.I` per
bit-width; under `stats_sharing` those are non-affine and the SwitchBN2d itself holds `weight`/`bias`.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

Layout = Iterator[tuple[str, tuple[int, ...]]]
#: the original's q_mobilenet_v2 block_setting [t, c, n, s] and q_mobilenet_v1's [c, n] stages
V2_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
              [6, 320, 1, 1]]
V1_SETTING = [(64, 1), (128, 2), (256, 2), (512, 6), (1024, 2)]


def switch_bn(prefix: str, channels: int, bits: int = 1, stats_sharing: bool = False) -> Layout:
    if stats_sharing:
        yield f"{prefix}.weight", (channels,)
        yield f"{prefix}.bias", (channels,)
    for index in range(bits):
        names = ("running_mean", "running_var") if stats_sharing else ("weight", "bias", "running_mean", "running_var")
        for name in names:
            yield f"{prefix}.bn.{index}.{name}", (channels,)
        yield f"{prefix}.bn.{index}.num_batches_tracked", ()


def quant_layer(prefix: str, shape: tuple[int, ...], alpha: tuple[int, ...]) -> Layout:
    yield f"{prefix}.weight", shape
    yield f"{prefix}.alpha", alpha


def original_resnet_cifar_layout(depth: int = 20, bits: int = 1, alpha: tuple[int, ...] = (),
                                 stats_sharing: bool = False, num_classes: int = 10) -> Layout:
    """models/q_resnet_cifar.py: head (conv, SwitchBN2d), stage_S_layer_L (body 0/1/3/4, shortcut 0/1), classifier.0."""
    yield from quant_layer("head.0", (16, 3, 3, 3), alpha)
    yield from switch_bn("head.1", 16, bits, stats_sharing)
    inp = 16
    for stage, outp in enumerate((16, 32, 64)):
        for layer in range((depth - 2) // 6):
            p = f"stage_{stage}_layer_{layer}"
            yield from quant_layer(f"{p}.body.0", (outp, inp, 3, 3), alpha)
            yield from switch_bn(f"{p}.body.1", outp, bits, stats_sharing)
            yield from quant_layer(f"{p}.body.3", (outp, outp, 3, 3), alpha)
            yield from switch_bn(f"{p}.body.4", outp, bits, stats_sharing)
            if inp != outp or (layer == 0 and stage > 0):
                yield from quant_layer(f"{p}.shortcut.0", (outp, inp, 1, 1), alpha)
                yield from switch_bn(f"{p}.shortcut.1", outp, bits, stats_sharing)
            inp = outp
    yield from quant_layer("classifier.0", (num_classes, 64), alpha)
    yield "classifier.0.bias", (num_classes,)


def original_mobilenet_layout(version: int, bits: int = 1, alpha: tuple[int, ...] = (1,)) -> Layout:
    """models/q_mobilenet_v1.py / q_mobilenet_v2.py: head, stage_S_layer_L.body.K, tail (V2), classifier.0."""
    yield from quant_layer("head.0", (32, 3, 3, 3), alpha)
    yield from switch_bn("head.1", 32, bits)
    inp = 32
    if version == 1:
        for stage, (c, n) in enumerate(V1_SETTING):
            for layer in range(n):
                p = f"stage_{stage}_layer_{layer}.body"
                yield from quant_layer(f"{p}.0", (inp, 1, 3, 3), alpha)
                yield from switch_bn(f"{p}.1", inp, bits)
                yield from quant_layer(f"{p}.3", (c, inp, 1, 1), alpha)
                yield from switch_bn(f"{p}.4", c, bits)
                inp = c
    else:
        for stage, (t, c, n, _) in enumerate(V2_SETTING):
            for layer in range(n):
                p, hidden, k = f"stage_{stage}_layer_{layer}.body", inp * t, 0
                if t != 1:
                    yield from quant_layer(f"{p}.0", (hidden, inp, 1, 1), alpha)
                    yield from switch_bn(f"{p}.1", hidden, bits)
                    k = 3
                yield from quant_layer(f"{p}.{k}", (hidden, 1, 3, 3), alpha)
                yield from switch_bn(f"{p}.{k + 1}", hidden, bits)
                yield from quant_layer(f"{p}.{k + 3}", (c, hidden, 1, 1), alpha)
                yield from switch_bn(f"{p}.{k + 4}", c, bits)
                inp = c
        yield from quant_layer("tail.0", (1280, inp, 1, 1), alpha)
        yield from switch_bn("tail.1", 1280, bits)
        inp = 1280
    yield from quant_layer("classifier.0", (10, inp), alpha)
    yield "classifier.0.bias", (10,)


def random_state_dict(layout: Layout) -> dict[str, torch.Tensor]:
    """Random values of the layout's shapes (positive running variances and clipping levels)."""
    generator = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in layout:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(100)
        elif key.endswith(("running_var", "alpha")):
            sd[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=generator) * 0.1
    return sd
