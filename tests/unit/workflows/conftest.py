"""Fixtures for workflow tests: a fresh registry per test, never the global one."""

from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"oslo_utils.*")

from overcloud.workflows.actions import ActionRegistry  # noqa: E402


@pytest.fixture
def registry() -> ActionRegistry:
    return ActionRegistry()
