import pytest
import torch
from torch import nn

import factorch
from factorch.calibrate import CalibrationConfig, calibrate_
from factorch.config import MethodConfig
from factorch.layers import layer_class

QUIET = dict(progress=False)


def corrupt_last_stage(layer):
    last = list(layer.children())[-1]
    with torch.no_grad():
        last.weight.add_(0.3 * torch.randn_like(last.weight) * last.weight.std())
        if last.bias is not None:
            last.bias.add_(0.5)


@pytest.mark.parametrize(
    "method, dense, rank, shape",
    [
        ("svd", nn.Linear(12, 9), 9, (40, 12)),
        ("svd", nn.Conv1d(6, 8, 3, stride=2, padding=2, dilation=2, padding_mode="circular"), 8, (20, 6, 15)),
        ("tucker2", nn.Conv2d(8, 10, 3, padding="same", groups=2), (5, 4), (12, 8, 7, 7)),
        (
            "spatial-svd",
            nn.Conv2d(6, 8, (3, 2), stride=(2, 1), padding=(1, 2), padding_mode="reflect", groups=2),
            8,
            (12, 6, 9, 8),
        ),
        ("spatial-svd", nn.Conv2d(4, 6, 3, padding=1, padding_mode="replicate"), 12, (12, 4, 6, 6)),
        ("cp", nn.Conv2d(4, 6, 3, padding=1, bias=True), 36, (12, 4, 6, 6)),
    ],
)
def test_full_rank_layer_with_a_corrupted_last_stage_is_recovered(method, dense, rank, shape):
    """The last stage is solved in closed form, so at full rank the dense responses come back exactly."""
    torch.manual_seed(0)
    dense = dense.double().eval()
    cls = layer_class(method, dense)
    layer = cls.from_dense(dense, rank, **({"n_iter_max": 200} if method == "cp" else {})).double()
    model, ref = nn.Sequential(layer), nn.Sequential(dense)
    corrupt_last_stage(layer)
    x = torch.randn(*shape, dtype=torch.float64)
    before = float((model(x) - ref(x)).norm() / ref(x).norm())
    report = calibrate_(model, ref, x, config=CalibrationConfig(nonlinear=False, ridge=0.0, **QUIET))
    after = float((model(x) - ref(x)).norm() / ref(x).norm())
    row = report.layers[0]
    assert row.skipped is None and row.rel_error_before == pytest.approx(before, rel=1e-6)
    # CP's first stages are fitted, not exact, so only its best linear fit is guaranteed
    assert after < (1e-8 if method != "cp" else before * 0.5)


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 48, 3, padding=1),
        nn.BatchNorm2d(48),
        nn.ReLU(inplace=True),
        nn.Conv2d(48, 48, 3, padding=1),
        nn.BatchNorm2d(48),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(48, 5),
    ).eval()


def smooth_images(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 10, 10, generator=g)
    return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)  # correlated pixels, like images


def test_calibration_lowers_the_network_error_on_held_out_data():
    dense = tiny_cnn()
    for m in dense.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    calib, held_out = smooth_images(128, 1), smooth_images(64, 2)
    cfg = factorch.Tucker2Config(rank=0.3)
    plain, _ = factorch.compress(dense, cfg, example_inputs=calib[:1])
    cal_cfg = factorch.Tucker2Config(rank=0.3, calibrate=CalibrationConfig(n_samples=128, **QUIET))
    calibrated, report = factorch.compress(dense, cal_cfg, example_inputs=calib[:1], calib_data=calib)

    def err(m):
        with torch.no_grad():
            return float((m(held_out) - dense(held_out)).norm() / dense(held_out).norm())

    assert err(calibrated) < 0.8 * err(plain)
    rows = report.totals["calibration"]["layers"]
    assert [r["name"] for r in rows] == ["3", "6"]  # the first conv stays dense
    assert all(r["nonlinearity"] == "BatchNorm2d -> ReLU" for r in rows)
    assert all(r["act_error_after"] <= r["act_error_before"] for r in rows)
    assert all(r["rel_error_linear"] <= r["rel_error_before"] for r in rows)
    done = [r for r in report.layers if r.skipped is None]
    assert all(r.output_error is not None for r in done)


def test_calibration_follows_autoconfig_and_keeps_the_target():
    dense = tiny_cnn()
    calib = smooth_images(64, 3)
    cfg = factorch.AutoConfig(
        "macs=0.5",
        methods=("tucker2", "svd"),
        levels=(0.2, 0.5, 0.8),
        measure=False,
        progress=False,
        calibrate=CalibrationConfig(n_samples=64, **QUIET),
    )
    out, report = factorch.compress(dense, cfg, example_inputs=calib[:1], calib_data=calib)
    assert report.totals["macs_ratio"] <= 0.5
    assert report.totals["calibration"]["n_samples"] == 64
    assert report.to_dict()["config"]["calibrate"]["n_samples"] == 64


def test_calibrate_setting_round_trips_and_validates():
    cfg = factorch.CPConfig(rank=4, calibrate=CalibrationConfig(n_samples=64, nonlinear=False))
    back = MethodConfig.from_dict(cfg.to_dict())
    assert back == cfg and back.calibrate.n_samples == 64
    assert factorch.SVDConfig(rank=2, calibrate=256).calibrate == CalibrationConfig(n_samples=256)
    with pytest.raises(ValueError, match="n_samples"):
        CalibrationConfig(n_samples=0)
    with pytest.raises(TypeError, match="calibrate must be"):
        factorch.SVDConfig(rank=2, calibrate="lots")


def test_calibration_needs_data_and_data_needs_calibration():
    dense, x = tiny_cnn(), smooth_images(8, 0)
    with pytest.raises(ValueError, match="needs calib_data"):
        factorch.compress(dense, factorch.SVDConfig(rank=0.5, calibrate=8), example_inputs=x[:1])
    with pytest.raises(ValueError, match="calib_data is used for calibration"):
        factorch.compress(dense, factorch.SVDConfig(rank=0.5), example_inputs=x[:1], calib_data=x)


def test_unknown_layer_name_is_an_error():
    dense, x = tiny_cnn(), smooth_images(8, 0)
    model, _ = factorch.compress(dense, factorch.SVDConfig(rank=0.5), example_inputs=x[:1])
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        calibrate_(model, dense, x, layers=["nope"], config=CalibrationConfig(**QUIET))
