"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture(scope="session")
def capstone_cache(tmp_path_factory):
    """The reference-policy cache shared by the capstone's run and CLI tests (the SFT runs once per session)."""
    return tmp_path_factory.getbasetemp() / "capstone-cache"
