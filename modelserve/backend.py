"""The backend contract, the adapter for packages written for the original runtime, and
finding a section's backend class in the uploaded package."""

from __future__ import annotations

import importlib
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, cast

from modelserve.errors import ModelLoadError


class Backend:
    """Subclass this in `algopkg/<Package>/backend.py` and name the class in conf.ini.

    The runtime creates one instance per replica, calls `load` once with the
    model files of the section, then `infer` for each request's JSON params.
    Every hook has a default; only `infer` is required.

    Example:
        ```python
        import numpy as np
        from modelserve import Backend, BadRequest

        class Classifier(Backend):
            def load(self, model_paths):
                self.weights = np.load(model_paths[0])

            def infer(self, params):
                if "x" not in params:
                    raise BadRequest("params need 'x'")
                return {"score": float(np.dot(self.weights, params["x"]))}
        ```
    """

    #: Returned as `info` in every response.
    info: Any = f"Result from {socket.gethostname()}"
    #: Optional pydantic model of the params: requests are validated before the model runs, every
    #: bad field named in one 400, and `infer` gets a `Params` instance instead of a dict.
    Params: Any = None
    #: Optional pydantic model of the result, for the route's OpenAPI document.
    Result: Any = None
    #: Optional tensors for the Open Inference Protocol (`modelserve.Tensor`): its metadata lists them,
    #: and protocol requests are checked against the inputs.
    inputs: Any = ()
    outputs: Any = ()

    def load(self, model_paths: list[str]) -> None:
        """Load the model files (absolute paths, in conf.ini order). Raise if they can't be loaded."""

    def infer(self, params: dict[str, Any]) -> Any:
        """Answer one request; the return value (JSON-serializable, numpy allowed) is `result`."""
        raise NotImplementedError(f"{type(self).__name__} must define infer(self, params)")

    # A backend may also define `infer_stream(self, params)`, a generator or async generator: its
    # route then streams each item as it is produced (NDJSON lines, or Server-Sent Events).

    def infer_batch(self, batch: list[dict[str, Any]]) -> list[Any]:
        """Answer several requests at once; return one result per params, in order.

        Override it to batch on the accelerator; the runtime then groups
        concurrent requests (conf.ini `max_batch_size`, `batch_wait_ms`).
        """
        return [self.infer(params) for params in batch]

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Take a new conf.ini `user_config` without restarting the replica."""

    def check_health(self) -> None:
        """Raise if the replica is no longer fit to serve; Ray Serve then replaces it."""

    # A backend of a section with many models (`models`) may also define `unload(self)`: called when
    # its model is unloaded to make room for another (least recently used first).


def has_batch_method(backend: Backend) -> bool:
    return type(backend).infer_batch is not Backend.infer_batch


def has_infer_method(backend: Backend) -> bool:
    return type(backend).infer is not Backend.infer


def has_stream_method(backend: Backend) -> bool:
    return callable(getattr(type(backend), "infer_stream", None))


class _LegacyBackend(Backend):
    """Runs a class written for the original runtime, unchanged.

    Such a class takes `model_path = "<zoo>,<file1>,..."` in `__init__`, which
    catches and prints any load error. We watch its `_model_init` to know
    whether the model really loaded, so a failed load is never reported healthy.
    """

    def __init__(self, cls: type, model_zoo: str, model_files: list[str]) -> None:
        self._cls = cls
        self._model_path = ",".join([model_zoo, *model_files]) if model_files else ""
        self._instance: Any = None

    def load(self, model_paths: list[str]) -> None:
        instance = cast(Any, self._cls).__new__(self._cls)
        outcome: dict[str, str] = {}
        model_init = getattr(instance, "_model_init", None)
        if model_init is not None:

            def watched_model_init(*args: Any, **kwargs: Any) -> Any:
                try:
                    value = model_init(*args, **kwargs)
                except BaseException:
                    outcome["error"] = traceback.format_exc()
                    raise
                outcome["ok"] = "yes"
                return value

            instance._model_init = watched_model_init
        try:
            instance.__init__(self._model_path)
        except Exception as exc:
            raise ModelLoadError(f"{self._cls.__name__}.__init__ failed: {exc!r}") from exc
        if model_init is not None and "ok" not in outcome:
            detail = outcome.get("error") or "_model_init was never reached (a model file is missing?)"
            raise ModelLoadError(f"{self._cls.__name__} did not load its model:\n{detail}")
        self._instance = instance
        self.info = getattr(instance, "info_msg", Backend.info)
        self.inputs, self.outputs = getattr(instance, "inputs", ()), getattr(instance, "outputs", ())

    def infer(self, params: dict[str, Any]) -> Any:
        return self._instance._model_inference(params)

    def reconfigure(self, config: dict[str, Any]) -> None:
        hook = getattr(self._instance, "reconfigure", None)
        if hook is not None:
            hook(config)

    def check_health(self) -> None:
        hook = getattr(self._instance, "check_health", None)
        if hook is not None:
            hook()


def create_backend(cls: type, model_zoo: str, model_files: list[str]) -> Backend:
    """Instantiate and load a backend class, new-style or original-style.

    Raises:
        ModelLoadError: the model did not load; the message carries the cause.
        TypeError: the class follows neither contract.
    """
    paths = [f"{model_zoo.rstrip('/')}/{name}" for name in model_files]
    backend: Backend
    if isinstance(cls, type) and issubclass(cls, Backend):
        backend = cls()
    elif hasattr(cls, "_model_inference"):
        backend = _LegacyBackend(cls, model_zoo, model_files)
    else:
        raise TypeError(
            f"{getattr(cls, '__name__', cls)!r} is not a backend: subclass modelserve.Backend "
            "(define infer) or define _model_inference as in the original template"
        )
    try:
        backend.load(paths)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{type(backend).__name__}.load failed: {exc!r}") from exc
    return backend


def use_uploaded_package(package: str, search_path: str | None = None) -> str | None:
    """Put the uploaded snapshot of `algopkg/<package>` first on sys.path, so a stray `algopkg/`
    (the worker's cwd, a project on PYTHONPATH) never shadows the code the section was deployed with.

    Ray puts a section's `py_modules` first on PYTHONPATH; the first entry holding the
    package is the upload. Returns that entry, or None where there is none (tests, local runs).
    """
    path = os.environ.get("PYTHONPATH", "") if search_path is None else search_path
    entry = next((e for e in path.split(os.pathsep) if e and Path(e, "algopkg", package, "backend.py").is_file()), None)
    if entry is None:
        return None
    sys.path[:] = [entry, *(p for p in sys.path if p != entry)]
    loaded = sys.modules.get("algopkg")
    if loaded is not None and not any(str(p).startswith(entry) for p in getattr(loaded, "__path__", [])):
        for name in [m for m in sys.modules if m == "algopkg" or m.startswith("algopkg.")]:
            del sys.modules[name]
    return entry


def load_backend_class(package: str, class_name: str) -> type:
    use_uploaded_package(package)
    module = importlib.import_module(f"algopkg.{package}.backend")
    cls = getattr(module, class_name)
    if not isinstance(cls, type):
        raise TypeError(f"algopkg.{package}.backend.{class_name} is not a class")
    return cls
