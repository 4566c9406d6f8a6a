"""Load a job file: a Python module that exposes a module-level ``pipeline``.

The convention: ``JOB.py`` builds a ``Pipeline`` at import time and binds it
to the name ``pipeline``; it does not run it (``streamflow run JOB.py`` does).
Guard any script code with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from streamflow.errors import PipelineError

from .builder import Pipeline

if TYPE_CHECKING:
    import os


def load_job(path: str | os.PathLike[str]) -> Pipeline:
    """Import the job file at *path* and return its ``pipeline``.

    Blocking (imports the module, which runs its top-level code).

    Raises:
        PipelineError: if the file is missing, is not a Python module, or has
            no module-level ``pipeline`` that is a ``Pipeline``.
    """
    file = Path(path).resolve()
    if not file.is_file():
        raise PipelineError(f"job file {path} does not exist; give the path of a .py file")
    digest = hashlib.sha1(str(file).encode(), usedforsecurity=False).hexdigest()[:12]
    module_name = f"_streamflow_job_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise PipelineError(f"job file {path} cannot be imported; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    pipeline = getattr(module, "pipeline", None)
    if not isinstance(pipeline, Pipeline):
        raise PipelineError(
            f"job file {path} has no module-level `pipeline`: build a "
            "streamflow.Pipeline and assign it to the name `pipeline`"
        )
    return pipeline
