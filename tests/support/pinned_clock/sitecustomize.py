"""Test-only: shift `utcnow` by TESTS_CLOCK_SHIFT_SECONDS in a subprocess, once the store module is imported.

Python imports this at start-up when its folder is on PYTHONPATH (tests.support.clock puts it there). The
store module is not imported here, only when the process first asks for it, so start-up stays light.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from types import ModuleType

TARGET = "tasks.store.repository"
SHIFT = os.environ.get("TESTS_CLOCK_SHIFT_SECONDS")


class _ShiftOnImport(importlib.abc.MetaPathFinder):
    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != TARGET or SHIFT is None:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            module.shift_clock(timedelta(seconds=float(SHIFT)))

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if SHIFT is not None:
    sys.meta_path.insert(0, _ShiftOnImport())
