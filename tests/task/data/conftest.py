"""Fixtures of the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from task.data.files import ImageReader


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """The paths the decoder is called on, in order."""
    calls: list[Path] = []
    real = ImageReader.read

    def spy(self, path):
        calls.append(Path(path))
        return real(self, path)

    monkeypatch.setattr(ImageReader, "read", spy)
    return calls
