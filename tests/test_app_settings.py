"""``--conf`` parsing of the MONAI Label app (no server): defaults that work, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "monailabel_app"))
from lib.configs.settings import AppSettings  # noqa: E402

from ss_stylegan.config import ConfigError  # noqa: E402


def test_defaults(tmp_path: Path) -> None:
    s = AppSettings.from_conf({}, tmp_path)
    assert s.classes == ["normal", "lesion"]
    assert s.slice_cfg.resolution == 64 and s.model_cfg.resolution == 64
    assert s.device == "cpu" or s.device.startswith("cuda")
    assert s.workspace == tmp_path / ".ss_stylegan"
    if s.device == "cpu":  # a CPU server trains the small model for minutes
        assert s.preset == "small" and s.model_cfg.w_dim == 128
        assert s.train_cfg.kimg == 3.0 and s.train_cfg.batch_size == 16 and s.train_cfg.total_steps() == 188
        assert s.train_cfg.checkpoint_interval == 25
    else:  # a GPU server trains the paper-sized model
        assert s.preset == "default" and s.model_cfg.w_dim == 512
        assert s.train_cfg.kimg == 200.0 and s.train_cfg.total_steps() == 6250  # ceil(200k images / 32)


def test_cpu_defaults_can_be_overridden_one_by_one(tmp_path: Path) -> None:
    s = AppSettings.from_conf({"device": "cpu", "preset": "default", "kimg": "50"}, tmp_path)
    assert s.model_cfg.w_dim == 512 and s.train_cfg.kimg == 50.0 and s.train_cfg.batch_size == 16
    s = AppSettings.from_conf({"device": "cpu", "batch_size": "8", "checkpoint_interval": "auto"}, tmp_path)
    assert s.preset == "small" and s.train_cfg.batch_size == 8 and s.train_cfg.checkpoint_interval == 25


def test_values_parsed_into_typed_settings(tmp_path: Path) -> None:
    s = AppSettings.from_conf({
        "classes": "healthy, covid ,other", "resolution": "32", "preset": "tiny", "window": "-600:1500",
        "steps": "7", "batch_size": "4", "perplexity": "12.5", "device": "cpu", "server_mode": "true",
    }, tmp_path)
    assert s.classes == ["healthy", "covid", "other"]
    assert s.model_cfg.w_dim == 32 and s.model_cfg.resolution == 32
    assert (s.slice_cfg.window, s.slice_cfg.window_center, s.slice_cfg.window_width) == ("custom", -600.0, 1500.0)
    assert s.train_cfg.total_steps() == 7 and s.train_cfg.batch_size == 4
    assert s.perplexity == 12.5


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"resolution": "48"}, "resolution must be one of"),
        ({"classes": "normal"}, "at least two classes"),
        ({"classes": "a,a"}, "distinct"),
        ({"kimg": "lots"}, "kimg must be a float"),
        ({"batch_size": "0"}, "batch_size must be >= 1"),
        ({"preset": "huge"}, "preset must be one of"),
        ({"device": "tpu"}, "device must be"),
        ({"perplexity": "-1"}, "perplexity must be > 0"),
        ({"window": "spleen"}, "window"),
        ({"devcie": "cpu"}, "unknown --conf setting"),
    ],
)
def test_invalid_values_are_clear_errors(tmp_path: Path, conf: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AppSettings.from_conf(conf, tmp_path)
