"""docs/kernels.md stays true to the code: every link of the form
[`path` · `name`](relative link) names a file that exists (the link and the
shown path agree) and a name that occurs in it; every other relative link
points at a file that exists; the guide quotes no long code blocks. And the
README's first screen points learners at the examples and the guide."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
GUIDE = os.path.join(DOCS, "kernels.md")

SYMBOL_LINK = re.compile(r"\[`([^`]+)` · `([^`]+)`\]\(([^)\s]+)\)")
ANY_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _guide() -> str:
    with open(GUIDE, encoding="utf-8") as f:
        return f.read()


def _resolve(href: str, base: str = DOCS) -> str:
    return os.path.normpath(os.path.join(base, href.split("#", 1)[0]))


def _occurs(name: str, text: str) -> bool:
    return re.search(r"(?<![A-Za-z0-9_])" + re.escape(name) + r"(?![A-Za-z0-9_])", text) is not None


def test_symbol_links_name_files_and_names_that_exist():
    links = SYMBOL_LINK.findall(_guide())
    assert len(links) >= 40, f"expected the guide's (file, name) links, found {len(links)}"
    problems = []
    for shown, name, href in links:
        target = _resolve(href)
        if target != os.path.normpath(os.path.join(ROOT, shown)):
            problems.append(f"[{shown} · {name}]: the link goes to {href}, not to {shown}")
            continue
        if not os.path.isfile(target):
            problems.append(f"[{shown} · {name}]: {shown} does not exist")
            continue
        with open(target, encoding="utf-8") as f:
            if not _occurs(name, f.read()):
                problems.append(f"[{shown} · {name}]: {name} does not occur in {shown} (renamed? update docs/kernels.md)")
    assert not problems, "docs/kernels.md is out of date:\n" + "\n".join(problems)


def test_the_guide_covers_the_three_steps():
    files = {shown for shown, _, _ in SYMBOL_LINK.findall(_guide())}
    for expected in ["csrc/cpu/corr2d_kernel.cpp", "csrc/cuda/corr2d_kernel.cu", "csrc/include/pycnn/window.h",
                     "csrc/cpu/max_pool2d_kernel.cpp", "csrc/cuda/max_pool2d_kernel.cu",
                     "csrc/cpu/batch_norm_kernel.cpp", "csrc/cuda/batch_norm_kernel.cu",
                     "examples/01_corr2d.py", "examples/06_pooling.py", "examples/07_batch_norm.py"]:
        assert expected in files, f"docs/kernels.md links no name in {expected}"


def test_other_relative_links_resolve():
    problems = [href for href in ANY_LINK.findall(_guide())
                if not re.match(r"[a-z]+:", href) and not href.startswith("#") and not os.path.exists(_resolve(href))]
    assert not problems, f"docs/kernels.md links files that do not exist: {problems}"


def test_no_long_code_blocks():
    blocks = re.findall(r"^```.*?\n(.*?)^```", _guide(), flags=re.S | re.M)
    assert all(block.count("\n") <= 5 for block in blocks), "the guide should point at code, not copy it"


@pytest.mark.parametrize("path", ["examples/README.md"])
def test_examples_readme_lists_every_example(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    scripts = sorted(n for n in os.listdir(os.path.join(ROOT, "examples")) if re.match(r"\d\d_.*\.py$", n))
    assert len(scripts) == 8
    for script in scripts:
        assert script in text, f"{path} does not list {script}"
    for href in ANY_LINK.findall(text):
        if not re.match(r"[a-z]+:", href) and not href.startswith("#"):
            assert os.path.exists(_resolve(href, os.path.join(ROOT, "examples"))), href


def test_readme_first_screen_points_learners_at_the_examples():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        first_screen = "".join(f.readlines()[:40])
    assert "(examples/" in first_screen and "(docs/kernels.md)" in first_screen
    for href in ANY_LINK.findall(first_screen):
        if not re.match(r"[a-z]+:", href) and not href.startswith("#"):
            assert os.path.exists(_resolve(href, ROOT)), href
