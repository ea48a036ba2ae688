"""Refreshes the pinned set-up environment, requirements/ci.txt, and tests it.

    python tools/refresh_lock.py [--venv DIR] [--no-test]

1. creates a fresh virtual environment (default build/refresh-venv; an old one
   there is removed first);
2. installs into it, from the package registry and newest compatible first,
   pycnn's dependencies, every extra and its build requirements
   (pyproject.toml) with the set-up pins of requirements/ci.in;
3. checks it with `pip check` and writes every installed package, exact
   version, to requirements/ci.txt — what .ci/install installs;
4. builds pycnn in that environment and runs the test suite there.

It exits non-zero when a step fails, leaving the new requirements/ci.txt in
place so that `git diff requirements/ci.txt` shows which releases broke it.
pip runs with --isolated so that only the registry is consulted: local wheel
folders and version caps of this machine do not leak into the pins.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tomllib
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT = os.path.join(ROOT, "requirements", "ci.in")
LOCK = os.path.join(ROOT, "requirements", "ci.txt")
HEADER = """\
# Every Python package of pycnn's set-up and CI environment, at the exact
# version that was tested; .ci/install installs this file.
# Written by `python tools/refresh_lock.py` from pyproject.toml and
# requirements/ci.in (CPython {python}, {platform}); do not edit by hand.
"""


def requirements():
    """The ranges to resolve: requirements/ci.in, then pyproject.toml's
    dependencies, extras and build requirements. pip takes the intersection of
    every specifier given for a package; ci.in's come first so that pip starts
    from its pins (and downloads no torch that the pin would then reject)."""
    wanted = []
    with open(INPUT) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                wanted.append(line)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    project = pyproject["project"]
    wanted += project.get("dependencies", [])
    for extra in project.get("optional-dependencies", {}).values():
        wanted += extra
    wanted += pyproject.get("build-system", {}).get("requires", [])
    return list(dict.fromkeys(wanted))


def run(*command, **kwargs):
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, **kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=os.path.join(ROOT, "build", "refresh-venv"))
    parser.add_argument("--no-test", action="store_true", help="write the pins without building and testing")
    args = parser.parse_args(argv)

    shutil.rmtree(args.venv, ignore_errors=True)
    venv.create(args.venv, with_pip=True)
    python = os.path.join(args.venv, "bin", "python")
    pip = (python, "-m", "pip", "--isolated", "--disable-pip-version-check")
    run(*pip, "install", "--progress-bar", "off", "--upgrade", "pip")
    run(*pip, "install", "--progress-bar", "off", "--upgrade", *requirements())
    run(*pip, "check")

    frozen = subprocess.run(
        (*pip, "freeze", "--all", "--exclude", "pip", "--exclude", "pycnn"),
        check=True, capture_output=True, text=True,
    ).stdout
    platform = subprocess.run(
        (python, "-c", "import platform; print(platform.system(), platform.machine())"),
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    python_version = subprocess.run(
        (python, "-c", "import platform; print(platform.python_version())"),
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    pins = sorted((line for line in frozen.splitlines() if line and not line.startswith("#")), key=str.lower)
    with open(LOCK, "w") as f:
        f.write(HEADER.format(python=python_version, platform=platform))
        f.write("\n".join(pins) + "\n")
    print(f"wrote {len(pins)} pins to {os.path.relpath(LOCK, ROOT)}", flush=True)
    if args.no_test:
        return 0

    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    run(*pip, "install", "--no-build-isolation", "--progress-bar", "off", ".", env=env)
    run(python, "-m", "pycnn.check")
    run(python, "-m", "pytest", "tests", "-q", env=dict(env, PATH=f"{os.path.dirname(python)}:{env['PATH']}"))
    print("the refreshed pins pass the test suite; commit requirements/ci.txt", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as error:
        sys.exit(f"refresh_lock: {' '.join(map(str, error.cmd))} failed (exit {error.returncode})")
