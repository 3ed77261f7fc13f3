"""The entry-point registry: built-ins, a third-party plugin, broken and duplicate plugins, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import qra
from qra import featuremaps
from qra.cli import app

from .conftest import HEAD_DIM, tiny_bert

PLUGIN_MODULE = '''
import torch
from qra.featuremaps import FeatureMap


class Cubic(FeatureMap):
    """Polynomial features (x, x^3) scaled by alpha: a plugin's map."""

    def __init__(self, d_in, alpha=1.0):
        super().__init__(d_in)
        self.alpha = alpha

    @property
    def dim(self):
        return 2 * self.d_in

    def forward(self, x):
        return self.alpha * torch.cat([x, x**3], dim=-1)
'''


def install_fake_distribution(root, name, entry_points, modules):
    """A distribution on sys.path as pip would leave it: modules plus a dist-info with entry points."""
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"  # as wheels name it
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[qra.featuremaps]\n{lines}\n")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    install_fake_distribution(
        tmp_path,
        "qra-cubic",
        {"cubic": "qra_test_cubic:Cubic", "broken": "qra_test_broken:Map", "not-a-map": "qra_test_cubic:torch"},
        {"qra_test_cubic": PLUGIN_MODULE, "qra_test_broken": "raise ImportError('needs a quantum computer')\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("qra_test_cubic", "qra_test_broken"):
        sys.modules.pop(module, None)


def test_builtin_maps_are_registered_through_entry_points():
    listing = featuremaps.available()
    for name in ("rff", "performer"):
        info = listing[name]
        assert (info.distribution, info.status, info.version) == ("qra", "ok", qra.__version__)
        assert info.summary
    assert listing["rff"].target == "qra.featuremaps.rff:RandomFourierFeatures"


def test_a_third_party_plugin_is_found_built_and_used_in_a_model(plugins, tmp_path_factory):
    info = featuremaps.available()["cubic"]
    assert (info.distribution, info.version, info.status) == ("qra-cubic", "1.2.3", "ok")
    assert info.summary.startswith("Polynomial features")
    fm = featuremaps.get("cubic", d_in=4, alpha=0.5)
    torch.testing.assert_close(fm(torch.ones(2, 4)), torch.full((2, 8), 0.5))
    # ... and a model patched with it saves and reloads through the registry name.
    model = qra.patch(tiny_bert(), "cubic", featuremap_params={"alpha": 0.1}, layers=(5,))
    assert model.config.qra["featuremap"] == "cubic"
    assert model.config.qra["featuremap_params"] == {"alpha": 0.1}
    directory = tmp_path_factory.mktemp("saved")
    model.save_pretrained(directory)
    ids = torch.randint(5, 100, (1, 10))
    with torch.no_grad():
        reloaded = qra.load_patched(directory).eval()
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-6, atol=1e-7)


def test_a_broken_plugin_is_reported_and_does_not_break_the_others(plugins):
    listing = featuremaps.available()
    assert listing["broken"].status == "error"
    assert "needs a quantum computer" in listing["broken"].error
    assert listing["not-a-map"].status == "error"
    assert "not a qra.featuremaps.FeatureMap" in listing["not-a-map"].error
    assert listing["rff"].status == listing["cubic"].status == "ok"
    with pytest.raises(RuntimeError, match="failed to load: ImportError: needs a quantum computer"):
        featuremaps.get("broken", d_in=4)
    assert featuremaps.get("rff", d_in=4).dim == 128


def test_a_name_registered_twice_is_refused_not_guessed(plugins, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    install_fake_distribution(other, "qra-rival", {"cubic": "qra_test_cubic:Rival"}, {})
    sys.path.insert(0, str(other))
    try:
        assert "registered more than once" in featuremaps.available()["cubic"].error
        with pytest.raises(RuntimeError, match="registered more than once"):
            featuremaps.get("cubic", d_in=4)
    finally:
        sys.path.remove(str(other))


def test_unknown_name_lists_the_registered_maps_and_the_closest():
    with pytest.raises(featuremaps.UnknownFeatureMapError) as error:
        featuremaps.get("rf", d_in=8)
    message = str(error.value)
    assert "Did you mean 'rff'?" in message
    assert "performer" in message and "rff" in message


def test_unknown_parameter_names_the_accepted_ones():
    accepted = "accepted: m, sigma, seed, orthogonal, sincos, learn_sigma"
    with pytest.raises(TypeError, match=rf"unknown parameter\(s\) sigmaa; {accepted}"):
        featuremaps.get("rff", d_in=8, sigmaa=2.0)


def test_a_map_by_import_path_needs_no_registration():
    fm = featuremaps.get("tests.conftest:ScaledIdentity", d_in=HEAD_DIM)
    assert fm.dim == HEAD_DIM


def test_featuremap_params_record_every_setting_with_defaults():
    assert featuremaps.get("performer", d_in=8, m=16).featuremap_params == {
        "m": 16,
        "seed": 0,
        "orthogonal": True,
        "scale": None,
        "stabilize": True,
    }


def test_cli_lists_the_registry(plugins):
    result = CliRunner().invoke(app, ["featuremaps", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert listing["rff"]["distribution"] == "qra"
    assert listing["broken"]["status"] == "error"
    table = CliRunner().invoke(app, ["featuremaps"], env={"COLUMNS": "240"})  # wide enough to keep cells on one line
    assert table.exit_code == 0
    for word in ("rff", "performer", "cubic", "qra-cubic", "needs a quantum computer"):
        assert word in table.output


def test_installed_console_script_runs():
    result = subprocess.run(["qra", "featuremaps", "--json"], capture_output=True, text=True, check=True)
    assert {"rff", "performer"} <= set(json.loads(result.stdout))


def test_a_plugin_that_takes_a_builtin_name_or_exits_on_import_is_listed_broken(plugins, tmp_path):
    """A plugin registering 'rff' (qra's own name) or calling exit() at import breaks only itself."""
    other = tmp_path / "squatter"
    other.mkdir()
    install_fake_distribution(other, "qra-squatter", {"rff": "qra_test_cubic:Cubic", "quits": "qra_test_quits:Map"},
                              {"qra_test_quits": "raise SystemExit('plugin gave up')\n"})  # fmt: skip
    sys.path.insert(0, str(other))
    try:
        listing = featuremaps.available()
        assert listing["rff"].status == "ok" and listing["rff"].distribution == "qra"
        squatter = listing["rff (qra-squatter)"]
        assert squatter.status == "error" and "belongs to qra's own map" in squatter.error
        assert listing["quits"].status == "error" and "plugin gave up" in listing["quits"].error
        assert type(featuremaps.get("rff", d_in=4)).__name__ == "RandomFourierFeatures"
        assert featuremaps.get("cubic", d_in=4).dim == 8
        with pytest.raises(RuntimeError, match="failed to load: SystemExit: plugin gave up"):
            featuremaps.get("quits", d_in=4)
        table = CliRunner().invoke(app, ["featuremaps"], env={"COLUMNS": "240"})
        assert table.exit_code == 0, table.output
        assert "qra-squatter" in table.output and "plugin gave up" in table.output
    finally:
        sys.path.remove(str(other))
        sys.modules.pop("qra_test_quits", None)


def test_featuremaps_table_fits_an_80_column_terminal(plugins):
    result = CliRunner().invoke(app, ["featuremaps"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for name in ("rff", "performer", "cubic", "broken"):
        assert f"│ {name} " in result.output
