"""`astra info`: parameter counts on the meta device, for presets and config files."""

import re

import pytest

from astra.cli import main
from astra.model.checkpoints import save_astra
from astra.model.config import AstraConfig
from astra.model.transformer import AstraTransformer


def numbers(text, label):
    line = next(line for line in text.splitlines() if line.startswith(label))
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]{3,}", line)]


def test_wan_preset_matches_the_paper(capsys):
    assert main(["info", "--config", "wan2.1-t2v-1.3b"]) == 0
    out = capsys.readouterr().out
    backbone = numbers(out, "wan backbone")[0]
    total, trainable = numbers(out, "total")
    assert abs(backbone - 1.42e9) / 1.42e9 < 0.01
    assert abs(trainable - 366.8e6) / 366.8e6 < 0.02
    assert "vs the paper's 366.8 M" in out


def test_small_preset_and_json_config(tmp_path, capsys):
    assert main(["info", "--config", "astra-small"]) == 0
    small_total = numbers(capsys.readouterr().out, "total")
    path = tmp_path / "config.json"
    path.write_text(AstraConfig.from_preset("astra-small").replace(num_layers=4).to_json())
    assert main(["info", "--config", str(path)]) == 0
    json_total = numbers(capsys.readouterr().out, "total")
    assert 0 < json_total[0] < small_total[0]


def test_a_checkpoint_folder_or_its_config_json(tmp_path, capsys):
    """A checkpoint's config.json holds the model's config under "config", beside its format and metadata."""
    checkpoint = save_astra(AstraTransformer(AstraConfig.from_preset("astra-tiny")), tmp_path / "model", {})
    assert main(["info", "--config", "astra-tiny"]) == 0
    preset_total = numbers(capsys.readouterr().out, "total")
    for given in (checkpoint, checkpoint / "config.json"):
        assert main(["info", "--config", str(given)]) == 0
        assert numbers(capsys.readouterr().out, "total") == preset_total


@pytest.mark.parametrize("content, message", [(None, "neither a preset"), ('{"dim": 7, "bogus": 1}', "bogus")])
def test_bad_config_is_one_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    assert main(["info", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err
