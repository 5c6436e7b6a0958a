"""A loss from outside prefkit: one module that calls `register_loss`, loaded as a plugin
(PREFKIT_PLUGINS, prefkit.plugins) and run through the CLI with its own option."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from train_helpers import make_pairs, write_jsonl

PLUGIN = textwrap.dedent('''
    """A margin DPO loss, registered from outside prefkit."""
    import torch.nn.functional as F

    from prefkit.losses import LossOutput, register_loss


    @register_loss("mynewloss", options={"margin": "subtracted from beta * d inside the sigmoid"})
    def mynewloss(logps, *, beta, weights=None, margin=0.0):
        """Margin DPO: -log s(beta d - margin)."""
        dw, dl = logps.logratios()
        losses = -F.logsigmoid(beta * (dw - dl) - margin)
        if weights is not None:
            losses = losses * weights
        return LossOutput(losses, (beta * dw).detach(), (beta * dl).detach())
''')


def _run(args, tmp_path, plugins="mynewloss_plugin"):
    env = dict(os.environ, PREFKIT_PLUGINS=plugins, TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "prefkit", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_loss_registered_by_a_plugin_trains_through_the_cli(tiny_model_dir, tmp_path):
    (tmp_path / "mynewloss_plugin.py").write_text(PLUGIN)
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    out = tmp_path / "out"
    help_text = _run(["train", "dpo", "--help"], tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    assert "mynewloss: Margin DPO" in help_text.stdout and "margin (default 0.0)" in help_text.stdout

    res = _run(["train", "dpo", data, str(out), "--model", tiny_model_dir, "--loss-type", "mynewloss",
                "--loss-options", "margin=0.5", "--beta", "0.1", "--max-steps", "1", "--logging-steps", "1",
                "--per-device-train-batch-size", "4", "--max-length", "64", "--max-prompt-length", "32",
                "--precision", "fp32", "--ref-cache-dir", str(tmp_path / "cache")], tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "prefkit_train_report.json").read_text())
    assert report["config"]["loss_type"] == "mynewloss" and report["config"]["loss_options"] == {"margin": 0.5}
    # the first step's policy is its reference: d = 0, so the loss is -log s(-0.5) = log(1 + e^0.5)
    first = next(h for h in report["log_history"] if "loss" in h)
    assert math.isclose(first["loss"], math.log1p(math.exp(0.5)), abs_tol=1e-4), first

    # an option the loss does not take is a usage error naming the ones it does
    bad = _run(["train", "dpo", data, str(tmp_path / "bad"), "--model", tiny_model_dir, "--loss-type", "mynewloss",
                "--loss-options", "gamma=1"], tmp_path)
    assert bad.returncode == 2 and "takes no option(s) 'gamma'; it accepts: margin" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_plugin_that_cannot_load_is_a_one_line_usage_error(tmp_path):
    res = _run(["train", "dpo", "--help"], tmp_path, plugins="no_such_plugin_module")
    assert res.returncode == 2
    assert "plugin 'no_such_plugin_module' (named by PREFKIT_PLUGINS) failed to load" in res.stderr
    assert "Traceback" not in res.stderr


def test_plugins_listed_by_entry_points_load_too(tmp_path, monkeypatch):
    """The `prefkit.plugins` entry-point group: an installed distribution naming a module."""
    from prefkit import plugins

    (tmp_path / "ep_loss_plugin.py").write_text(PLUGIN.replace("mynewloss", "eploss"))
    dist = tmp_path / "ep_loss_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-loss-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[prefkit.plugins]\neploss = ep_loss_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PREFKIT_PLUGINS", raising=False)
    assert ("ep_loss_plugin", "entry point 'eploss' in group 'prefkit.plugins'") in plugins.plugin_specs()
    plugins.load_plugins()
    from prefkit.losses import loss_spec

    assert loss_spec("eploss").options["margin"].default == 0.0
    assert Path(sys.modules["ep_loss_plugin"].__file__).parent == tmp_path
