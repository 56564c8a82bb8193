"""factorch.challenge: the lowest score that keeps the accuracy floor, resumable to the same result."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import factorch
from factorch import challenge as challenge_module
from factorch.challenge import Try, challenge, next_target, pareto_front


def teacher():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


def data(n=400):
    """Inputs labelled by the teacher itself: the dense model is 100 % right."""
    x = torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = teacher()(x).argmax(1)
    return TensorDataset(x, y)


def run(out, **kw):
    return challenge(
        teacher(), data(), example_inputs=torch.zeros(1, 1, 12, 12), min_accuracy=60.0, out_dir=out,
        methods=["tucker2", "prune", "quant"], epochs=3, val_size=100, calib_samples=64, show_progress=False,
        auto_options={"calib_samples": 64, "polish": 10, "refine": 0, "cache": False, "keep_edges": False}, **kw,
    )  # fmt: skip


def spy_finetune(monkeypatch) -> list[tuple[float, int, str]]:
    """Record ``(lr, epochs, checkpoint folder name)`` of every distillation the challenge runs."""
    seen = []
    real = challenge_module.finetune

    def spy(*args, **kwargs):
        seen.append((kwargs["lr"], kwargs["epochs"], kwargs["out_dir"].name))
        return real(*args, **kwargs)

    monkeypatch.setattr(challenge_module, "finetune", spy)
    return seen


def test_targets_go_down_while_the_floor_holds_then_bisect():
    ok = Try(0.1, "done", 0.09, 95.0)
    assert next_target([], 93.0, 1.0, 0.1, 0.4) == pytest.approx(0.1)
    assert next_target([ok], 93.0, 1.0, 0.1, 0.4) == pytest.approx(0.04)
    bad = Try(0.04, "done", 0.039, 90.0)
    assert next_target([ok, bad], 93.0, 1.0, 0.1, 0.4) == pytest.approx((0.1 * 0.04) ** 0.5)
    unreachable = Try(0.1, "unreachable")  # counts as not kept: back toward the dense score
    assert next_target([unreachable], 93.0, 1.0, 0.1, 0.4) == pytest.approx(0.1**0.5)
    assert pareto_front([(1, 90), (2, 95), (0.5, 80), (3, 94)]) == [(0.5, 80), (1, 90), (2, 95)]


def test_challenge_writes_the_run_and_resumes_to_the_same_result(tmp_path, monkeypatch):
    whole = run(tmp_path / "whole", test_data=data(200))
    assert len(whole.tries) == 3
    assert whole.best is not None and whole.tries[whole.best].val_accuracy >= 60.0
    assert whole.score < whole.dense_score and whole.score == min(
        t.score for t in whole.tries if t.status == "done" and t.val_accuracy >= 60.0
    )
    for name in ("challenge.json", "report.md", "report.json", "accuracy_vs_score.png", "final/plan.json"):
        assert (tmp_path / "whole" / name).is_file()
    x = torch.randn(5, 1, 12, 12)
    back = factorch.load(tmp_path / "whole" / "final", base_model=teacher())
    torch.testing.assert_close(back(x), whole.model(x), rtol=0, atol=0)
    assert factorch.score(back, x[:1]).score == pytest.approx(whole.score)
    assert json.loads((tmp_path / "whole" / "report.json").read_text())["test_accuracy"] == whole.test_accuracy

    real = challenge_module.finetune
    calls = {"n": 0}

    def interrupted(*args, **kwargs):  # the second try stops in the middle of its epoch's checkpointing
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(challenge_module, "finetune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", test_data=data(200))
    assert len(json.loads((tmp_path / "cut" / "challenge.json").read_text())["tries"]) < len(whole.tries)
    monkeypatch.setattr(challenge_module, "finetune", real)
    resumed = run(tmp_path / "cut", test_data=data(200))
    assert [(t.target, t.score, t.val_accuracy) for t in resumed.tries] == [
        (t.target, t.score, t.val_accuracy) for t in whole.tries
    ]
    torch.testing.assert_close(resumed.model(x), whole.model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="other settings"):
        run(tmp_path / "cut", seed=1)


def test_the_validation_floor_follows_the_dense_models_gap_to_its_reference():
    from factorch.challenge import ChallengeResult, val_floor

    # resnet20: 95.64 % on the validation split it trained on, 93.96 % on the test set; floor 93.0 on unseen data
    assert val_floor(93.0, 95.64, 93.96) == pytest.approx(94.68)
    assert val_floor(93.0, 95.64, None) == 93.0
    assert val_floor(93.0, 92.0, 93.96) == 93.0  # never lowered
    tries = [Try(0.01, "done", 0.009, 94.5), Try(0.02, "done", 0.019, 94.9)]
    result = ChallengeResult("effdl", 93.0, 0.158, 95.64, tries, 1, nn.Identity(), reference_accuracy=93.96)
    assert result.val_floor == pytest.approx(94.68)
    assert result.to_dict()["val_floor"] == pytest.approx(94.68)
    assert "| 0 | 0.01 | 0.009 | 94.50 | 0 | no |" in result.to_markdown()
    assert next_target(tries[:1], result.val_floor, 0.158, 0.1, 0.4) == pytest.approx((0.158 * 0.01) ** 0.5)


def test_a_reference_accuracy_raises_the_floor_of_a_run(tmp_path):
    plain = run(tmp_path / "plain")
    # the teacher labels the data itself (100 % on validation): a reference of 50 % raises the floor to 110 %
    strict = run(tmp_path / "strict", reference_accuracy=50.0)
    assert strict.val_floor == pytest.approx(110.0) and strict.best is None
    assert strict.score == strict.dense_score
    assert plain.best is not None
    with pytest.raises(ValueError, match="reference_accuracy"):
        run(tmp_path / "bad", reference_accuracy=0.0)


def test_bits_factorize_then_quantize_every_try(tmp_path):
    from factorch.layers import FactorizedLayer
    from factorch.layers.quantized import QuantizedLayer

    result = challenge(
        teacher(), data(), example_inputs=torch.zeros(1, 1, 12, 12), min_accuracy=60.0, out_dir=tmp_path,
        epochs=2, val_size=100, calib_samples=64, show_progress=False, bits=4, edge_bits=8,
        auto_options={"calib_samples": 64, "polish": 10, "refine": 0, "cache": False, "keep_edges": False},
    )  # fmt: skip
    assert json.loads((tmp_path / "challenge.json").read_text())["settings"]["methods"] == [
        "spatial-svd", "svd", "tucker2"
    ]  # fmt: skip
    done = [t for t in result.tries if t.status == "done"]
    assert done
    model = factorch.load(tmp_path / done[0].folder, base_model=teacher())
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}

    def edge(name):  # the first conv and the classifier, or their stages once factorized (keep_edges=False)
        return name.split(".")[0] in ("0", "8")

    assert any(edge(n) for n in quantized) and all(m.weight_bits == 8 for n, m in quantized.items() if edge(n))
    chains = [m for m in model.modules() if isinstance(m, FactorizedLayer)]
    assert chains and all(c.compressed_stages() for c in chains)
    assert all(m.weight_bits == 4 and m.act_bits == 4 for n, m in quantized.items() if not edge(n))
    assert done[0].score <= done[0].target * 1.01  # corrected for the quantized chains' float overhead
    with pytest.raises(ValueError, match="factorization methods"):
        challenge(teacher(), data(), example_inputs=torch.zeros(1, 1, 12, 12), min_accuracy=60.0,
                  out_dir=tmp_path / "bad", methods=["tucker2", "quant"], bits=4)  # fmt: skip
    with pytest.raises(ValueError, match="bit widths 2..8"):
        challenge(teacher(), data(), example_inputs=torch.zeros(1, 1, 12, 12), min_accuracy=60.0,
                  out_dir=tmp_path / "bad", bits=(4, 16))  # fmt: skip


def test_quantized_tries_distil_at_the_lower_learning_rate(tmp_path, monkeypatch):
    seen = spy_finetune(monkeypatch)
    run(tmp_path / "float")
    challenge(
        teacher(), data(), example_inputs=torch.zeros(1, 1, 12, 12), min_accuracy=60.0, out_dir=tmp_path / "q",
        epochs=1, val_size=100, calib_samples=64, show_progress=False, bits=8,
        auto_options={"calib_samples": 64, "polish": 10, "refine": 0, "cache": False},
    )  # fmt: skip
    lrs = [lr for lr, _, _ in seen]
    assert set(lrs[:-1]) == {0.01} and lrs[-1] == challenge_module.QUANTIZED_LR == 0.001


def test_channels_structure_prunes_then_distils_in_float_then_quantized(tmp_path, monkeypatch):
    from factorch.layers.quantized import QuantizedLayer

    seen = spy_finetune(monkeypatch)
    result = challenge(
        teacher(), data(), example_inputs=torch.zeros(1, 1, 12, 12), min_accuracy=60.0, out_dir=tmp_path,
        epochs=3, epochs_per_try=3, val_size=100, calib_samples=64, show_progress=False, bits=4, edge_bits=8,
        structure="channels", float_epochs=1, first=0.05,
    )  # fmt: skip
    (only,) = result.tries
    assert only.status == "done" and only.score <= only.target
    assert seen == [(challenge_module.FLOAT_LR, 1, "finetune-float"), (challenge_module.QUANTIZED_LR, 2, "finetune")]
    settings = json.loads((tmp_path / "challenge.json").read_text())["settings"]
    assert settings["structure"] == "channels" and settings["float_epochs"] == 1
    model = factorch.load(tmp_path / only.folder, base_model=teacher())
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    assert set(quantized) == {"0", "2", "4", "8"}  # every conv and the classifier, physically smaller
    assert quantized["0"].weight_bits == 8 and quantized["8"].weight_bits == 8
    assert quantized["2"].weight_bits == 4 and quantized["4"].act_bits == 4
    widths = [quantized[n].spec.out_channels for n in ("0", "2", "4")]
    assert sum(widths) < 16 + 32 + 32


def test_challenge_options_are_checked(tmp_path):
    kw = dict(example_inputs=torch.zeros(1, 1, 12, 12), min_accuracy=60.0, show_progress=False)
    with pytest.raises(ValueError, match="structure"):
        challenge(teacher(), data(), out_dir=tmp_path / "a", structure="prune", **kw)
    with pytest.raises(ValueError, match="needs bits"):
        challenge(teacher(), data(), out_dir=tmp_path / "b", epochs_per_try=2, float_epochs=1, **kw)
    with pytest.raises(ValueError, match="float_epochs"):
        challenge(teacher(), data(), out_dir=tmp_path / "c", epochs_per_try=2, float_epochs=2, bits=4, **kw)


def test_channels_model_is_the_largest_macs_fraction_meeting_the_score():
    from factorch.challenge import _channels_model, quantize_plan
    from factorch.complexity import resolve_rules

    torch.manual_seed(0)
    wide = nn.Sequential(
        nn.Conv2d(1, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()  # fmt: skip
    x, calib = torch.zeros(1, 1, 12, 12), torch.randn(32, 1, 12, 12)
    settings, rules = {"bits": [4, 4], "edge_bits": 8}, resolve_rules("effdl")

    def quantized_score(model):
        plan = quantize_plan(model, x, (4, 4), 8)
        return factorch.score(factorch.compress(model, plan, example_inputs=x, calib_data=calib)[0], x).score

    target = 0.4 * quantized_score(wide)
    pruned, why = _channels_model(wide, calib, x, target, settings, rules)
    # as close below the target as one channel of these widths allows (29 -> 30 channels moves it by 3 %)
    assert why == "" and 0.97 * target < quantized_score(pruned) <= target
    assert _channels_model(wide, calib, x, 1e-9, settings, rules)[0] is None


def test_factorized_tries_distil_in_float_before_quantizing(tmp_path, monkeypatch):
    seen = spy_finetune(monkeypatch)
    result = challenge(
        teacher(), data(), example_inputs=torch.zeros(1, 1, 12, 12), min_accuracy=60.0, out_dir=tmp_path,
        epochs=2, epochs_per_try=2, val_size=100, calib_samples=64, show_progress=False, bits=8, float_epochs=1,
        auto_options={"calib_samples": 64, "polish": 10, "refine": 0, "cache": False},
    )  # fmt: skip
    assert [t.status for t in result.tries] == ["done"]
    assert seen == [(challenge_module.FLOAT_LR, 1, "finetune-float"), (challenge_module.QUANTIZED_LR, 1, "finetune")]
