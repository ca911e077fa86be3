"""scripts/ohif.py loaded as a module (scripts/ is not a package): fetch, app_config, server."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ohif.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("enclave_ohif_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ohif = _load()
