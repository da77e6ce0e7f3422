"""The ``fleetscore`` command's parser: cheap to build, its help still complete."""

import subprocess
import sys
from pathlib import Path

import pytest

from flows import cli
from scoring import realistic

ROOT = Path(cli.__file__).resolve().parents[1]


def test_building_the_parser_leaves_scoring_realistic_unimported():
    """scoring.realistic imports SciPy (0.8 s), which only ``generate --realistic`` and its help need."""
    code = "import sys; from flows.cli import parser; parser(); print('scoring.realistic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_generate_help_names_the_realistic_delivery_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for option, value in (("--jitter", realistic.JITTER_SECONDS), ("--loss", realistic.LOSS),
                          ("--duplicates", realistic.DUPLICATES), ("--late", realistic.LATE)):
        after = shown.split(f"{option} {option[2:].upper()} with --realistic: ", 1)[1]
        assert after.split(")", 1)[0].endswith(f"(default: {value}"), option
