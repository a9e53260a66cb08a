import importlib.util
from pathlib import Path

import pytest

from modelserve.backend import Backend, create_backend, has_batch_method
from modelserve.errors import ModelLoadError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ZOO = str(FIXTURES / "Model_ZOO")


def legacy_class() -> type:
    spec = importlib.util.spec_from_file_location("legacy_backend", FIXTURES / "algopkg" / "Legacy" / "backend.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.algo_backend


def test_original_template_runs_unchanged() -> None:
    backend = create_backend(legacy_class(), ZOO, ["legacy_model.txt"])
    backend.reconfigure({"threshold": 1.5})
    assert backend.infer({"values": [1, 2, 3]}) == {"model": "legacy-model-v1", "sum": 6.0, "above": 2}
    assert backend.info.startswith("Result from ")


def test_original_template_load_failure_is_not_swallowed(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("broken")
    with pytest.raises(ModelLoadError, match="cannot parse the model file"):
        create_backend(legacy_class(), str(tmp_path), ["m.txt"])


def test_original_template_missing_model_is_not_swallowed() -> None:
    with pytest.raises(ModelLoadError, match="_model_init was never reached"):
        create_backend(legacy_class(), ZOO, ["absent.txt"])


def test_original_template_gets_zoo_and_files_in_model_path() -> None:
    seen = {}

    class Original:
        def __init__(self, model_path):
            seen["model_path"] = model_path
            self._model_init()

        def _model_init(self, model_path_lst=None):
            pass

        def _model_inference(self, param_dict):
            return param_dict

    create_backend(Original, "/zoo", ["a.pb", "b.pb"])
    assert seen["model_path"] == "/zoo,a.pb,b.pb"
    create_backend(Original, "/zoo", [])
    assert seen["model_path"] == ""


def test_new_style_backend() -> None:
    class Doubler(Backend):
        def load(self, model_paths):
            self.paths = model_paths

        def infer(self, params):
            return params["x"] * 2

    backend = create_backend(Doubler, "/zoo/", ["m.bin"])
    assert backend.paths == ["/zoo/m.bin"] and backend.infer({"x": 2}) == 4
    assert backend.infer_batch([{"x": 1}, {"x": 3}]) == [2, 6]
    assert not has_batch_method(backend)


def test_load_errors_become_model_load_errors() -> None:
    class Broken(Backend):
        def load(self, model_paths):
            raise OSError("disk gone")

    with pytest.raises(ModelLoadError, match="Broken.load failed: OSError"):
        create_backend(Broken, "/zoo", [])


def test_a_class_that_is_no_backend() -> None:
    with pytest.raises(TypeError, match="is not a backend"):
        create_backend(dict, "/zoo", [])
