"""The Makefile installs PyTorch from the index given in TORCH_INDEX_URL (e.g. the CPU wheels) before the rest."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dry_run(tmp_path, *extra) -> list[str]:
    result = subprocess.run(
        ["make", "-n", "setup", f"VENV={tmp_path / 'venv'}", *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return result.stdout.splitlines()


def test_cpu_wheel_index_is_an_option(tmp_path):
    index = "https://download.pytorch.org/whl/cpu"
    lines = dry_run(tmp_path, f"TORCH_INDEX_URL={index}")
    torch_line = next(i for i, line in enumerate(lines) if f"--index-url {index} torch torchvision" in line)
    assert torch_line < next(i for i, line in enumerate(lines) if '-e ".[test]"' in line)
    assert not [line for line in dry_run(tmp_path) if "--index-url" in line]  # default: PyPI


def test_make_test_lints_before_the_tests(tmp_path):
    result = subprocess.run(
        ["make", "-n", "test", f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    lines = result.stdout.splitlines()
    lint = next(i for i, line in enumerate(lines) if line.endswith("-m ruff check ."))
    formatting = next(i for i, line in enumerate(lines) if line.endswith("-m ruff format --check ."))
    assert lint < formatting < next(i for i, line in enumerate(lines) if line.endswith("-m pytest"))
