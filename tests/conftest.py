"""Fixtures shared by the test modules: ``backend``, one test's database on each engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from engines import Backend, make_backend


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The test runs on a SQLite file, then on a PostgreSQL schema of its own."""
    async for made in make_backend(request.param, tmp_path):
        yield made


@pytest.fixture
async def postgres(tmp_path: Path) -> AsyncIterator[Backend]:
    """A PostgreSQL schema of the test's own (tests of what only PostgreSQL does)."""
    async for made in make_backend("postgres", tmp_path):
        yield made
