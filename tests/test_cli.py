import subprocess
import sys

import pytest

from backdoorlearn._demo import format_table
from backdoorlearn.cli import build_parser, main


@pytest.mark.slow
def test_demo_attack_step_prints_the_table(capsys):
    assert main(["demo", "--step", "BadNets attack", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "backdoored model" in out and "clean model" in out
    assert "attack success" in out


def test_parser_rejects_unknown_dataset():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--dataset", "mnist"])


def test_format_table_aligns_columns():
    table = format_table([{"step": "a", "clean accuracy": 0.5, "attack success": None, "detail": "x"}])
    lines = table.splitlines()
    assert lines[2].startswith("a ") and "50.0%" in lines[2] and " - " in lines[2]


@pytest.mark.slow
def test_python_m_entry_point_shows_help():
    out = subprocess.run([sys.executable, "-m", "backdoorlearn", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout


def test_version(capsys):
    import pytest

    import backdoorlearn

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"backdoorlearn {backdoorlearn.__version__}"


def test_demo_step_names_are_listed_and_checked_before_training(capsys):
    import time

    import pytest

    from backdoorlearn._demo import STEPS

    help_text = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()
    for name, _ in STEPS:
        assert repr(name) in " ".join(help_text.split())
    t = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--step", "Neural Cleanse", "--step", "neural-cleanse"])
    assert exc.value.code == 2 and time.perf_counter() - t < 5  # refused by the parser, nothing trained
    assert "invalid choice: 'neural-cleanse'" in capsys.readouterr().err


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import argparse
    import io

    from backdoorlearn import cli

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert cli._bars(argparse.Namespace(quiet=False)) == 1  # a log file: step lines, no bars
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert cli._bars(argparse.Namespace(quiet=False)) == 2
    assert cli._bars(argparse.Namespace(quiet=True)) == 0


def test_subcommands_document_their_exit_status(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    assert "0 no backdoor found, 1 backdoor found, 2 error" in " ".join(capsys.readouterr().out.split())
    for command in (["evaluate"], ["assignment", "make"], ["assignment", "grade"]):
        with pytest.raises(SystemExit) as exc:
            main([*command, "--help"])
        assert exc.value.code == 0 and "usage: backdoorlearn" in capsys.readouterr().out
