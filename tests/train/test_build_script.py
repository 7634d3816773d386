"""scripts/build_small_model.sh runs for hours before its transformer stages start: check here that every stage's
settings make a valid config of its preset and that each stage starts from the export of the one before it."""

import json
import re
import shlex
from pathlib import Path

from astra.train.cli import parse_overrides
from astra.train.config import get_preset

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build_small_model.sh"
FLAGS = {"--set", "--preset", "--out", "--resume"}  # all a stage's `astra train` call may use


def _stages(text: str) -> list[tuple[str, str, dict]]:
    """(preset, out dir, --set overrides) of every `astra train` call, with the script's default step counts."""
    defaults = dict(re.findall(r"^(\w+)=\$\{\1:-([^}]*)\}", text, flags=re.M))
    stages = []
    for line in text.replace("\\\n", " ").splitlines():
        if not line.startswith("astra train "):
            continue
        expanded = re.sub(r"\$(\w+)", lambda m: defaults.get(m.group(1), "$" + m.group(1)), line)
        words = shlex.split(expanded)[2:]
        settings = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
        options = {words[i]: words[i + 1] for i, word in enumerate(words) if word in ("--preset", "--out")}
        assert set(words) - set(settings) - set(options.values()) <= FLAGS, words
        stages.append((options["--preset"], options["--out"], parse_overrides(settings)))
    return stages


def test_build_script_stages_are_valid_and_chained():
    text = SCRIPT.read_text()
    stages = _stages(text)
    assert len(stages) >= 2
    previous = None
    for preset, out, overrides in stages:
        config = get_preset(preset).with_updates(overrides)
        config.validate()
        assert overrides.get("init_from") == (None if previous is None else f"{previous}/export"), out
        # the motion prior is fitted only in the last stage; before it, it stays at zero
        assert (config.motion_fit_batches > 0) == (out == stages[-1][1]), out
        previous = out
    lineage = json.loads((ROOT / "weights" / "astra-small" / "config.json").read_text())["metadata"]["lineage"]
    assert sum(overrides["steps"] for *_, overrides in stages) == sum(stage["steps"] for stage in lineage.values())
    assert f'astra eval --checkpoint "{stages[-1][1]}/export"' in text
