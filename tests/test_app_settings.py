"""``--conf`` parsing of the MONAI Label app (no server): defaults that work, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "monailabel_app"))
from lib.configs.settings import AppSettings, parse_train_request, train_config  # noqa: E402

from ss_stylegan.config import ConfigError  # noqa: E402
from ss_stylegan.labelling.validation import FieldError
from ss_stylegan.training.recipes import get_recipe


def test_defaults(tmp_path: Path) -> None:
    s = AppSettings.from_conf({}, tmp_path)
    assert s.classes == ["normal", "lesion"]
    assert s.device == "cpu" or s.device.startswith("cuda")
    assert s.workspace == tmp_path / ".ss_stylegan"
    recipe = get_recipe("cpu" if s.device == "cpu" else "gpu")   # the defaults are the library's recipe
    assert s.model_cfg == recipe.model() and s.slice_cfg.resolution == recipe.resolution
    assert s.train_cfg == recipe.train and s.perplexity == recipe.perplexity
    if s.device == "cpu":  # a CPU server trains the small model at 32x32 for half an hour, a map every 5 min
        assert s.preset == "small" and s.model_cfg.w_dim == 128 and s.model_cfg.resolution == 32
        assert s.train_cfg.max_minutes == 30.0 and s.train_cfg.milestone_minutes == 5.0
        assert s.train_cfg.batch_size == 16 and s.train_cfg.checkpoint_interval == 25
        assert s.train_cfg.rec_weight == 10.0 and s.train_cfg.channels_last
    else:  # a GPU server trains the paper-sized model
        assert s.preset == "default" and s.model_cfg.w_dim == 512
        assert s.train_cfg.kimg == 200.0 and s.train_cfg.total_steps() == 6250  # ceil(200k images / 32)


def test_time_budget_and_publishing_interval(tmp_path: Path) -> None:
    s = AppSettings.from_conf({"device": "cpu", "train_minutes": "90", "publish_minutes": "2.5"}, tmp_path)
    assert s.train_cfg.max_minutes == 90.0 and s.train_cfg.milestone_minutes == 2.5
    s = AppSettings.from_conf({"device": "cpu", "train_minutes": "none", "publish_minutes": "0"}, tmp_path)
    assert s.train_cfg.max_minutes is None and s.train_cfg.milestone_minutes is None   # kimg only, one map
    s = AppSettings.from_conf({"device": "cpu", "train_minutes": "auto", "resolution": "auto"}, tmp_path)
    assert s.train_cfg.max_minutes == 30.0 and s.model_cfg.resolution == 32
    for key in ("train_minutes", "publish_minutes"):
        with pytest.raises(ConfigError, match=f"--conf {key} must be a number of minutes >= 0"):
            AppSettings.from_conf({"device": "cpu", key: "-1"}, tmp_path)
        with pytest.raises(ConfigError, match=f"--conf {key} must be a float"):
            AppSettings.from_conf({"device": "cpu", key: "soon"}, tmp_path)
    # a training request may give a new budget (over all sessions), e.g. to train on after the first one
    assert parse_train_request({"minutes": 45}) == {"minutes": 45.0}
    assert train_config(s.train_cfg, {"minutes": 45.0}).max_minutes == 45.0


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
        ({"suggestion_cap": "0"}, "suggestion_cap must be >= 1"),
        ({"max_upload_mb": "-5"}, "max_upload_mb must be a whole number >= 1"),
        ({"max_upload_voxels": "many"}, "max_upload_voxels must be a int"),
        ({"background_class": "tumour"}, r"background_class must be one of the classes \['normal', 'lesion'\]"),
        ({"study_min_slices": "0"}, "study_min_slices must be >= 1"),
        ({"study_min_score": "2"}, "study_min_score must be between 0 and 1"),
    ],
)
def test_invalid_values_are_clear_errors(tmp_path: Path, conf: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AppSettings.from_conf(conf, tmp_path)


def test_study_rule_settings(tmp_path: Path) -> None:
    rule = AppSettings.from_conf({}, tmp_path).labelling().rule()
    assert (rule.background, rule.min_slices, rule.min_score) == ("normal", 1, 0.6)  # the measured defaults
    rule = AppSettings.from_conf({"classes": "clear,infection", "background_class": "clear", "study_min_slices": "3",
                                  "study_min_score": "0.8"}, tmp_path).labelling().rule()
    assert (rule.background, rule.min_slices, rule.min_score) == ("clear", 3, 0.8)


def test_security_settings(tmp_path: Path) -> None:
    s = AppSettings.from_conf({}, tmp_path)
    assert s.suggestion_cap == 32
    assert (s.upload_limits.max_bytes, s.upload_limits.max_unpacked_bytes) == (1024 << 20, 2048 << 20)
    assert s.upload_limits.max_voxels == 512 * 512 * 1024
    s = AppSettings.from_conf({"suggestion_cap": "5", "max_upload_mb": "2", "max_upload_unpacked_mb": "3",
                               "max_upload_voxels": "1000"}, tmp_path)
    assert s.suggestion_cap == 5 and s.upload_limits.max_bytes == 2 << 20
    assert s.upload_limits.max_unpacked_bytes == 3 << 20 and s.upload_limits.max_voxels == 1000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"kimg": True}, "kimg: must be a finite number, got bool"),
        ({"steps": 2.5}, "steps: must be an integer"),
        ({"batch_size": 0}, "batch_size: must be an integer >= 1"),
        ({"device": "x" * 50}, "device: is 50 characters long"),
        ({"lr": 0.1}, "lr: is not a known field"),
    ],
)
def test_training_requests_are_checked_strictly(body: dict, message: str) -> None:
    with pytest.raises(FieldError, match=message):
        parse_train_request(body)
    assert parse_train_request({"kimg": 2, "steps": 3, "batch_size": 4, "device": "cpu"}) == {
        "kimg": 2.0, "steps": 3, "batch_size": 4, "device": "cpu"}
