"""scripts/gpu_train.sh runs once, on a lent GPU machine that has no network and no astra install, within a fixed
lease: run it here end to end at toy size (the tiny preset on CPU), as the machine would, with the packages that
machine lacks made unimportable."""

import os
import subprocess
import sys
from pathlib import Path

from astra.data.pack import pack_latents
from astra.model.checkpoints import load_astra
from astra.train.config import get_preset
from astra.train.logging import read_metrics
from astra.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_train.sh"
ABSENT_THERE = ("av", "pybullet", "vizdoom", "fastapi", "uvicorn", "websockets")  # not in the GPU image

BLOCKER = f"""
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT_THERE!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
sys.meta_path.insert(0, _Absent())
"""


def test_the_gpu_script_unpacks_sizes_trains_and_exports_without_an_install(tmp_path, latent_folder):
    specs = [("doom", "keyboard_mouse", 8, "train")] * 3 + [("robot", "robot7", 7, "train")] * 2
    specs += [("doom", "keyboard_mouse", 8, "heldout")]
    latents = latent_folder(tmp_path / "latents", specs, channels=4, size=8, frames=7)
    pack_latents(latents, tmp_path / "latents.pack", split=None, bits=6, parts=2, progress=False)
    (tmp_path / "moved").mkdir()  # as the first device call leaves the first part: outside the tree
    (tmp_path / "latents-1of2.pack").rename(tmp_path / "moved" / "latents-1of2.pack")
    packs = [tmp_path / "moved" / "latents-1of2.pack", tmp_path / "latents-2of2.pack", tmp_path / "lost-3of3.pack"]
    tiny = get_preset("astra-tiny").replace(model_overrides={"text_dim": 0, "text_len": 0}, steps=0)
    start = Trainer(tiny, tmp_path / "start", progress=False).export()  # stands in for the shipped weights
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PACK": " ".join(map(str, packs)), "PRESET": "astra-tiny", "RECIPE": "continue", "INIT": str(start),
           "MINUTES": "0.05", "CLOCK_MARGIN": "40", "BATCH": "2", "PROBE_STEPS": "4", "VALIDATIONS": "1", "WORK": str(tmp_path / "work"),
           "OUT": str(tmp_path / "out"), "EXTRA": "model_overrides.text_dim=0 model_overrides.text_len=0"}  # fmt: skip
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "probe:" in done.stderr and "samples/s" in done.stderr
    assert "lost-3of3.pack is missing; training without it" in done.stderr
    assert f"{len(specs)} clips unpacked" in done.stdout  # both parts that arrived
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "metrics.csv", "validation.csv"}
    model, metadata = load_astra(out)
    steps = int(done.stdout.split("RECIPE=continue, ")[1].split()[0])
    assert metadata["step"] == steps == metadata["train_config"]["steps"]
    assert metadata["train_config"]["data"] == str(tmp_path / "work" / "latents")
    assert metadata["train_config"]["init_from"] == str(start)
    assert read_metrics(out, "validation.csv")[-1]["step"] == metadata["step"]
    assert sum(p.numel() for p in model.parameters()) > 0


def test_the_gpu_scripts_default_recipe_trains_from_scratch_then_fits_the_prior(tmp_path, latent_folder):
    specs = [("doom", "keyboard_mouse", 8, "train")] * 3 + [("doom", "keyboard_mouse", 8, "heldout")]
    pack_latents(latent_folder(tmp_path / "latents", specs, channels=4, size=8, frames=7), tmp_path / "p.pack",
                 split="train", progress=False)  # fmt: skip
    overrides = "model_overrides.text_dim=0 model_overrides.text_len=0 model_overrides.motion_prior=true copy_prior=true"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PACK": str(tmp_path / "p.pack"),
           "PRESET": "astra-tiny", "MINUTES": "0.05", "CLOCK_MARGIN": "40", "BATCH": "2", "PROBE_STEPS": "4",
           "VALIDATIONS": "2", "MOTION_FIT_BATCHES": "2", "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"),
           "EXTRA": overrides}  # fmt: skip
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "motion prior fitted" in done.stdout and "RECIPE=scratch" in done.stdout
    assert "no held-out clips (pack with --split all); training without validation" in done.stderr
    _, metadata = load_astra(tmp_path / "out")
    assert metadata["train_config"]["init_from"] == str(tmp_path / "work" / "flow" / "export")
    assert (tmp_path / "out" / "flow" / "metrics.csv").exists()
    env["RECIPE"] = "finetune"
    refused = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "RECIPE must be continue or scratch" in refused.stderr
