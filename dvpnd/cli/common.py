"""What every dvpnctl command shares: its errors, the --config option, loading the config, asking dvpnd."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from dvpnd.config.load import load_config
from dvpnd.config.model import DEFAULT_CONFIG, Config
from dvpnd.errors import DvpnError


class BadInput(DvpnError):
    """The command line asks for something impossible: exit 2."""


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path(os.environ.get("DVPN_CONFIG", DEFAULT_CONFIG)),
                   help="the node's dvpnd.yaml (default $DVPN_CONFIG or /etc/dvpn/dvpnd.yaml)")


def load(path: Path) -> Config:
    return load_config(path)


def request(args: argparse.Namespace, cmd: str, **extra: Any) -> dict[str, Any]:
    from dvpnd.serve import control

    config = load(args.config)
    return control.request(config.control_socket, cmd, **extra)
