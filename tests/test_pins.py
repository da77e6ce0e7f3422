"""One set of pins: ``make``, the Docker image and ``environment.yml`` all install ``requirements.lock``.

The flow process, the Dask scheduler and the workers must run the same versions
(``open_cluster`` refuses mismatches at run time); these tests catch a drift at
review time, before an image is built.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = "requirements.lock"


def _pip_sources(commands: list[str]) -> set[str]:
    """What some ``pip install`` argument lists install with their dependencies.

    ``-r FILE`` counts as ``FILE``; the project itself installed with ``--no-deps``
    adds no package; anything else (a package named in place) is returned as is.
    """
    sources = set()
    for command in commands:
        args = [a for a in shlex.split(command) if a not in ("--quiet", "-q", "-e")]
        if "-r" in args:
            sources.add(args[args.index("-r") + 1])
        elif not ("--no-deps" in args and args[-1] == "."):
            sources.add(" ".join(args))
    return sources


def makefile_installs() -> set[str]:
    """``pip install`` into the project's venv (``$(BIN)/pip``); the lock target's scratch venv aside."""
    text = (ROOT / "Makefile").read_text()
    return _pip_sources(re.findall(r"^\t\$\(BIN\)/pip install (.+)$", text, re.MULTILINE))


def dockerfile_installs() -> set[str]:
    text = (ROOT / "Dockerfile").read_text()
    return _pip_sources([c.split("&&")[0] for c in re.findall(r"pip install (.+)", text)])


def environment_installs() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # The project itself: its dependencies are already satisfied by the lock, checked below.
    return _pip_sources([p for p in pip if p not in ("-e .", ".")])


@pytest.mark.parametrize("installs", [makefile_installs, dockerfile_installs, environment_installs])
def test_every_environment_installs_the_lock_and_nothing_else(installs):
    assert installs() == {LOCK}


def test_the_docker_image_copies_the_lock_before_installing_it():
    text = (ROOT / "Dockerfile").read_text()
    assert text.index(f"COPY {LOCK}") < text.index(f"pip install -r {LOCK}")


def _pins() -> dict[str, Version]:
    lines = (ROOT / LOCK).read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {Requirement(name).name.lower().replace("_", "-"): Version(version) for name, version in pairs}


def test_the_lock_satisfies_every_dependency_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pins = _pins()
    for requirement in map(Requirement, wanted):
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is in pyproject.toml but not in {LOCK}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK} pins {name}=={pins[name]}, pyproject.toml wants {requirement.specifier}: run `make lock`")


def test_every_environment_runs_the_same_python():
    docker = re.search(r"^FROM python:(\d+\.\d+)\.(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    make = re.search(r"^PYTHON \?= python(\d+\.\d+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert docker and make, "Dockerfile FROM python:X.Y.Z and Makefile PYTHON ?= pythonX.Y are expected"
    assert docker[1] == conda.removeprefix("python=") == make[1]
    assert Requirement(f"python{requires}").specifier.contains(f"{docker[1]}.{docker[2]}")
