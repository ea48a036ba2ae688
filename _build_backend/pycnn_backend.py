"""pycnn's build backend: setuptools', compiling against the torch of the
environment pycnn is being installed into.

pycnn's extension must be compiled against the very torch that will run it.
An isolated build (plain `pip install .`, `pip wheel .`) would otherwise need
torch as a build requirement, and pip would fetch a second, temporary torch
(gigabytes for a CUDA build) whose version need not match. Instead, this
backend asks for no torch: pip runs it with the target environment's
interpreter, whose site-packages pip hides from sys.path but not from disk,
so the backend finds the installed torch there and builds against it (with
the CUDA kernels when it is a CUDA build). Without an installed torch, it
stops with the command to run first.
"""
import os
import site
import sys
import sysconfig

from setuptools import build_meta as _setuptools

INSTALL_TORCH_FIRST = (
    "pycnn compiles its kernels against the torch it will run with, and none is installed in this environment "
    "({prefix}). Install torch first, then pycnn:\n"
    "    pip install torch==2.13.0    # the version pycnn is tested with; any torch >= 2.6 works\n"
    "    pip install .\n"
)


def _target_site_packages():
    """The directories the installing interpreter's packages live in: its own (a venv's, or the
    system's), the base interpreter's for a venv with system site packages, and the user's."""
    paths = sysconfig.get_paths()
    candidates = [paths.get("purelib"), paths.get("platlib"), *site.getsitepackages()]
    try:
        candidates.append(site.getusersitepackages())
    except AttributeError:  # pragma: no cover - some embedded interpreters
        pass
    return list(dict.fromkeys(p for p in candidates if p and os.path.isdir(p)))


def _expose_target_torch():
    """Makes the target environment's torch importable here: its site directories (and
    their .pth files) are appended to sys.path, so that the isolated build environment's
    own packages -- setuptools, wheel, ninja -- still win. Returns False when there is no
    torch to build against."""
    try:
        import torch  # noqa: F401  (a non-isolated build: torch is already on the path)

        return True
    except ImportError:
        pass
    before = list(sys.path)
    for path in _target_site_packages():
        site.addsitedir(path)
    added = [p for p in sys.path if p not in before]
    # Subprocesses of the build (compiler calls through torch's helpers) see them too.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), *added]))
    try:
        import torch  # noqa: F401,F811

        return True
    except ImportError:
        return False


def _require_torch():
    if not _expose_target_torch():
        raise SystemExit(INSTALL_TORCH_FIRST.format(prefix=sys.prefix))


def _with_torch(hook):
    """A setuptools hook that first makes the target environment's torch importable:
    every hook runs setup.py, which imports torch, and pip calls each in a new process."""

    def run(*args, **kwargs):
        _require_torch()
        return hook(*args, **kwargs)

    run.__name__ = hook.__name__
    run.__doc__ = hook.__doc__
    return run


# The PEP 517 / 660 hooks, as setuptools implements them.
get_requires_for_build_wheel = _with_torch(_setuptools.get_requires_for_build_wheel)
get_requires_for_build_editable = _with_torch(_setuptools.get_requires_for_build_editable)
get_requires_for_build_sdist = _with_torch(_setuptools.get_requires_for_build_sdist)
prepare_metadata_for_build_wheel = _with_torch(_setuptools.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _with_torch(_setuptools.prepare_metadata_for_build_editable)
build_wheel = _with_torch(_setuptools.build_wheel)
build_editable = _with_torch(_setuptools.build_editable)
build_sdist = _with_torch(_setuptools.build_sdist)
