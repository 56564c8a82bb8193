"""factorch benchmark: latency per runtime, dense against compressed, and a row saying why where a runtime
cannot run."""

import json

import pytest
import torch
from torch import nn

import factorch
from factorch import benchmark as bench
from factorch.benchmark import benchmark_runtimes


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).eval()  # fmt: skip


def test_every_runtime_row_times_both_models_or_says_why(monkeypatch):
    x = torch.zeros(1, 1, 8, 8)
    small, _ = factorch.compress(net(), factorch.Tucker2Config(rank=0.5), example_inputs=x)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", no_compiler)
    result = benchmark_runtimes(net(), small, x, runtimes=("torch", "onnxruntime", "compile"), batch_sizes=(1, 4),
                                repeats=3)  # fmt: skip
    assert [(r.runtime, r.batch_size) for r in result.rows] == [
        (rt, b) for rt in ("torch", "onnxruntime", "compile") for b in (1, 4)
    ]
    for r in result.rows[:4]:
        assert r.dense_s > 0 and r.compressed_s > 0 and r.ratio == pytest.approx(r.compressed_s / r.dense_s, rel=0.5)
    assert result.row("compile", 4).note == "cannot run: RuntimeError: no C++ compiler found"
    assert "| onnxruntime | 4 |" in result.to_markdown()
    with pytest.raises(ValueError, match="tensorrt"):
        benchmark_runtimes(net(), None, x, runtimes=("tensorrt",))


def test_compile_rows_time_the_compiled_models(monkeypatch):
    calls = []

    def fake_compile(model, **kwargs):  # torch.compile's interface; compiling itself is torch's job
        calls.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = benchmark_runtimes(net(), None, torch.zeros(1, 1, 8, 8), runtimes=("compile",), batch_sizes=(2,),
                                repeats=2)  # fmt: skip
    assert calls == [{"backend": "inductor", "dynamic": False}]
    assert result.row("compile", 2).dense_s > 0 and result.row("compile", 2).ratio is None


def test_cli_times_a_compressed_folder_against_its_base(tmp_path, capsys):
    from factorch.cli import main

    x = torch.zeros(1, 1, 28, 28)
    small, _ = factorch.compress(factorch.models.create_model("lenet5"), factorch.SVDConfig(rank=0.5),
                                 example_inputs=x)  # fmt: skip
    factorch.save(small, tmp_path / "m")
    assert main(["benchmark", str(tmp_path / "m"), "--runtimes", "torch", "--batch-sizes", "1", "--repeats", "3",
                 "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    row = out["rows"][0]
    assert row["runtime"] == "torch" and row["compressed_s"] > 0 and row["ratio"] > 0
    assert bench.RUNTIMES == ("torch", "onnxruntime", "compile")
