import json
import subprocess
import sys

import pytest

from manifold_aps.cli import main


def test_every_command_has_help():
    for command in ("train-prior",):
        result = subprocess.run([sys.executable, "-m", "manifold_aps.cli", command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "--task" in result.stdout


def test_train_prior_smoke_writes_a_loadable_prior(mirror, tmp_path, capsys):
    from manifold_aps.diffusion import load_prior

    config = tmp_path / "options.json"
    config.write_text(json.dumps({"steps": 3, "network_config": {"width": 32, "depth": 1}}))
    output = tmp_path / "prior.pt"
    assert main(["train-prior", "--task", "era5_proxy", "--scale", "smoke", "--limit", "8", "--output", str(output),
                 "--config", str(config), "--steps", "4"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps"] == 4  # the command line wins over the config file
    prior = load_prior(output)
    assert prior.layout.num_vertices == 4140 and prior.normalizer.minimum == pytest.approx(202.66)


def test_bad_config_key_is_named(tmp_path):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"stepz": 3}))
    with pytest.raises(SystemExit):
        main(["train-prior", "--task", "era5_proxy", "--output", str(tmp_path / "p.pt"), "--config", str(config)])
