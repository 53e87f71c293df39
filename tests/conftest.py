"""Shared fixtures. Data under ../shared is optional: tests that need it skip with a reason."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PARITY_DIR = Path(__file__).resolve().parent / "data" / "parity"
DATA_DIR = SHARED / "data"


def require(path: Path) -> Path:
    """Skip the calling test when a reference file or folder is not available."""
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (the ../shared folder is not present)")
    return path
