"""The evaluation harness end to end on small synthetic data written to disk (npz and NIfTI)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ss_stylegan.evaluation.cli import main
from ss_stylegan.evaluation.datasets import EvaluationError, load_dataset
from ss_stylegan.evaluation.embedders import FixedEmbedder
from ss_stylegan.evaluation.grid import (
    ALL_CLASSIFIERS,
    FEATURE_SELECTIONS,
    MAP_SELECTIONS,
    method_name,
)
from ss_stylegan.evaluation.protocol import (
    paired_differences,
    run_protocol,
    score_selection,
)


def _synthetic(n_groups: int = 16, per_group: int = 6, res: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Two classes of CT-like slices: a disc (0) or a disc with a bright lesion (1), 6 slices per scan."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:res, :res]
    images, labels, groups = [], [], []
    for g in range(n_groups):
        label = g % 2
        cx, cy, r = res / 2 + rng.normal(0, 1.5), res / 2 + rng.normal(0, 1.5), res * rng.uniform(0.3, 0.4)
        for s in range(per_group):
            img = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r**2, 90.0, 10.0)
            if label:
                lx, ly = cx + rng.normal(0, 2), cy + rng.normal(0, 2)
                img = np.where((xx - lx) ** 2 + (yy - ly) ** 2 < (res * 0.12) ** 2, 230.0, img)
            images.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
            labels.append(label)
            groups.append(f"scan{g:02d}")
    return {"images": np.stack(images), "labels": np.array(labels), "groups": np.array(groups),
            "classes": np.array(["normal", "lesion"])}


def grid_methods(embedding: str) -> set[str]:
    """Every pipeline the evaluation's grid scores for one embedding."""
    return {method_name(embedding, sel, clf) for sel in MAP_SELECTIONS + FEATURE_SELECTIONS for clf in ALL_CLASSIFIERS}


def _check_outputs(out: Path, methods: set[str]) -> dict:
    for name in ("results.md", "results.json", "tsne_maps.png", "label_efficiency_unseen_groups.png",
                 "label_efficiency_all_unlabelled.png"):
        assert (out / name).stat().st_size > 500, name
    assert (out / "tsne_maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {r["method"] for r in result["summary"]} == methods
    assert "| k=4 | k=8 |" in (out / "results.md").read_text(encoding="utf-8")
    return result


def test_pca_path_on_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", **_synthetic())
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "data.npz"), "--out", str(out), "--no-gan", "--k", "4", "8",
                 "--repeats", "2", "--pca-components", "10", "--perplexity", "10", "--tsne-iter", "200"]) == 0
    result = _check_outputs(out, grid_methods("pixel_pca"))
    fps8 = next(r for r in result["summary"]
                if (r["method"], r["k"], r["scope"]) == ("pixel_pca + fps", 8, "all_unlabelled"))
    assert fps8["repeats"] == 2 and fps8["n_scored_mean"] == 96 - 8
    assert fps8["accuracy_mean"] > 0.9   # the lesion is a large, easy pixel-space signal
    # repeats x k x scopes x (the paper's 2 pipelines + 3 classifiers on each of fps / random
    # + 4 classifiers on each of the 4 selections in the whole embedding: fps_w, typiclust, probcover and the
    # server's typiclust)
    assert len(result["records"]) == 2 * 2 * 2 * (2 + 2 * 3 + 4 * 4)
    best = result["paired_best"]
    assert best and {r["baseline"] for r in best} == {best[0]["baseline"]}
    assert best[0]["baseline"].startswith("pixel_pca + ") and "own best pipeline" in \
        (out / "results.md").read_text(encoding="utf-8")
    # scans differ by class only through the lesion, so the nearest slice of another scan has the right class
    assert 0.7 < result["unseen_reference"]["pixel_pca"] <= 1.0   # chance: 0.5
    assert "## Reference for the unseen-scan scope" in (out / "results.md").read_text(encoding="utf-8")
    # study level: every (repeat, method, k) scored per scan by the majority and each runs rule
    study = [r for r in result["study_summary"] if (r["method"], r["k"], r["scope"]) == ("pixel_pca + fps", 8,
                                                                                         "all_scans")]
    assert {r["rule"] for r in study} >= {"majority", "runs >= 1, score >= 0.6"} and len(study) == 26
    assert all(r["repeats"] == 2 and 0.0 <= r["balanced_accuracy"] <= 1.0 for r in study)
    assert "Best runs rule for pixel_pca + fps" in (out / "studies.md").read_text(encoding="utf-8")


def test_the_first_fps_pick_can_be_chosen(tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", **_synthetic(n_groups=8))
    data = load_dataset(tmp_path / "data.npz")
    W = data.images.reshape(len(data.images), -1).astype(np.float32)
    tsne = {"perplexity": 10, "n_iter": 200}
    firsts = {}
    for start in ("random", "central", "farthest"):
        result = run_protocol(data, [FixedEmbedder("px", W)], (4,), repeats=1, tsne_params=tsne, fps_start=start)
        points, order = result["maps"]["px"], result["picks"]["px"]["fps"]
        from_centre = np.linalg.norm(points - points.mean(axis=0), axis=1)
        firsts[start] = (order[0], from_centre)
    assert firsts["central"][0] == int(np.argmin(firsts["central"][1]))
    assert firsts["farthest"][0] == int(np.argmax(firsts["farthest"][1]))
    assert len({int(f[0]) for f in firsts.values()}) == 3   # the same map and seed, three different first picks
    assert main(["--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "out"), "--no-gan", "--k", "4",
                 "--repeats", "1", "--perplexity", "10", "--tsne-iter", "200", "--fps-start", "central"]) == 0
    assert "FPS's first pick: central." in (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "out"), "--fps-start", "middle"])


def test_nifti_folder_matches_npz(tmp_path: Path) -> None:
    data = _synthetic(n_groups=4)
    for v in range(2):
        idx = np.arange(v * 12, (v + 1) * 12)
        nib.save(nib.Nifti1Image(np.moveaxis(data["images"][idx], 0, -1), np.eye(4)), tmp_path / f"vol{v}.nii.gz")
        slices = [{"slice": j, "label": int(data["labels"][i]), "group": str(data["groups"][i]), "npz_index": int(i)}
                  for j, i in enumerate(idx)]
        (tmp_path / f"vol{v}.json").write_text(json.dumps({"classes": ["normal", "lesion"], "slices": slices}), encoding="utf-8")
    ds = load_dataset(tmp_path)
    np.testing.assert_array_equal(ds.images, data["images"])
    np.testing.assert_array_equal(ds.labels, data["labels"])
    assert ds.classes == ["normal", "lesion"] and list(ds.groups) == list(data["groups"])
    assert load_dataset(tmp_path, resolution=16).images.shape == (24, 16, 16)
    (tmp_path / "vol1.json").unlink()
    with pytest.raises(EvaluationError, match="sidecar"):
        load_dataset(tmp_path)


def test_honest_scope_excludes_groups_with_a_label() -> None:
    points = np.array([[0.0], [0.1], [5.0], [5.1], [10.0], [10.1]])
    labels = np.array([0, 0, 1, 1, 1, 1])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    out = score_selection(points, labels, groups, np.array([0, 2]), 2)
    assert out["all_unlabelled"]["n"] == 4 and out["all_unlabelled"]["accuracy"] == 1.0
    assert out["unseen_groups"]["n"] == 2   # only group c has no labelled slice


def test_chance_level_is_the_majority_class_of_the_labels() -> None:
    points = np.arange(8, dtype=float)[:, None]
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    # labels 0, 0, 1: the majority answer is class 0
    out = score_selection(points, labels, groups, np.array([0, 1, 3]), 2)
    assert out["all_unlabelled"]["majority_accuracy"] == pytest.approx(1 / 5)     # one 0 among 2,4,5,6,7
    assert out["unseen_groups"]["majority_accuracy"] == 0.0                      # groups c, d: all class 1
    # a tie (one label each) answers the lower class index
    out = score_selection(points, labels, groups, np.array([0, 7]), 2)
    assert out["all_unlabelled"]["majority_accuracy"] == pytest.approx(2 / 6)


def test_paired_differences_compare_repeat_by_repeat() -> None:
    def rec(method: str, repeat: int, acc: float, k: int = 10, scope: str = "all_unlabelled") -> dict:
        return {"method": method, "repeat": repeat, "k": k, "scope": scope, "accuracy": acc}

    base = [rec("pixel_pca + fps", i, a) for i, a in enumerate([0.60, 0.70, 0.80])]
    w = [rec("w + fps", i, a) for i, a in enumerate([0.65, 0.70, 0.90])]
    rows = paired_differences(base + w)
    assert len(rows) == 1 and rows[0]["method"] == "w + fps" and rows[0]["repeats"] == 3
    d = np.array([0.05, 0.0, 0.10])
    assert rows[0]["diff_mean"] == pytest.approx(d.mean())
    assert rows[0]["diff_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert rows[0]["wins"] == 2            # a tie is not a win
    # the baseline may come from another run of the same seeds (an anytime stage against the main run)
    assert paired_differences(w, baseline=base) == rows
    # a repeat, k or scope the baseline lacks is left out, and no baseline at all gives no rows
    assert paired_differences(base + w + [rec("w + fps", 0, 0.5, k=20)]) == rows
    assert paired_differences(w) == []


def test_gan_path_tiny(tmp_path: Path) -> None:
    pytest.importorskip("ss_stylegan.training")
    from ss_stylegan.config import ModelConfig

    np.savez(tmp_path / "data.npz", **_synthetic(n_groups=8))
    out = tmp_path / "out"
    model = json.dumps(ModelConfig.tiny(32).to_dict())
    assert main(["--data", str(tmp_path / "data.npz"), "--out", str(out), "--k", "4", "8", "--repeats", "2",
                 "--model-config", model, "--steps", "12", "--batch-size", "8", "--perplexity", "10",
                 "--tsne-iter", "200"]) == 0
    result = _check_outputs(out, grid_methods("ss_stylegan") | grid_methods("pixel_pca") | grid_methods("combined"))
    assert result["meta"]["embeddings"]["combined"] == {"of": ["ss_stylegan", "pixel_pca"], "each": "standardised"}
    info = result["meta"]["embeddings"]["ss_stylegan"]
    assert info["retrained_per_repeat"] is False and len(info["train_seconds"]) == 1
    emb = np.load(out / "embeddings_repeat0.npz")["embeddings"]
    assert emb.shape == (48, 32) and np.isfinite(emb).all()
    # the saved embeddings can be reused without training
    out2 = tmp_path / "out2"
    assert main(["--data", str(tmp_path / "data.npz"), "--out", str(out2), "--k", "4", "8", "--repeats", "1",
                 "--embeddings", str(out / "embeddings_repeat0.npz"), "--perplexity", "10", "--no-grid"]) == 0
    assert json.loads((out2 / "results.json").read_text(encoding="utf-8"))["meta"]["embeddings"]["ss_stylegan"]["kind"].startswith(
        "precomputed")
    # a trained model reused with --model-dir is described by how it was trained, not by this run's flags
    out3 = tmp_path / "out3"
    assert main(["--data", str(tmp_path / "data.npz"), "--out", str(out3), "--k", "4", "8", "--repeats", "1",
                 "--model-config", model, "--model-dir", str(out / "gan"), "--train-config", '{"seed": 5}',
                 "--perplexity", "10", "--tsne-iter", "200", "--no-grid"]) == 0
    assert json.loads((out3 / "results.json").read_text(encoding="utf-8"))["meta"]["grid"] is False
    reused = json.loads((out3 / "results.json").read_text(encoding="utf-8"))["meta"]["embeddings"]["ss_stylegan"]
    assert reused["model_dir"] == str(out / "gan") and reused["train"]["seed"] == 0
    assert reused["train"]["batch_size"] == 8 and reused["model_versions"] == info["model_versions"]


def test_anytime_evaluation_scores_every_stage(tmp_path: Path) -> None:
    """--recipe tiny with --eval-every-kimg: one training, a scored map per stage, the baseline of the same run."""
    np.savez(tmp_path / "data.npz", **_synthetic(n_groups=8))
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "data.npz"), "--out", str(out), "--recipe", "tiny", "--k", "4", "8",
                 "--repeats", "2", "--steps", "12", "--eval-every-kimg", "0.016", "--perplexity", "10",
                 "--tsne-iter", "200"]) == 0
    anytime = json.loads((out / "anytime.json").read_text(encoding="utf-8"))
    stages = anytime["stages"]
    # tiny recipe: batch 4, so a stage every 4 steps (16 images): steps 4 and 8, then the final step 12
    assert [s["step"] for s in stages] == [4, 8, 12] and [s["final"] for s in stages] == [False, False, True]
    assert [round(s["kimg"], 3) for s in stages] == [0.016, 0.032, 0.048]
    assert all(b["minutes"] >= a["minutes"] for a, b in zip(stages, stages[1:]))
    # the stages before the end were also kept on disk as they came (a long run cut short keeps them)
    partial = json.loads((out / "anytime_stages.json").read_text(encoding="utf-8"))["stages"]
    assert [s["step"] for s in partial] == [4, 8]
    assert [s["model_version"] for s in partial] == [s["model_version"] for s in stages[:2]]
    assert [[r["accuracy_mean"] for r in s["summary"]] for s in partial] == \
        [[r["accuracy_mean"] for r in s["summary"]] for s in stages[:2]]
    for st in stages:   # each stage: every pipeline of the grid, both k, both scopes
        assert {(r["method"], r["k"], r["scope"]) for r in st["summary"]} == {
            (method, k, scope) for method in grid_methods("ss_stylegan") for k in (4, 8)
            for scope in ("all_unlabelled", "unseen_groups")}
    assert {r["method"] for r in anytime["baseline"]} == grid_methods("pixel_pca")
    # the final stage is the main run's own result (same seeds), so the two agree exactly
    main_rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["summary"]
    final = {(r["method"], r["k"], r["scope"]): r["accuracy_mean"] for r in stages[-1]["summary"]}
    assert all(final[(r["method"], r["k"], r["scope"])] == r["accuracy_mean"] for r in main_rows
               if r["method"].startswith("ss_stylegan"))
    md = (out / "anytime.md").read_text(encoding="utf-8")
    assert "| pixel_pca (baseline) | – | – |" in md and "| ss_stylegan (final) |" in md
    # every stage is compared with pixel PCA + FPS repeat by repeat, and the chance level is shown
    for st in stages:
        assert {(r["method"], r["k"], r["scope"]) for r in st["paired"]} == {
            (method, k, scope) for method in grid_methods("ss_stylegan") for k in (4, 8)
            for scope in ("all_unlabelled", "unseen_groups")}
        # (a repeat whose picks leave no unseen scan has no score there, so fewer repeats are compared)
        assert all(1 <= r["repeats"] <= 2 and 0 <= r["wins"] <= r["repeats"] for r in st["paired"])
    final_paired = {(r["method"], r["k"], r["scope"]): r["diff_mean"]
                    for r in json.loads((out / "results.json").read_text(encoding="utf-8"))["paired"]
                    if r["method"].startswith("ss_stylegan")}
    assert {(r["method"], r["k"], r["scope"]): r["diff_mean"] for r in stages[-1]["paired"]} == final_paired
    assert "Accuracy minus pixel_pca + fps, paired by repeat" in md and "| chance: majority class" in md
    assert "ss_stylegan + fps, 0.02 kimg |" in md
    # the unseen-scan reference of each stage's map (cross-scan 1-NN in 2-D), and of the baseline's
    assert all(0.0 <= st["diagnostics"]["map_unseen_reference"] <= 1.0 for st in stages)
    assert 0.0 <= anytime["baseline_diagnostics"]["pixel_pca"]["map_unseen_reference"] <= 1.0
    assert "map unseen reference" in md
    assert (out / "anytime_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = anytime["meta"]["embeddings"]["ss_stylegan"]
    assert info["model"]["channel_max"] == 32 and anytime["meta"]["recipe"] == "tiny"


def test_diagnostics_separate_scan_identity_from_class_signal() -> None:
    from ss_stylegan.evaluation.diagnostics import (
        cross_group_nn_accuracy,
        linear_probe,
        same_group_neighbours,
    )

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 10).astype(str)
    labels = np.repeat(np.arange(20) % 2, 10)
    scan = rng.normal(0, 5, (20, 8))[np.repeat(np.arange(20), 10)]          # tight per-scan clusters
    E_scan = scan + rng.normal(0, 0.1, scan.shape)
    E_class = np.c_[labels * 3.0 + rng.normal(0, 0.5, 200), rng.normal(0, 1, (200, 7))]   # class, no scan
    assert same_group_neighbours(E_scan, groups, k=5) > 0.95 and same_group_neighbours(E_class, groups, k=5) < 0.3
    assert cross_group_nn_accuracy(E_class, labels, groups) > 0.9
    assert 0.2 < cross_group_nn_accuracy(E_scan, labels, groups) < 0.8      # scans carry no class here
    assert linear_probe(E_class, labels, groups) > 0.9 and linear_probe(E_scan, labels, groups) < 0.75
