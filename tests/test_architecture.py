"""The house: the library never imports the application, options have one source, runs one reader."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import qra
from qra.cli import app
from qra.experiment.config import TrainConfig
from qra.experiment.labels import report_layers
from qra.experiment.runs import FinishedRecord, RunDirectory, find_finished
from qra.featuremaps import FeatureMap, get
from qra.featuremaps.base import parameter_defaults, parameter_names

PACKAGE = Path(qra.__file__).parent
APPLICATION = ("qra.experiment", "qra.cli")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the qra modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            names |= {target} | {f"{target}.{alias.name}" for alias in node.names}
    return {name for name in names if name == "qra" or name.startswith("qra.")}


def test_no_library_module_imports_the_application():
    door = ("cli.py", "__main__.py")  # `python -m qra` runs the CLI
    library = [p for p in PACKAGE.rglob("*.py") if "experiment" not in p.parts and p.name not in door]
    assert len(library) >= 10
    offenders = {
        str(path.relative_to(PACKAGE.parent)): sorted(n for n in imported_modules(path) if n.startswith(APPLICATION))
        for path in library
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_training_does_not_call_back_into_evaluation_and_report_plots_have_no_circle():
    app_dir = PACKAGE / "experiment"
    assert not any(n.startswith("qra.experiment.evaluation") for n in imported_modules(app_dir / "training.py"))
    assert not any(n.startswith("qra.experiment.training") for n in imported_modules(app_dir / "evaluation.py"))
    assert not any(n.startswith("qra.experiment.report") for n in imported_modules(app_dir / "plots.py"))


class Base(FeatureMap):
    def __init__(self, d_in: int, width: int = 3, scale: float = 1.0) -> None:
        super().__init__(d_in)
        self.width, self.scale = width, scale

    @property
    def dim(self) -> int:
        return self.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x[..., : self.width]


class Child(Base):
    """Declares only its own parameter and re-declares a parent's default."""

    def __init__(self, d_in: int, offset: float = 0.0, scale: float = 2.0, **kwargs) -> None:
        super().__init__(d_in, scale=scale, **kwargs)
        self.offset = offset


class FixedWidth(Child):
    """Sets a parent's parameter itself: users may not pass it."""

    fixed_parameters = ("width",)

    def __init__(self, d_in: int, **kwargs) -> None:
        super().__init__(d_in, width=2, **kwargs)


def test_the_registry_follows_kwargs_up_the_class_hierarchy():
    assert parameter_names(Child) == ["offset", "scale", "width"]
    assert parameter_defaults(Child) == {"offset": 0.0, "scale": 2.0, "width": 3}
    fm = get(f"{__name__}:Child", d_in=4, width=2, offset=1.0)
    assert (fm.width, fm.scale, fm.offset) == (2, 2.0, 1.0)
    assert fm.featuremap_params == {"offset": 1.0, "scale": 2.0, "width": 2}
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) depth; accepted: offset, scale, width"):
        get(f"{__name__}:Child", d_in=4, depth=2)
    assert parameter_names(FixedWidth) == ["offset", "scale"]
    with pytest.raises(TypeError, match="width"):
        get(f"{__name__}:FixedWidth", d_in=4, width=3)


def test_backend_maps_declare_only_their_own_parameters():
    zz = qra.featuremaps.registry.feature_map_class("qiskit-zz")
    assert {"qubits", "reps", "entanglement", "engine", "device", "projection", "shots", "noise"} <= set(
        parameter_names(zz)
    )
    assert "circuit" not in parameter_names(zz) and "num_angles" not in parameter_names(zz)
    fm = get("pennylane-angle", d_in=4, qubits=2, rotation="Y", angle_scale=0.5)
    assert fm.angle_scale == 0.5 and fm.rotation == "Y" and fm.featuremap_params["engine"] == "framework"


def test_train_options_are_the_config_fields(monkeypatch):
    """`qra train` with no options builds TrainConfig's defaults: the CLI restates nothing."""
    captured = {}

    def fake_train(config, resume=False):
        captured["config"] = config
        raise ValueError("stop here")

    monkeypatch.setattr("qra.experiment.training.train", fake_train)
    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == 2 and "stop here" in result.output
    assert captured["config"] == TrainConfig()
    help_text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    for config_field in dataclasses.fields(TrainConfig):
        cli = config_field.metadata["cli"]
        flag = cli.flag if cli and cli.flag else "--" + config_field.name.replace("_", "-")
        assert flag in help_text, flag

    CliRunner().invoke(app, ["train", "--featuremap", "performer", "--layers", "1,3", "--fm", "m=16", "--sigma",
                             "2", "--robustness", "word-dropout=0.1", "--lr", "1e-4", "--device", "cpu"])  # fmt: skip
    config = captured["config"]
    assert (config.featuremap, config.layers, config.lr) == ("performer", [1, 3], 1e-4)
    assert config.featuremap_params == {"m": 16, "sigma": 2.0}
    assert config.robustness == {"word-dropout": [0.1]}
    assert config.output_dir.startswith(str(Path("runs") / "performer-softmax-L1,3-"))


def test_the_run_reader_translates_records_of_earlier_versions(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    settings = {"featuremap": "rff", "fm_params": {"m": 8}, "layers": [4, 5], "seed": 3, "unknown_later": 1}
    (run / "config.json").write_text(json.dumps({"config": settings, "model": {"layers": 6}}))
    directory = RunDirectory(run)
    assert not directory.is_finished and directory.metrics() == {}
    config = directory.config()
    assert config.featuremap_params == {"m": 8} and config.seed == 3
    directory.update_metrics("robustness", {"clean": {"accuracy": 0.5}})
    directory.update_metrics("robustness", {"x=0.1": {"accuracy": 0.4}}, merge=True)
    (found,) = find_finished([tmp_path])
    assert isinstance(found, FinishedRecord) and found.patched_layers == [4, 5] and found.model_layers == 6
    assert set(found.metrics["robustness"]) == {"clean", "x=0.1"}
    assert found.featuremap_params == {"m": 8}


def test_reports_show_the_layers_the_runs_patched():
    assert report_layers([{"layers": None}, {"layers": [1, 3]}, {"layers": [3]}]) == [1, 3]
    assert report_layers([{"layers": None, "attention_entropy_normalized_mean": [0.5] * 12}]) == [10, 11]
