"""adabits.export.onnx_session: one ONNX Runtime session helper, and logits fed in the graph's input type."""
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import adabits
from adabits.export.onnx_session import cpu_session, run_onnx, session_logits


def doubling_graph(input_type: int) -> bytes:
    """y = 2 * float(x), for an x of `input_type`."""
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["xf", "xf"], ["y"])]
    graph = helper.make_graph(nodes, "double", [helper.make_tensor_value_info("x", input_type, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_logits_cast_to_the_declared_input_type(tmp_path: Path):
    path = tmp_path / "double.onnx"
    path.write_bytes(doubling_graph(TensorProto.UINT8))
    for source in (path, str(path), path.read_bytes()):
        session = cpu_session(source, threads=1)
        out = session_logits(session, torch.tensor([[1.0, 2.0, 255.0]]))  # float codes, fed as uint8
        np.testing.assert_array_equal(out, [[2.0, 4.0, 510.0]])
    float_session = cpu_session(doubling_graph(TensorProto.FLOAT))
    np.testing.assert_allclose(session_logits(float_session, np.array([[0.25, 1.5, -3.0]])), [[0.5, 3.0, -6.0]])


def test_unsupported_input_type_is_a_clear_error():
    session = cpu_session(doubling_graph(TensorProto.INT64))
    with pytest.raises(ValueError, match="tensor\\(int64\\)"):
        session_logits(session, np.zeros((1, 3)))


def test_same_logits_as_run_onnx_on_an_export(tmp_path: Path):
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[4], num_classes=10, in_chans=1,
                                 weight_quant_scheme="modified").eval()
    calibration = torch.randint(0, 256, (8, 1, 28, 28)).float()
    path = adabits.export_model(model, tmp_path / "r8.onnx", format="onnx", bits=4, example=(1, 28, 28),
                                calibration=calibration, uint8_input=True).path
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    images = torch.randint(0, 256, (4, 1, 28, 28)).float()
    np.testing.assert_array_equal(session_logits(cpu_session(path, threads=1), images), run_onnx(path, images, threads=1))


def test_idle_threads_do_not_spin_unless_asked():
    options = cpu_session(doubling_graph(TensorProto.FLOAT), threads=1).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1
    spinning = cpu_session(doubling_graph(TensorProto.FLOAT), spinning=True).get_session_options()
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default (spinning)
        spinning.get_session_config_entry("session.intra_op.allow_spinning")
