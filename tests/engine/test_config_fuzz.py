"""Every config key, every kind of YAML value: `adabits train` either runs or refuses in one line with exit status
2, never a traceback. Hypothesis draws the key and the value; `-m slow` runs the long profile
(HYPOTHESIS_PROFILE=long draws ten times as many)."""
from __future__ import annotations

import os

import pytest
from _engine_helpers import tiny_args
from _preempt_helpers import no_plots
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adabits.cli import main
from adabits.engine.config import TrainConfig

#: YAML texts of every type and edge: numbers huge, negative, zero, fractional, non-finite; strings empty and odd;
#: collections empty and nested; booleans and null
EDGE_VALUES = ["0", "-1", "1", "2", "1e20", "100000000000000000000", "-100000000000000000000", "0.5", "-0.5", ".nan",
               ".inf", "-.inf", "''", "x", "'1'", "[]", "[[]]", "[1, 2]", "{}", "{a: 1}", "true", "false", "null",
               "'../x'", "'\u00e9'", "[.nan]", "[-1]", "1e-300"]
#: keys left out, each for a reason of the test, not of the product: they run long by design (compiling; a value that
#: asks for more epochs or data is valid and would just take its time), or reach outside the machine (download)
SLOW_OR_OUTSIDE = {"compile", "compile_quantizers", "download", "num_epochs", "max_iters_per_epoch",
                   "synthetic_train_size", "synthetic_val_size", "checkpoint_every_steps", "num_threads",
                   "data_loader_workers", "log_every"}
KEYS = sorted(set(TrainConfig.model_fields) - SLOW_OR_OUTSIDE)

EXAMPLES = {"default": 60, "long": 600}[os.environ.get("HYPOTHESIS_PROFILE", "default")]


@pytest.fixture(autouse=True)
def _no_plots_in_a_folder_of_its_own(monkeypatch, tmp_path_factory) -> None:
    """Relative values (log_dir: x, run_name: '../x') resolve under a temporary folder, never the checkout."""
    no_plots(monkeypatch)
    inner = tmp_path_factory.mktemp("cwd") / "inner"  # '../x' stays inside the temporary folder too
    inner.mkdir()
    monkeypatch.chdir(inner)


@given(key=st.sampled_from(KEYS), value=st.sampled_from(EDGE_VALUES))
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_value_of_any_key_runs_or_is_refused_in_one_line(tmp_path_factory, capsys, key, value):
    runs = tmp_path_factory.mktemp("runs")
    capsys.readouterr()
    code = main(["train", *tiny_args(runs, num_epochs=1, max_iters_per_epoch=1, synthetic_train_size=32,
                                     synthetic_val_size=8), f"{key}={value}"])
    err = capsys.readouterr().err
    assert code in (0, 2), (key, value, code, err)
    assert "Traceback" not in err, (key, value, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("error: "), (key, value, err)


@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                         st.sampled_from([b"\xff\xfelr: 1\n", b"lr:\t0.1\n", b"lr: 0.1\nlr: 0.2\n", b"- 1\n",
                                          b"a: " + b"[" * 100 + b"]" * 100 + b"\n", b"{lr: 0.1, lr: 0.2}\n"])))
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_config_file_runs_or_is_refused_in_one_line(tmp_path_factory, capsys, content):
    folder = tmp_path_factory.mktemp("app")
    (folder / "x.yml").write_bytes(content)
    capsys.readouterr()
    code = main(["train", f"app:{folder / 'x.yml'}", *tiny_args(folder / "runs", num_epochs=1, max_iters_per_epoch=1)])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, (content, code, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("error: "), (content, err)
