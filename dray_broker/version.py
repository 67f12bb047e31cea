"""Dray's version: the installed package's (pyproject.toml's `version`, as `pip show dray` reports it)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def dray_version() -> str:
    try:
        return version("dray")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


VERSION = dray_version()
