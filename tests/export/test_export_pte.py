"""ExecuTorch export: one .pte, a method per bit-width, every op in XNNPACK on integer data, runnable
with ExecuTorch's runtime alone, computing what the integer graph computes."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from _integer_helpers import SHAPE, small_resnet

from adabits.errors import ExportError
from adabits.export.integer_graph import integer_graph
from adabits.export.pte import export_pte, integer_program, method_name
from adabits.export.pte_delegation import delegated_op_counts

pytest.importorskip("executorch")



@pytest.fixture(scope="module")
def graphs():
    """A small ResNet at [8, 4] with BN statistics from random images, as integer graphs."""
    model, images = small_resnet(weight_quant_scheme="modified")
    return model, images, [integer_graph(model, bits, SHAPE, images) for bits in (8, 4)]


def test_method_names() -> None:
    assert [method_name(b) for b in (8, 4, [4, 8], 32)] == ["forward_8", "forward_4", "forward_w4a8", "forward_32"]


def test_every_method_runs_all_integer_inside_xnnpack(graphs) -> None:
    _, _, integer = graphs
    edge = integer_program(integer, max_batch=8)
    for graph in integer:
        counts = delegated_op_counts(edge, method_name(graph.bits))
        assert counts.all_delegated, counts.outside_ops
        convs = counts.delegated_ops["convolution.default"]
        assert convs == 9 and counts.delegated_ops["add.Tensor"] == 3
        # what reads float data: the pooling and the classifier (its logits stay float), nothing else
        assert set(counts.float_ops) <= {"mean.dim", "linear.default", "view_copy.default", "relu.default"}, counts


def test_the_pte_runs_with_executorch_alone_and_computes_the_integer_graph(graphs, tmp_path) -> None:
    _, images, integer = graphs
    path = export_pte(integer, tmp_path / "model.pte", max_batch=32)
    expected = {str(g.bits): g(images[:20]) for g in integer}
    torch.save({"images": images[:20], "expected": expected}, tmp_path / "io.pt")
    # a fresh interpreter that imports ExecuTorch's runtime and torch, never adabits
    script = textwrap.dedent(f"""
        import sys, torch
        from executorch.runtime import Runtime
        program = Runtime.get().load_program({str(path)!r})
        io = torch.load({str(tmp_path / "io.pt")!r})
        bits = program.load_method("bits_list").execute([])
        names = program.load_method("method_names").execute([])
        assert list(bits) == ["8", "4"] and list(names) == ["forward_8", "forward_4"], (bits, names)
        for b, name in zip(bits, names):
            method = program.load_method(name)
            for batch in (1, 20):
                got = method.execute([io["images"][:batch]])[0]
                want = io["expected"][b][:batch]
                agree = (got.argmax(1) == want.argmax(1)).float().mean().item()
                error = ((got - want).norm() / want.norm()).item()
                assert agree >= 0.9 and error < 0.05, (b, batch, agree, error)
        assert "adabits" not in sys.modules
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_bits_above_8_and_mixed_shapes_are_refused(graphs) -> None:
    model, images, integer = graphs
    with pytest.raises(ExportError, match="bits <= 8"):
        integer_graph(model, 32, SHAPE, images)
    other = integer_graph(model, 8, (1, 16, 16), torch.randint(0, 256, (8, 1, 16, 16)).float())
    with pytest.raises(ExportError, match="same input shape"):
        integer_program([integer[0], other])
    with pytest.raises(ExportError, match="at least one bit-width"):
        integer_program([])
