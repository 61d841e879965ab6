"""Run the commands the user guide shows and keep what they print and draw, for the pages to include.

The pages "Audit a model you did not train", "Run a backdoor assignment" and
"Command line" include these files instead of retyped output, so every figure
and number on them comes from this run. ``docs/conf.py`` runs it at each
build; ``python docs/generate_cli_outputs.py`` refreshes the files by hand.

The scenario: an instructor makes a three-model digits assignment; a student
audits each mystery model (with STRIP and a fine-pruning repair), hands in
the verdicts and the repaired weights; a second student hands in the models
untouched; the instructor grades both and evaluates one repair on its own.
"""

from __future__ import annotations

import base64
import contextlib
import html.parser
import io
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "_generated"
# Three digits models: one clean, two with patch backdoors (the same draw the tests use).
MAKE = "backdoorlearn assignment make hw --n-models 3 --seed 1"


def _run(command, work, name, *, show_status=False):
    """Run one ``backdoorlearn`` command in ``work``; keep "$ command" and its stdout in ``name``.txt."""
    from backdoorlearn.cli import main

    argv = shlex.split(command)[1:]
    buf = io.StringIO()
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            code = main(argv)
    finally:
        os.chdir(cwd)
    if code not in (0, 1):
        raise RuntimeError(f"{command!r} exited with status {code}")
    text = f"$ {_wrap(command)}\n{buf.getvalue()}"
    if show_status:
        text += f"$ echo $?\n{code}\n"
    (OUT / f"{name}.txt").write_text(text, encoding="utf-8")
    return code


def _wrap(command, width=88):
    """Break a long command line with backslashes at option boundaries."""
    parts = shlex.split(command)
    lines, line = [], parts[0]
    for part in parts[1:]:
        token = shlex.quote(part)
        if part.startswith("--") and len(line) + len(token) + 1 > width - 2:
            lines.append(line + " \\")
            line = "    " + token
        else:
            line += " " + token
    return "\n".join(lines + [line])


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append((attrs.get("alt", ""), attrs["src"]))


def _figures(report_html, prefix):
    """Save the report's embedded figures as PNG files named after their alt text."""
    parser = _Images()
    parser.feed(Path(report_html).read_text(encoding="utf-8"))
    for alt, src in parser.images:
        data = base64.b64decode(src.split(",", 1)[1])
        (OUT / f"{prefix}_{alt.replace(' ', '_')}.png").write_bytes(data)


def _tree(root, name):
    lines = [root.name + "/"]

    def walk(folder, indent):
        for p in sorted(folder.iterdir()):
            lines.append(f"{indent}{p.name}{'/' if p.is_dir() else ''}")
            if p.is_dir():
                walk(p, indent + "    ")

    walk(root, "    ")
    (OUT / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _help(argv, name):
    from backdoorlearn.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        os.environ["COLUMNS"] = "96"
        main([*argv, "--help"])
    (OUT / f"{name}.txt").write_text(f"$ backdoorlearn {' '.join(argv)} --help\n{buf.getvalue()}", encoding="utf-8")


def generate():
    import matplotlib

    matplotlib.use("Agg")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    for argv, name in ((["audit"], "help_audit"), (["evaluate"], "help_evaluate"),
                       (["assignment", "make"], "help_assignment_make"),
                       (["assignment", "grade"], "help_assignment_grade")):
        _help(argv, name)
    work = Path(tempfile.mkdtemp(prefix="backdoorlearn-docs-"))
    try:
        _run(MAKE, work, "assignment_make")
        hw = work / "hw"
        _tree(hw, "assignment_tree")
        shutil.copy(hw / "students" / "README.md", OUT / "assignment_student_readme.md")
        manifest = json.loads((hw / "students" / "models.json").read_text())
        key = json.loads((hw / "instructor" / "answer_key.json").read_text())
        detection = {}
        alice = work / "submissions" / "alice"
        (alice / "repaired").mkdir(parents=True)
        for name, entry in manifest.items():
            kwargs = json.dumps(entry["arch_kwargs"], separators=(",", ":"))
            command = (f"backdoorlearn audit hw/students/{entry['file']} --data hw/students/clean_data.npz "
                       f"--arch {entry['arch']} --arch-kwargs {shlex.quote(kwargs)} --strip --repair fine-pruning "
                       f"--out audit-{name}")
            code = _run(command, work, f"audit_{name}", show_status=True)
            _figures(work / f"audit-{name}" / "report.html", f"audit_{name}")
            report = json.loads((work / f"audit-{name}" / "report.json").read_text())
            detection[name] = {"backdoored": report["backdoor_detected"],
                               "targets": report["flagged_labels"]}
            if code == 1:
                shutil.copy(work / f"audit-{name}" / "repaired.pt", alice / "repaired" / f"{name}.pt")
        (alice / "detection.json").write_text(json.dumps(detection, indent=1), encoding="utf-8")
        (OUT / "assignment_detection.json").write_text(json.dumps(detection, indent=1) + "\n", encoding="utf-8")
        bob = work / "submissions" / "bob"
        (bob / "repaired").mkdir(parents=True)
        (bob / "detection.json").write_text(json.dumps({n: {"backdoored": False} for n in manifest}))
        for name, entry in manifest.items():  # hands the mystery models back untouched
            shutil.copy(hw / "students" / entry["file"], bob / "repaired" / f"{name}.pt")
        _run("backdoorlearn assignment grade hw submissions --json grades.json --csv grades.csv", work,
             "assignment_grade")
        backdoored = next(n for n, m in key["models"].items() if m["backdoored"])
        entry = manifest[backdoored]
        kwargs = json.dumps(entry["arch_kwargs"], separators=(",", ":"))
        _run(f"backdoorlearn evaluate submissions/alice/repaired/{backdoored}.pt --arch {entry['arch']} "
             f"--arch-kwargs {shlex.quote(kwargs)} --clean hw/instructor/clean_test.npz "
             f"--poisoned hw/instructor/poisoned_test/{backdoored}.npz", work, "evaluate_repaired")
        (OUT / "names.json").write_text(json.dumps({"backdoored": backdoored}), encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "src"))
    generate()
    print(f"wrote {len(list(OUT.iterdir()))} files to {OUT}")
