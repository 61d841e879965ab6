"""``backdoorlearn audit`` and ``backdoorlearn.audit``: verdicts on model files, the reports, bad input.

The model files are written here from the digits benchmark's backdoored and clean nets (target
label 0); the ground truth only checks the answer.
"""

import base64
import hashlib
import html.parser
import json
import re
import warnings

import numpy as np
import pytest
import torch

from backdoorlearn.audit import audit_model
from backdoorlearn.cli import main

ARCH = "backdoorlearn.models:SmallCNN"
ARCH_KWARGS = '{"in_channels": 1, "n_classes": 10, "channels": [16, 32], "hidden": 64, "pooled_size": 4}'


def defender_data(bench, n=400):
    """The hold-out topped up with clean training images (as tests/test_neural_cleanse.py does)."""
    extra = np.flatnonzero(~bench.poison_mask)[: max(0, n - len(bench.X_holdout))]
    return (np.concatenate([bench.X_holdout, bench.X_train[extra]]),
            np.concatenate([bench.y_holdout, bench.y_train_clean[extra]]))


def write_torchscript(net, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning, torch's TorchScript deprecation notice
        torch.jit.trace(net.module_.eval(), torch.zeros(1, 1, 8, 8)).save(str(path))
    return path


def write_state_dict(net, path):
    torch.save(net.module_.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def files(digits_bench, tmp_path_factory):
    d = tmp_path_factory.mktemp("audit-files")
    X, y = defender_data(digits_bench)
    np.savez(d / "clean.npz", X=X, y=y)
    np.savez(d / "holdout.npz", X=digits_bench.X_holdout, y=digits_bench.y_holdout)
    return dict(
        dir=d, clean=d / "clean.npz", holdout=d / "holdout.npz",
        bd_script=write_torchscript(digits_bench.backdoored_model, d / "backdoored.ts.pt"),
        bd_state=write_state_dict(digits_bench.backdoored_model, d / "backdoored.pt"),
        clean_script=write_torchscript(digits_bench.clean_model, d / "clean.ts.pt"),
        clean_state=write_state_dict(digits_bench.clean_model, d / "clean.pt"),
    )


def _audit(args, capsys):
    code = main(["audit", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def verdict_labels(stdout):
    """The target labels the verdict line names: "Verdict: BACKDOOR FOUND, target label(s) 0, 8 (...)"."""
    line = next(line for line in stdout.splitlines() if line.startswith("Verdict: BACKDOOR FOUND"))
    return [int(v) for v in re.match(r"Verdict: BACKDOOR FOUND, target labels? ([\d, ]+) \(", line).group(1).split(",")]


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.urls = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if tag == "img" and key == "src":
                self.images.append(value)
            elif key in ("src", "href", "srcset", "action", "data", "poster") or "url(" in (value or ""):
                self.urls.append(value)


def check_html(path, n_figures):
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert not page.urls, page.urls  # no attribute points anywhere, so it opens with no network
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert len(page.images) == n_figures
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    return text


def test_backdoored_torchscript_exit_1_names_the_target(files, tmp_path, capsys, digits_bench):
    out = tmp_path / "report"
    code, stdout, _ = _audit([files["bd_script"], "--data", files["holdout"], "--nc-steps", 40, "--out", out],
                             capsys)
    assert code == 1
    assert verdict_labels(stdout)[0] == digits_bench.target_label
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "backdoor found" and report["exit_status"] == 1
    assert report["flagged_labels"][0] == digits_bench.target_label
    assert report["model"]["kind"] == "torchscript"
    assert report["model"]["sha256"] == hashlib.sha256(files["bd_script"].read_bytes()).hexdigest()
    assert report["data"]["n_used"] == len(digits_bench.X_holdout) and report["data"]["labelled"]
    nc = report["neural_cleanse"]
    assert nc["labels"] == list(range(10)) and nc["mode"] == "full" and nc["steps"] == 40
    assert np.argmin(nc["l1_norms"]) == digits_bench.target_label
    t = digits_bench.target_label
    assert nc["decision_rule"] == "log-mad" and nc["decision_threshold"] == 3.5
    assert nc["decision_scores"][t] > nc["decision_threshold"]
    # the norm thresholds state the same decision in the norms' units
    below = np.asarray(nc["l1_norms"]) < np.asarray(nc["norm_thresholds"])
    assert np.flatnonzero(below).tolist() == sorted(report["flagged_labels"])
    assert nc["anomaly_index"] == pytest.approx(nc["anomaly_indices"][int(np.argmin(nc["l1_norms"]))])
    assert report["command"][:3] == ["backdoorlearn", "audit", str(files["bd_script"])]
    assert report["environment"]["torch"] == torch.__version__
    with np.load(out / "triggers.npz") as triggers:
        masks = triggers["masks"]
        assert triggers["labels"].tolist() == list(range(10)) and masks.shape == (10, 1, 8, 8)
    np.testing.assert_allclose(np.abs(masks).sum(axis=(1, 2, 3)), nc["l1_norms"], rtol=1e-4)
    # reversed triggers, L1 norms, anomaly indices
    check_html(out / "report.html", n_figures=3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchscript", "state_dict"])
def test_clean_model_exit_0(files, tmp_path, capsys, kind):
    # Neural Cleanse's default 100 steps on 400 clean images: the setting tests/test_neural_cleanse.py
    # checks the clean digits model against.
    extra = ["--arch", ARCH, "--arch-kwargs", ARCH_KWARGS] if kind == "state_dict" else []
    model = files["clean_state" if kind == "state_dict" else "clean_script"]
    code, stdout, _ = _audit([model, "--data", files["clean"], *extra, "--out", tmp_path / "r"], capsys)
    assert code == 0, stdout
    assert "Verdict: no backdoor found" in stdout
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["backdoor_detected"] is False and report["flagged_labels"] == []
    nc = report["neural_cleanse"]
    assert max(v for v in nc["decision_scores"] if v is not None) <= nc["decision_threshold"]


@pytest.mark.slow
def test_backdoored_state_dict_with_strip_and_repair(files, tmp_path, capsys, digits_bench):
    out = tmp_path / "r"
    code, stdout, _ = _audit([files["bd_state"], "--data", files["clean"], "--arch", ARCH, "--arch-kwargs",
                              ARCH_KWARGS, "--out", out, "--strip", "--strip-perturbations", 32,
                              "--repair", "fine-pruning"], capsys)
    target = digits_bench.target_label
    assert code == 1 and verdict_labels(stdout)[0] == target
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["arch"] == ARCH and report["model"]["arch_kwargs"]["channels"] == [16, 32]
    strip = report["strip"]
    assert len(strip["benign_scores"]) == 400 and strip["reversed_trigger"]["label"] == target
    # STRIP flags most clean images carrying the backdoor's reversed trigger.
    assert strip["reversed_trigger"]["flagged_rate"] > 0.5
    repair = report["repair"]
    assert repair["n_fit"] == 320 and repair["n_eval"] == 80
    success = {t["label"]: t for t in repair["reversed_trigger_success"]}[target]
    assert success["before"] > 0.9 and success["after"] < 0.2
    assert repair["clean_accuracy_after"] > 0.85
    # The repaired weights reload into the same architecture and remove the real trigger too.
    from backdoorlearn.metrics import attack_success_rate
    from backdoorlearn.models import ModelAdapter, load_model

    repaired = load_model(out / "repaired.pt", arch=ARCH, arch_kwargs=ARCH_KWARGS)
    pred = ModelAdapter(repaired).predict(digits_bench.X_test_triggered)
    assert attack_success_rate(digits_bench.y_test, pred, target) < 0.2
    # reversed triggers, L1 norms, anomaly indices, STRIP histogram, repair bars, pruning curve
    text = check_html(out / "report.html", n_figures=6)
    assert "STRIP calibration" in text and "Repair: fine-pruning" in text


def test_audit_model_from_python_returns_the_report(digits_bench):
    report = audit_model(digits_bench.backdoored_model, digits_bench.X_holdout, nc_steps=40)
    assert report["flagged_labels"][0] == digits_bench.target_label
    assert report["data"]["labelled"] is False and report["clean_accuracy"] is None
    assert report["model"]["type"] == "SmallCNN" and report["files"] is None
    json.dumps(report, allow_nan=False)  # strict JSON


def test_the_papers_rule_on_request(digits_bench):
    report = audit_model(digits_bench.backdoored_model, digits_bench.X_holdout, nc_steps=20, decision_rule="mad")
    nc = report["neural_cleanse"]
    assert nc["decision_rule"] == "mad" and nc["decision_threshold"] == 2.0
    norms = np.asarray(nc["l1_norms"])
    assert nc["norm_thresholds"] == pytest.approx([nc["median_l1_norm"] - 2.0 * nc["mad"]] * len(norms))
    paper = np.flatnonzero((norms < nc["median_l1_norm"]) & (np.asarray(nc["anomaly_indices"]) > 2.0))
    assert sorted(report["flagged_labels"]) == paper.tolist()
    assert report["settings"]["decision_rule"] == "mad"


def test_many_labels_use_the_fast_mode():
    from backdoorlearn.models import SmallCNN

    X = np.random.default_rng(0).random((60, 1, 8, 8), dtype=np.float32)
    report = audit_model(SmallCNN(1, 21), X, np.arange(60) % 21, nc_steps=2)
    assert report["neural_cleanse"]["mode"] == "fast"
    assert len(report["neural_cleanse"]["labels"]) == 21


def test_probabilities_are_warned_about():
    from torch import nn

    from backdoorlearn.models import SmallCNN

    model = nn.Sequential(SmallCNN(1, 4), nn.Softmax(dim=1))
    X = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)
    report = audit_model(model, X, np.arange(30) % 4, nc_steps=2)
    assert any("probabilities" in w for w in report["warnings"])


def test_unlabelled_data_the_model_puts_in_one_label():
    from backdoorlearn.models import SmallCNN

    X = np.zeros((10, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="predicts label . for all 10 images of X, and they have no labels"):
        audit_model(SmallCNN(1, 4), X, nc_steps=2)


def test_hackml_deepid_h5(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    from test_model_io import keras_weights, write_weights_h5

    model = write_weights_h5(tmp_path / "bd_weights.h5", keras_weights(n_classes=4))
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "clean_validation_data.h5", "w") as f:  # the challenge's layout: 0-255, NCHW
        f.create_dataset("data", data=rng.integers(0, 256, size=(12, 3, 55, 47)).astype(np.float32))
        f.create_dataset("label", data=np.arange(12, dtype=np.float64) % 4)
    out = tmp_path / "r"
    code, stdout, _ = _audit([model, "--data", tmp_path / "clean_validation_data.h5", "--nc-steps", 2,
                              "--out", out], capsys)
    assert code in (0, 1), stdout
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["kind"] == "hdf5" and report["model"]["type"] == "DeepID"
    assert report["model"]["n_classes"] == 4 and report["model"]["input_shape"] == [3, 55, 47]
    assert report["data"]["kind"] == "CSAW HackML .h5 file" and report["data"]["value_range"][1] <= 1
    check_html(out / "report.html", n_figures=3)


# ---------------------------------------------------------------------- bad input: exit 2, nothing written
def _fails(args, capsys, tmp_path, message):
    out = tmp_path / "never"
    code, stdout, stderr = _audit([*args, "--out", out], capsys)
    assert code == 2, (stdout, stderr)
    assert message in stderr, stderr
    assert stderr.startswith("backdoorlearn audit: error: ")
    assert "Traceback" not in stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]  # no staging folder left
    return stderr


def test_unsupported_model_file(files, tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07\x12\x04onnx not really")
    _fails([bad, "--data", files["holdout"]], capsys, tmp_path, "is not a model file of a supported kind")
    _fails([files["clean"], "--data", files["holdout"]], capsys, tmp_path, "looks like a numpy .npz archive")


def test_architecture_that_does_not_match_the_state_dict(files, tmp_path, capsys):
    err = _fails([files["bd_state"], "--data", files["holdout"], "--arch", ARCH, "--arch-kwargs",
                  '{"n_classes": 10, "channels": [8, 16]}'], capsys, tmp_path, "does not fit")
    assert "conv1.weight" in err


def test_state_dict_without_arch(files, tmp_path, capsys):
    _fails([files["bd_state"], "--data", files["holdout"]], capsys, tmp_path, "pass arch=")


def test_data_whose_shape_does_not_fit_the_model(files, tmp_path, capsys):
    wrong = tmp_path / "rgb.npz"
    np.savez(wrong, X=np.zeros((10, 3, 8, 8), np.float32))
    _fails([files["bd_script"], "--data", wrong], capsys, tmp_path, "does not fit the model: images of shape (3, 8, 8)")


def test_labels_out_of_range_and_missing_data(files, tmp_path, capsys):
    bad = tmp_path / "labels.npz"
    np.savez(bad, X=np.zeros((10, 1, 8, 8), np.float32), y=np.full(10, 12))
    _fails([files["bd_script"], "--data", bad], capsys, tmp_path, "must hold labels in [0, 9]")
    _fails([files["bd_script"], "--data", tmp_path / "nowhere.npz"], capsys, tmp_path, "does not exist")


def test_repair_needs_labels_and_python_architecture(files, tmp_path, capsys, digits_bench):
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, X=digits_bench.X_holdout)
    _fails([files["bd_state"], "--data", unlabelled, "--arch", ARCH, "--arch-kwargs", ARCH_KWARGS,
            "--repair", "fine-pruning"], capsys, tmp_path, "holds no labels")
    _fails([files["bd_script"], "--data", files["holdout"], "--repair", "fine-pruning"], capsys, tmp_path,
           "TorchScript")


def test_repair_of_a_model_without_convolutions_prunes_hidden_units():
    from backdoorlearn.models import MLP

    torch.manual_seed(0)
    X = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    report = audit_model(MLP((1, 8, 8), 4, hidden=(16, 8)), X, np.arange(40) % 4, nc_steps=2,
                         repair="fine-pruning", repair_epochs=1)
    assert report["repair"]["layer"] == "fc2"
    assert all(0 <= u < 8 for u in report["repair"]["pruned_units"])


def test_a_late_failure_writes_nothing_and_keeps_an_earlier_report(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.json").write_text("earlier")
    from backdoorlearn.audit import _report

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(_report, "render_html", broken)
    code, _, stderr = _audit([files["bd_script"], "--data", files["holdout"], "--nc-steps", 2, "--out", out], capsys)
    assert code == 2 and "internal error (RuntimeError: disk full)" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert (out / "report.json").read_text() == "earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_out_that_is_a_file(files, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    code, _, stderr = _audit([files["bd_script"], "--data", files["holdout"], "--out", target], capsys)
    assert code == 2 and "is an existing file" in stderr and target.read_text() == "x"
