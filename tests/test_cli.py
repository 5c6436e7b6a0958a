import subprocess
import sys

from prefkit.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name, _, _ in COMMANDS:
        assert name in out


def test_every_command_has_its_own_help():
    for name, _, _ in COMMANDS:
        res = subprocess.run([sys.executable, "-m", "prefkit", name, "--help"], capture_output=True, text=True)
        assert res.returncode == 0, (name, res.stderr)
        assert "usage: prefkit " + name in res.stdout
