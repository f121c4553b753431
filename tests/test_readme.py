"""The README's two commands are exactly what CI runs, and its examples stay true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_ci_runs_exactly_the_readme_install_and_test_commands() -> None:
    install, test = readme_commands()
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == [install, test]


def test_install_pins_torch_first_and_keeps_the_package_range_open() -> None:
    install, _ = readme_commands()
    assert install.startswith("pip install torch==2.13.0 && ")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"torch>=[\d.]+,<\d+"', pyproject)


def test_every_public_name_in_the_readme_exists() -> None:
    import sotflow

    text = (ROOT / "README.md").read_text()
    for name in set(re.findall(r"sotflow\.([A-Z]\w+)", text)):
        assert hasattr(sotflow, name), name


CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


def test_the_cpu_only_torch_install_is_stated_once_beside_the_install_command() -> None:
    text = (ROOT / "README.md").read_text()
    assert text.count(CPU_TORCH) == 1
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    install_block_end = section.index("```", section.index("```bash") + 3)
    paragraph = section[install_block_end:].split("\n\n", 2)[1]  # the one right below
    assert CPU_TORCH in paragraph and "without a GPU" in paragraph
