from astra.cli import main


def test_cli_resume_and_export_use_the_runs_saved_settings(tmp_path, capsys):
    """A checkpoint holds only trainable weights: --resume/--export must rebuild the rest as the run did, and the
    export's metadata must describe that run, not the preset the command line happens to name."""
    from astra.model.checkpoints import astra_metadata

    out = str(tmp_path / "run")
    train = ["train", "--preset", "astra-tiny", "--out", out, "--no-progress"]
    assert main([*train, "--set", "steps=2", "--set", "lr=0.003", "--set", "save_every=1"]) == 0
    assert main(["train", "--out", out, "--export"]) == 0  # no preset named: the saved config, not astra-small's
    metadata = astra_metadata(tmp_path / "run" / "export")
    assert metadata["train_config"]["steps"] == 2 and metadata["train_config"]["lr"] == 0.003
    assert metadata["train_config"]["model"] == "astra-tiny" and metadata["step"] == 2
    assert main([*train, "--resume", "--set", "lr=0.1", "--set", "flow.shift=3"]) != 0
    assert "flow.shift: 1.0 -> 3.0; lr: 0.003 -> 0.1" in capsys.readouterr().err
    assert main([*train, "--resume", "--set", "steps=3"]) == 0  # the step count may grow
    assert astra_metadata(tmp_path / "run" / "export")["step"] == 3
    assert astra_metadata(tmp_path / "run" / "export")["train_config"]["lr"] == 0.003


def test_the_bf16_hint_names_the_setting_only_for_an_auto_cpu_run_on_a_cpu_with_amx(monkeypatch):
    import torch

    from astra.train.cli import cpu_bf16_hint
    from astra.train.config import get_preset

    auto, cpu = get_preset("astra-tiny"), torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert "--set mixed_precision=bf16" in cpu_bf16_hint(auto, cpu)
    assert cpu_bf16_hint(auto.replace(mixed_precision="no"), cpu) is None  # the user chose
    assert cpu_bf16_hint(auto, torch.device("cuda")) is None  # auto is bf16 there already
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert cpu_bf16_hint(auto, cpu) is None
