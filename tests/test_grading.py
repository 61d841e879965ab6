"""``backdoorlearn evaluate`` and the assignment kit (``assignment make`` / ``grade``), round trip on digits."""

import csv
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from backdoorlearn.cli import main
from backdoorlearn.grading import evaluate_submission, load_submission, make_assignment
from backdoorlearn.metrics import attack_success_rate, clean_accuracy

ARCH = "backdoorlearn.models:SmallCNN"
ARCH_KWARGS = '{"in_channels": 1, "n_classes": 10, "channels": [16, 32], "hidden": 64, "pooled_size": 4}'


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def hackml(digits_bench, tmp_path_factory):
    """The digits benchmark's backdoored model as files, with test sets in the HackML layout."""
    b = digits_bench
    d = tmp_path_factory.mktemp("evaluate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(b.backdoored_model.module_.eval(), torch.zeros(1, 1, 8, 8)).save(str(d / "bd.ts.pt"))
    torch.save(b.backdoored_model.module_.state_dict(), d / "bd.pt")
    np.savez(d / "clean_test.npz", X=b.X_test, y=b.y_test)
    rows = b.y_test != b.target_label
    np.savez(d / "poisoned_test.npz", X=b.X_test_triggered[rows], y=np.full(rows.sum(), b.target_label),
             y_true=b.y_test[rows])
    (d / "predict.py").write_text(
        "import numpy as np\n"
        "from backdoorlearn.models import ModelAdapter, load_model\n"
        f"_model = ModelAdapter(load_model({str(d / 'bd.ts.pt')!r}))\n"
        "def predict(X):\n"
        "    return _model.predict(X)\n")
    return d


def test_evaluate_scores_the_backdoored_model(hackml, digits_bench, capsys, tmp_path):
    b = digits_bench
    code, out, err = _run(["evaluate", hackml / "bd.pt", "--arch", ARCH, "--arch-kwargs", ARCH_KWARGS,
                           "--clean", hackml / "clean_test.npz", "--poisoned", hackml / "poisoned_test.npz",
                           "--json", tmp_path / "result.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "result.json").read_text())
    expected_asr = attack_success_rate(b.y_test, b.backdoored_model.predict(b.X_test_triggered), b.target_label)
    assert result["poisoned"][0]["attack_success"] == pytest.approx(expected_asr)
    assert result["attack_success"] > 0.9
    assert result["clean"]["accuracy"] == pytest.approx(clean_accuracy(b.y_test, b.backdoored_model.predict(b.X_test)))
    assert result["reject_label"] == result["n_classes"] == 10
    assert result["clean"]["rejected"] == 0 and result["poisoned"][0]["rejected"] == 0
    assert result["submission"]["kind"] == "state_dict" and len(result["submission"]["sha256"]) == 64
    assert result["submission"]["n_outputs"] == 10
    assert "poisoned_test.npz  poisoned" in out and "rejected (label 10)" in out
    assert f"{100 * expected_asr:.1f}%" in out


def test_python_submission_runs_only_with_trust_code(hackml, capsys, tmp_path):
    args = ["evaluate", hackml / "predict.py", "--clean", hackml / "clean_test.npz",
            "--poisoned", hackml / "poisoned_test.npz", "--json", tmp_path / "r.json"]
    code, out, err = _run(args, capsys)
    assert code == 2 and "is a Python file" in err and "--trust-code" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists() and out == ""
    code, out, err = _run([*args, "--trust-code"], capsys)
    assert code == 0, err
    trusted = json.loads((tmp_path / "r.json").read_text())
    as_model = evaluate_submission(load_submission(hackml / "bd.ts.pt"), hackml / "clean_test.npz",
                                   [hackml / "poisoned_test.npz"])
    assert trusted["submission"]["kind"] == "python" and trusted["n_classes"] == 10  # largest clean label + 1
    assert trusted["clean"]["accuracy"] == as_model["clean"]["accuracy"]
    assert trusted["poisoned"][0]["attack_success"] == as_model["poisoned"][0]["attack_success"]


def test_reject_label_counts_against_the_attack_and_the_accuracy():
    X = np.zeros((4, 1, 8, 8), np.float32)
    X[2:, 0, 0, 0] = 1  # the "trigger"

    def predict(X):
        return np.where(X[:, 0, 0, 0] > 0.5, 10, 3)

    result = evaluate_submission(predict, (X, [3, 3, 3, 5]), [(X[2:], [7, 7], [3, 5])], n_classes=10)
    assert result["clean"]["accuracy"] == 0.5 and result["clean"]["rejected"] == 0.5
    poisoned = result["poisoned"][0]
    assert poisoned["attack_success"] == 0 and poisoned["rejected"] == 1 and poisoned["accuracy"] == 0


@pytest.mark.parametrize("predict, message", [
    (lambda X: np.zeros((len(X), 10)), "scores rather than labels"),
    (lambda X: np.zeros(len(X) - 1), "one label per input"),
    (lambda X: np.full(len(X), 11), r"labels in \[0, 10\]"),
    (lambda X: np.full(len(X), 0.5), "integer labels"),
])
def test_bad_predictions(predict, message):
    X = np.zeros((3, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=message):
        evaluate_submission(predict, (X, [0, 1, 9]), n_classes=10)


def test_evaluate_bad_input(hackml, capsys, tmp_path):
    common = ["--clean", hackml / "clean_test.npz"]
    code, _, err = _run(["evaluate", hackml / "bd.ts.pt", *common, "--n-classes", 12], capsys)
    assert code == 2 and "has 10 outputs, but n_classes is 12" in err
    code, _, err = _run(["evaluate", hackml / "bd.ts.pt", *common, "--n-classes", 5], capsys)
    assert code == 2 and "the clean labels go up to 9, but n_classes is 5" in err
    unlabelled = tmp_path / "u.npz"
    np.savez(unlabelled, X=np.zeros((2, 1, 8, 8), np.float32))
    code, _, err = _run(["evaluate", hackml / "bd.ts.pt", *common, "--poisoned", unlabelled], capsys)
    assert code == 2 and "holds no labels" in err and "target" in err
    code, _, err = _run(["evaluate", hackml / "bd.ts.pt", *common, "--poisoned", unlabelled, "--target", 0], capsys)
    assert code == 0, err
    wrong = tmp_path / "rgb.npz"
    np.savez(wrong, X=np.zeros((2, 3, 8, 8), np.float32), y=[0, 1])
    code, _, err = _run(["evaluate", hackml / "bd.ts.pt", "--clean", wrong], capsys)
    assert code == 2 and "do not fit the submission" in err
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemError('oops')\n")
    code, _, err = _run(["evaluate", broken, *common, "--trust-code"], capsys)
    assert code == 2 and "failed when imported: SystemError: oops" in err


@pytest.mark.slow
def test_fine_pruned_submission_scores_low(hackml, digits_bench, capsys, tmp_path):
    from backdoorlearn import FinePruner
    from backdoorlearn.models import save_weights

    b = digits_bench
    repaired = FinePruner(random_state=0).fit(b.backdoored_model, b.X_holdout, b.y_holdout).repaired_model_
    save_weights(repaired, tmp_path / "repaired.pt")
    code, out, err = _run(["evaluate", tmp_path / "repaired.pt", "--arch", ARCH, "--arch-kwargs", ARCH_KWARGS,
                           "--clean", hackml / "clean_test.npz", "--poisoned", hackml / "poisoned_test.npz",
                           "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["attack_success"] < 0.1 and result["clean"]["accuracy"] > 0.9


# ---------------------------------------------------------------------- the assignment kit
# seed 1 draws two patch backdoors (targets 5 and 4) and one clean model; 10 epochs train them in seconds.
@pytest.fixture(scope="module")
def assignment(tmp_path_factory):
    root = tmp_path_factory.mktemp("assignment") / "hw"
    assert main(["assignment", "make", str(root), "--n-models", "3", "--seed", "1", "--epochs", "10",
                 "--quiet"]) == 0
    return root


def test_make_writes_what_students_and_instructor_need(assignment):
    students, instructor = assignment / "students", assignment / "instructor"
    assert sorted(p.name for p in students.iterdir()) == ["README.md", "clean_data.npz", "models", "models.json"]
    assert sorted(p.name for p in (students / "models").iterdir()) == ["model_1.pt", "model_2.pt", "model_3.pt"]
    key = json.loads((instructor / "answer_key.json").read_text())
    truth = {name: m["backdoored"] for name, m in key["models"].items()}
    assert sorted(truth.values()) == [False, True, True]
    for m in key["models"].values():
        if m["backdoored"]:
            assert m["attack_success"] > 0.9 and len(m["targets"]) == 1 and "patch" in m["trigger"]
        assert m["clean_accuracy"] > 0.9
    # the models reload from the students' files alone, and reproduce the key's figures
    from backdoorlearn.datasets import load_data_file
    from backdoorlearn.models import ModelAdapter, load_model

    manifest = json.loads((students / "models.json").read_text())
    X_test, y_test = load_data_file(instructor / "clean_test.npz")
    for name, m in key["models"].items():
        model = load_model(students / manifest[name]["file"], arch=manifest[name]["arch"],
                           arch_kwargs=manifest[name]["arch_kwargs"])
        assert np.mean(ModelAdapter(model).predict(X_test) == y_test) == pytest.approx(m["clean_accuracy"])
    X, y = load_data_file(students / "clean_data.npz")
    assert len(X) == key["assignment"]["n_students"] and y is not None
    assert "backdoorlearn audit models/model_1.pt --data clean_data.npz" in (students / "README.md").read_text()


def test_make_refuses_a_folder_in_use(assignment, capsys):
    before = sorted(p.name for p in assignment.iterdir())
    code, _, err = _run(["assignment", "make", assignment, "--n-models", 2, "--epochs", 1], capsys)
    assert code == 2 and "already exists and is not empty" in err
    assert sorted(p.name for p in assignment.iterdir()) == before


def _submit(root, name, key, *, detection=None, copies=(), files=None):
    folder = root / name
    (folder / "repaired").mkdir(parents=True)
    if detection is not None:
        (folder / "detection.json").write_text(detection if isinstance(detection, str) else json.dumps(detection))
    for model in copies:
        shutil.copy(root.parent / "hw" / "students" / "models" / f"{model}.pt", folder / "repaired" / f"{model}.pt")
    for fname, text in (files or {}).items():
        (folder / "repaired" / fname).write_text(text)
    return folder


def test_grade_round_trip(assignment, capsys, tmp_path):
    key = json.loads((assignment / "instructor" / "answer_key.json").read_text())
    subs = assignment.parent / "submissions"
    right = {n: {"backdoored": m["backdoored"], **({"target": m["targets"][0]} if m["backdoored"] else {})}
             for n, m in key["models"].items()}
    # answers the backdoored models' own predictions as the "repair": it scores their attack success
    _submit(subs, "copycat", key, detection=right, copies=list(key["models"]))
    wrong = {n: {"backdoored": False} for n in key["models"]}
    _submit(subs, "lazy", key, detection=wrong, files={"model_1.py": "def predict(X):\n    return [0] * len(X)\n"})
    _submit(subs, "broken", key, detection="{not json")
    code, out, err = _run(["assignment", "grade", assignment, subs, "--json", tmp_path / "g.json",
                           "--csv", tmp_path / "g.csv", "--quiet"], capsys)
    assert code == 0, err
    grades = {s["name"]: s for s in json.loads((tmp_path / "g.json").read_text())["submissions"]}
    assert sorted(grades) == ["broken", "copycat", "lazy"]
    copycat = grades["copycat"]
    assert copycat["detection"]["accuracy"] == 1 and copycat["detection"]["target_accuracy"] == 1
    assert copycat["n_repaired"] == 3 and copycat["errors"] == []
    for name, m in key["models"].items():
        assert copycat["repair"][name]["attack_success"] == pytest.approx(m["attack_success"])
        assert copycat["repair"][name]["clean_accuracy"] == pytest.approx(m["clean_accuracy"])
    backdoored = [m["attack_success"] for m in key["models"].values() if m["backdoored"]]
    assert copycat["mean_attack_success"] == pytest.approx(np.mean(backdoored))
    lazy = grades["lazy"]
    assert lazy["detection"]["accuracy"] == pytest.approx(1 / 3) and lazy["detection"]["target_accuracy"] == 0
    assert lazy["n_repaired"] == 0 and any("trust_code=True" in e for e in lazy["errors"])
    assert grades["broken"]["detection"]["correct"] == 0 and "detection.json" in grades["broken"]["errors"][0]
    assert "copycat     3/3        2/2      3/3" in out
    rows = list(csv.DictReader((tmp_path / "g.csv").open()))
    assert len(rows) == 9 and {r["submission"] for r in rows} == {"broken", "copycat", "lazy"}


def test_grade_bad_input(assignment, capsys, tmp_path):
    code, _, err = _run(["assignment", "grade", tmp_path, tmp_path], capsys)
    assert code == 2 and "not an assignment folder" in err
    empty = tmp_path / "none"
    empty.mkdir()
    code, _, err = _run(["assignment", "grade", assignment, empty], capsys)
    assert code == 2 and "holds no submission" in err


@pytest.mark.slow
def test_fine_pruned_repairs_score_low(assignment, capsys, tmp_path):
    from backdoorlearn import FinePruner
    from backdoorlearn.datasets import load_data_file
    from backdoorlearn.models import load_model, save_weights

    students = assignment / "students"
    manifest = json.loads((students / "models.json").read_text())
    key = json.loads((assignment / "instructor" / "answer_key.json").read_text())
    X, y = load_data_file(students / "clean_data.npz")
    folder = tmp_path / "pruner"
    (folder / "repaired").mkdir(parents=True)
    for name, m in manifest.items():
        if key["models"][name]["backdoored"]:
            model = load_model(students / m["file"], arch=m["arch"], arch_kwargs=m["arch_kwargs"])
            repaired = FinePruner(random_state=0).fit(model, X, y).repaired_model_
            save_weights(repaired, folder / "repaired" / f"{name}.pt")
    code, out, err = _run(["assignment", "grade", assignment, folder, "--json", tmp_path / "g.json", "--quiet"],
                          capsys)
    assert code == 0, err
    grade = json.loads((tmp_path / "g.json").read_text())["submissions"][0]
    assert grade["name"] == "pruner" and grade["n_repaired"] == 2
    assert grade["mean_attack_success"] < 0.2 and grade["mean_clean_accuracy"] > 0.85
    assert "no detection.json" in grade["errors"]
