import json

import pytest

from factorch.cli import main


def test_train_then_evaluate_saved_folder(fmnist_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "lenet5",
                "--data-root",
                str(fmnist_root),
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    card = json.loads((out / "card.json").read_text())
    assert card["epochs"] == 1 and card["command"].startswith("factorch train lenet5")
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data-root", str(fmnist_root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 48
    assert result["accuracy"] == pytest.approx(card["test_accuracy"], abs=0.01)
    # a second run into the same folder must not silently overwrite it
    with pytest.raises(SystemExit, match="--resume"):
        main(["train", "lenet5", "--data-root", str(fmnist_root), "--epochs", "1", "--out", str(out)])


def test_unknown_model_is_an_error_with_suggestions(capsys):
    assert main(["evaluate", "vgj", "--pretrained"]) == 2
    assert "Did you mean 'vgg'" in capsys.readouterr().out


def test_missing_data_is_an_error_with_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("factorch.data.fmnist.DEBIAN_ROOT", tmp_path / "none")
    monkeypatch.delenv("FACTORCH_DATA", raising=False)
    assert main(["evaluate", "lenet5"]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().out


def test_corrupt_checkpoint_is_an_error(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main(["evaluate", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().out


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "vgg" in out


def test_profile_with_an_input_shape_the_model_cannot_take(capsys):
    assert main(["profile", "resnet20", "--input-shape", "1,3,28,28"]) == 2
    out = capsys.readouterr().out
    assert "conv1" in out and "Conv2d" in out


def test_profile_json(capsys):
    assert main(["profile", "lenet5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["totals"]["total_macs"] == 416_520


def test_compress_writes_model_and_reports(fmnist_root, tmp_path, capsys):
    out = tmp_path / "c"
    rc = main(
        ["compress", "lenet5", "--method", "svd", "--rank", "0.5", "--data-root", str(fmnist_root), "--out", str(out)]
    )
    assert rc == 0
    assert {"plan.json", "weights.pt", "report.md", "report.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["params_ratio"] < 1 and "accuracy_after" in report["totals"]
    assert "test accuracy" in capsys.readouterr().out
    # the saved folder is a MODEL for the other commands
    assert main(["evaluate", str(out), "--data-root", str(fmnist_root), "--json"]) == 0


def test_compress_unknown_rank_is_an_error(capsys):
    assert main(["compress", "lenet5", "--method", "svd", "--rank", "lots", "--out", "/tmp/never", "--no-eval"]) == 2
    assert "cannot read rank" in capsys.readouterr().out


def test_compress_in_stages_writes_the_history_and_resumes(fmnist_root, tmp_path, capsys):
    out = tmp_path / "staged"
    argv = ["compress", "lenet5", "--method", "svd", "--rank", "macs:0.5", "--stages", "2", "--finetune-epochs", "1",
            "--data-root", str(fmnist_root), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "stage 2/2 (macs:0.5 per layer)" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == [1, 2]
    assert [s["status"] for s in report["stages"]] == ["accepted", "accepted"]
    assert report["stages"][1]["macs_ratio"] < report["stages"][0]["macs_ratio"] < 1
    assert len(report["stages"][0]["finetune"]) == 1 and "accuracy_after" in report["totals"]
    assert (out / "stages" / "stage-1" / "plan.json").is_file()
    assert "Stages" in (out / "report.md").read_text()
    assert main(argv) == 2  # the folder holds a run: continue it or choose another
    assert "--resume" in capsys.readouterr().out
    assert main([*argv, "--resume"]) == 0  # finished: the same result at once
    assert json.loads((out / "report.json").read_text())["stages"] == report["stages"]
    assert main(["evaluate", str(out), "--data-root", str(fmnist_root), "--json"]) == 0
    assert main([*argv[:7], "0", *argv[8:]]) == 2 and "--stages must be >= 1" in capsys.readouterr().out


def test_challenge_reference_accuracy_reads_the_model_card_of_pretrained_registry_models():
    from factorch.cli import _reference_accuracy
    from factorch.models import model_card

    assert _reference_accuracy("card", "resnet20", True) == model_card("resnet20")["test_accuracy"]
    assert _reference_accuracy("card", "resnet20", False) is None  # untrained weights have no published figure
    assert _reference_accuracy("card", "some/folder", True) is None
    assert _reference_accuracy("none", "resnet20", True) is None
    assert _reference_accuracy("92.5", "resnet20", True) == 92.5
    with pytest.raises(ValueError, match="--reference-accuracy"):
        _reference_accuracy("high", "resnet20", True)
