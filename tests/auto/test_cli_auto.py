import json

import pytest
import torch
from torch import nn

from factorch.auto.timing import has_onnxruntime, time_pair
from factorch.cli import main


def test_compress_with_a_target(fmnist_root, tmp_path, capsys):
    out = tmp_path / "auto"
    args = ["compress", "lenet5", "--pretrained", "--target", "macs=0.5", "--methods", "svd,tucker2"]
    args += ["--calib", "32", "--batch-size", "8", "--data-root", str(fmnist_root), "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "measured time x" in text and "test accuracy" in text
    totals = json.loads((out / "report.json").read_text())["totals"]
    assert 0.49 <= totals["macs_ratio"] <= 0.5
    assert totals["latency_batch_size"] == 8 and totals["latency_ratio"] > 0
    assert (out / "plan.json").is_file()


def test_compress_needs_method_or_target(capsys, tmp_path):
    assert main(["compress", "lenet5", "--out", str(tmp_path / "x"), "--no-eval"]) == 2
    assert "exactly one of --method" in capsys.readouterr().out


def test_sweep_writes_table_and_plots(fmnist_root, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "lenet5", "--pretrained", "--targets", "0.5,0.4", "--methods", "svd,tucker2"]
    args += ["--calib", "32", "--batch-size", "8", "--data-root", str(fmnist_root), "--out", str(out)]
    assert main(args) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["group"] for r in rows] == ["dense", "auto", "auto", "uniform tucker2", "uniform tucker2"]
    done = [r for r in rows if "note" not in r]
    assert len(done) >= 4 and all(r["macs_ratio"] <= 0.5 for r in done[1:])
    assert all(r["accuracy"] is not None and r["latency_ratio"] > 0 for r in done)
    # a baseline that cannot reach a target is a row with the reason, not a crash
    assert all("uniform" in r["run"] and "reaches" in r["note"] for r in rows if "note" in r)
    for name in ("sweep_macs.png", "sweep_latency.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(not has_onnxruntime(), reason="onnx extra not installed")
def test_onnxruntime_timing_runs_both_models():
    dense = nn.Conv2d(8, 8, 3, padding=1).eval()
    small = nn.Sequential(nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 3, padding=1)).eval()
    t = time_pair(dense, small, (torch.randn(1, 8, 6, 6),), batch_sizes=(1, 4), runtime="onnxruntime", repeats=3)
    assert set(t) == {1, 4} and all(a > 0 and b > 0 for a, b in t.values())


@pytest.mark.parametrize("command", ["compress", "sweep"])
def test_stable_cp_flag_reaches_the_auto_config(command):
    from factorch.cli import _auto_config, build_parser

    base = [command, "lenet5", "--out", "x"] + (["--target", "macs=0.5"] if command == "compress" else [])
    assert _auto_config(build_parser().parse_args([*base, "--stable-cp"]), "macs=0.5").stable_cp is True
    assert _auto_config(build_parser().parse_args(base), "macs=0.5").stable_cp is False
