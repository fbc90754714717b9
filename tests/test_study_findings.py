"""A study's answer says where each finding is (``ss_stylegan.labelling.findings``), and how well a rule tells a
positive scan is measured (``ss_stylegan.evaluation.studies``); over HTTP on real files: a study whose lesion
spans a minority of its slices is answered positive with its runs, a clean one negative, an uploaded copy the
same, and ``export.csv?per=study`` has the same fields."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from server_harness import TINY_CONF, start_server
from trained_datastore import train_datastore

from ss_stylegan.data.synthetic import make_synthetic_study, read_sidecar_labels
from ss_stylegan.evaluation.studies import score_studies
from ss_stylegan.labelling.findings import (
    StudyRule,
    majority_class,
    study_findings,
    summary_text,
)

CLASSES = ("normal", "lesion")


def _findings(labels: list[str], scores: list[float] | None = None, rule: StudyRule | None = None,
              classes: tuple[str, ...] = CLASSES):
    rule = rule or StudyRule(classes[0], 2, 0.0)
    n = len(labels)
    scores = scores if scores is not None else [1.0] * n
    per_class = {c: np.array([s if label == c else 1 - s for label, s in zip(labels, scores)]) for c in classes}
    return study_findings(np.arange(n), labels, per_class, classes, rule, z=np.arange(n) * 2.5 - 10), rule


def test_a_minority_of_lesion_slices_is_positive_with_its_runs() -> None:
    labels = ["normal"] * 20
    for k in (5, 6, 7, 12):
        labels[k] = "lesion"
    (lesion,), rule = _findings(labels)
    assert majority_class(labels, CLASSES) == "normal"  # what a slice majority would answer
    assert lesion.positive and lesion.n_slices == 4
    assert [(r.first_slice, r.last_slice, r.n_slices) for r in lesion.runs] == [(5, 7, 3), (12, 12, 1)]
    assert lesion.runs[0].z_mm == (2.5, 7.5) and lesion.runs[0].peak_slice in (5, 6, 7)
    assert summary_text([lesion], rule) == "lesion in slices 5\u20137 and 12 (4 slices)"


def test_single_slices_and_low_scores_do_not_make_a_study_positive() -> None:
    labels = ["normal"] * 10
    labels[3] = labels[7] = "lesion"
    (lesion,), rule = _findings(labels)
    assert not lesion.positive and len(lesion.runs) == 2
    assert summary_text([lesion], rule) == ("normal: no lesion in 2 adjacent slices "
                                            "(below that: lesion in 2 slices)")
    labels[4] = "lesion"  # 3-4 adjacent, but slice 4 scores below the rule's score
    scores = [1.0] * 10
    scores[4] = 0.55
    (lesion,), _ = _findings(labels, scores, StudyRule("normal", 2, 0.6))
    assert not lesion.positive and [(r.first_slice, r.last_slice) for r in lesion.runs] == [(3, 3), (7, 7)]
    (lesion,), _ = _findings(labels, scores, StudyRule("normal", 2, 0.5))
    assert lesion.positive and lesion.runs[0].n_slices == 2 and lesion.runs[0].peak_slice == 3


def test_a_study_can_be_positive_for_several_classes() -> None:
    classes = ("normal", "benign", "malignant")
    labels = ["normal"] * 12
    labels[1:3] = ["benign"] * 2
    labels[8:11] = ["malignant"] * 3
    found, rule = _findings(labels, classes=classes)
    assert [(f.class_name, f.positive) for f in found] == [("benign", True), ("malignant", True)]
    assert summary_text(found, rule) == "benign in slices 1\u20132 (2 slices); malignant in slices 8\u201310 (3 slices)"
    found, rule = _findings(labels, classes=classes, rule=StudyRule("benign", 2, 0.0))
    assert [f.class_name for f in found] == ["normal", "malignant"]  # another background class


def test_a_rule_names_a_bad_setting() -> None:
    with pytest.raises(ValueError, match="background_class must be one of the classes"):
        StudyRule.of(CLASSES, "tumour")
    with pytest.raises(ValueError, match="study_min_slices must be >= 1"):
        StudyRule.of(CLASSES, min_slices=0)
    with pytest.raises(ValueError, match="study_min_score must be between 0 and 1"):
        StudyRule.of(CLASSES, min_score=1.5)


def test_study_level_rates_count_scans_not_slices() -> None:
    """Three scans: one with a minority of lesion slices (found), one clean, one lesion scan predicted clean."""
    labels = np.array([0] * 6 + [1] * 2 + [0] * 8 + [1] * 8)
    groups = np.array(["a"] * 8 + ["b"] * 8 + ["c"] * 8)
    y_pred = labels.copy()
    y_pred[16:24] = 0  # scan c missed
    scores = np.stack([1.0 - y_pred, y_pred.astype(float)], axis=1)
    result = score_studies(y_pred, scores, labels, groups, np.array([0, 8]), CLASSES)
    runs = result["all_scans"]["runs >= 2, score >= 0"]
    assert (runs["sensitivity"], runs["specificity"], runs["n_positive"], runs["n_negative"]) == (0.5, 1.0, 2, 1)
    assert result["all_scans"]["majority"]["sensitivity"] == 0.0  # scan a: 2 of 8 slices is not a majority
    assert result["unseen_scans"]["majority"]["n_positive"] == 1  # only c has no labelled slice


LESION = (4, 5, 6, 11)


@pytest.fixture(scope="module")
def findings_server(tmp_path_factory: pytest.TempPathFactory):
    """A trained datastore of real NIfTI files: a study whose lesion spans 4 of 16 slices, a clean study and
    two more; every slice of the first two labelled with its true class, so the map's 1-NN answers them."""
    tmp = tmp_path_factory.mktemp("findings")
    studies = tmp / "studies"
    studies.mkdir()
    make_synthetic_study(studies / "minority.nii.gz", n_slices=16, size=32, lesion_slices=list(LESION), random_state=1)
    make_synthetic_study(studies / "clean.nii.gz", n_slices=16, size=32, lesion_slices=[], random_state=2)
    for i in range(2):
        make_synthetic_study(studies / f"other_{i}.nii.gz", n_slices=16, size=32, random_state=3 + i)
    upload = tmp / "upload" / "minority_copy.nii.gz"
    upload.parent.mkdir()
    upload.write_bytes((studies / "minority.nii.gz").read_bytes())
    train_datastore(studies)
    with start_server(studies, TINY_CONF, log_path=tmp / "server.log") as server:
        for image in ("minority", "clean"):
            for k, label in enumerate(read_sidecar_labels(studies / f"{image}.nii.gz")):
                status, answer = server.request("PUT", "/slicelabels/", {"image": image, "slice": k,
                                                                         "class": CLASSES[int(label)]})
                assert status == 200, answer
        yield server, upload


def _classify_upload(server, path: Path) -> dict:  # type: ignore[no-untyped-def]
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(server.url + "/infer/classify", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def _runs(answer: dict) -> list[tuple[int, int]]:
    (lesion,) = answer["findings"]
    return [(r["first_slice"], r["last_slice"]) for r in lesion["runs"]]


@pytest.mark.server
def test_a_study_with_a_minority_of_lesion_slices_is_answered_positive(findings_server) -> None:  # type: ignore[no-untyped-def]
    server, _ = findings_server
    status, answer = server.request("POST", "/infer/classify?image=minority", {})
    assert status == 200, answer
    assert answer["summary"]["lesion"] == 4 and answer["summary"]["normal"] == 12  # a minority of the slices
    assert answer["positive"] == ["lesion"] and answer["volume_class"] == "lesion"
    assert _runs(answer) == [(4, 6), (11, 11)]
    run = answer["findings"][0]["runs"][0]
    assert run["n_slices"] == 3 and run["peak_slice"] in (4, 5, 6) and run["z_mm"][0] < run["z_mm"][1]
    assert answer["study_summary"] == "lesion in slices 4\u20136 and 11 (4 slices)"
    assert answer["study_rule"] == {"background": "normal", "min_slices": 1, "min_score": 0.6}  # the defaults


@pytest.mark.server
def test_a_clean_study_is_answered_negative(findings_server) -> None:  # type: ignore[no-untyped-def]
    server, _ = findings_server
    status, answer = server.request("POST", "/infer/classify?image=clean", {})
    assert status == 200, answer
    assert answer["positive"] == [] and answer["volume_class"] == "normal"
    assert answer["findings"] == [{"class": "lesion", "positive": False, "n_slices": 0, "runs": []}]
    assert answer["study_summary"] == "normal: no lesion in any slice with score >= 0.6"


@pytest.mark.server
def test_an_uploaded_study_gets_the_same_answer(findings_server) -> None:  # type: ignore[no-untyped-def]
    server, upload = findings_server
    answer = _classify_upload(server, upload)
    assert answer["positive"] == ["lesion"] and _runs(answer) == [(4, 6), (11, 11)]


@pytest.mark.server
def test_the_per_study_export_has_the_answer_fields(findings_server) -> None:  # type: ignore[no-untyped-def]
    server, _ = findings_server
    status, text = server.request("GET", "/slicelabels/export.csv?per=study")
    assert status == 200, text
    rows = {r["image"]: r for r in csv.DictReader(io.StringIO(text))}
    assert set(rows) == {"minority", "clean", "other_0", "other_1"}
    assert (rows["minority"]["class"], rows["minority"]["positive"], rows["minority"]["runs"]) == ("lesion", "True",
                                                                                                  "4-6;11-11")
    assert rows["minority"]["n_slices"] == "4" and rows["minority"]["study_summary"].startswith("lesion in slices")
    assert (rows["clean"]["positive"], rows["clean"]["runs"], rows["clean"]["n_slices"]) == ("False", "", "0")
    status, answer = server.request("GET", "/slicelabels/export.csv?per=scan")
    assert status == 422 and "per: must be 'slice'" in answer["detail"]
