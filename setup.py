"""Thin shim so `pip install -e .` works with older tooling; see pyproject.toml."""
from setuptools import setup

setup()
