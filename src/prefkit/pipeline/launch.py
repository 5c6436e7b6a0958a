"""The train stage in several processes: the stage's DPOConfig is written beside it and
`prefkit train dpo --config` is started through torchrun (`num_processes`) or, with a
`config_file`, through `accelerate launch` (DDP, FSDP or DeepSpeed as that file says). The
trainer's own checkpoints make the multi-process stage resumable like the single-process one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from prefkit.errors import PrefkitError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(config_path: Path, launch: dict) -> list[str]:
    n = int(launch.get("num_processes") or 1)
    train = ["-m", "prefkit", "train", "dpo", "--config", str(config_path)]
    if launch.get("config_file"):
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch["config_file"]),
                "--num_processes", str(n), *train]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
            "--master_port", str(_free_port()), *train]


def train_in_processes(cfg, launch: dict, stage_dir: Path) -> None:
    config_path = cfg.save(stage_dir / "train_config.yaml")
    cmd = launch_command(config_path, launch)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise PrefkitError(f"the train stage's processes failed (exit {proc.returncode}): {' '.join(cmd)}")
