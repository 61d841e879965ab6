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
