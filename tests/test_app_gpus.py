"""``--conf gpus``: parsed and checked against the visible GPUs, and handed by the trainer to the launcher.

This machine has no GPU: the settings are checked against a patched ``torch.cuda`` that reports two or
three GPUs, and the trainer's launcher call is redirected to the same launcher on two CPU processes (gloo),
which stand in for the GPUs, so the app's own training function runs distributed end to end.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "monailabel_app"))
import lib.trainers.ss_stylegan as trainer  # noqa: E402
from lib.configs.settings import AppSettings  # noqa: E402
from server_harness import TINY_CONF  # noqa: E402

import ss_stylegan.maps.lifecycle as lifecycle  # noqa: E402
from ss_stylegan.config import ConfigError  # noqa: E402
from ss_stylegan.data.synthetic import make_synthetic_datastore  # noqa: E402
from ss_stylegan.workspace import Workspace  # noqa: E402


def visible_gpus(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_unset_or_zero_is_one_device(tmp_path: Path) -> None:
    assert AppSettings.from_conf({}, tmp_path).gpus is None
    assert AppSettings.from_conf({"gpus": "0"}, tmp_path).gpus is None


@pytest.mark.parametrize(("value", "ids"), [("all", [0, 1]), ("2", [0, 1]), ("1", [0]), (" ALL ", [0, 1]), ("1,0", [1, 0])])
def test_gpus_name_the_visible_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str,
                                    ids: list[int]) -> None:
    visible_gpus(monkeypatch, 2)
    s = AppSettings.from_conf({"gpus": value}, tmp_path)
    assert s.gpus == ids and s.device == "cuda"


@pytest.mark.parametrize(
    ("gpus", "conf", "message"),
    [
        (2, {"gpus": "two"}, "gpus must be 'all', a number of GPUs, GPU ids such as 0,2, or 0"),
        (2, {"gpus": "-1"}, "gpus must be 'all'"),
        (2, {"gpus": "3"}, "visible GPUs are 0..1"),
        (2, {"gpus": "0,2"}, "visible GPUs are 0..1"),
        (2, {"gpus": "1,1"}, "each once"),
        (2, {"gpus": "all", "device": "cpu"}, "device is 'cpu'"),
        (0, {"gpus": "all"}, "device is 'cpu'"),
        (3, {"gpus": "all"}, "batch_size 32 is split over 3 GPUs .* multiple of 3"),
    ],
)
def test_bad_gpus_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpus: int,
                                   conf: dict[str, str], message: str) -> None:
    visible_gpus(monkeypatch, gpus)
    with pytest.raises(ConfigError, match=message):
        AppSettings.from_conf(conf, tmp_path)


def test_the_trainer_trains_on_the_gpus_of_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_launch = lifecycle.launch

    def launch(*args, gpus=None, device="cpu", **kwargs):  # type: ignore[no-untyped-def]
        calls.append(gpus)
        # no GPU here: the same launcher on as many CPU processes stands in for the GPUs
        return real_launch(*args, nproc=len(gpus), device="cpu", threads_per_process=1, **kwargs)

    monkeypatch.setattr(lifecycle, "launch", launch)
    studies = tmp_path / "studies"
    make_synthetic_datastore(studies, n_studies=2, n_slices=8, size=32, random_state=0)
    settings = dataclasses.replace(AppSettings.from_conf(TINY_CONF, studies), gpus=[0, 1])
    workspace = Workspace(settings.workspace)
    summary = trainer.run_training(workspace, studies, settings, settings.train_cfg, "cpu")
    assert calls == [[0, 1]]
    assert summary["phase"] == "done" and summary["step"] == settings.train_cfg.total_steps()
    assert len(workspace.load_map()) == summary["n_slices"]
