"""`relay-admin` command module: send_test (not built yet)."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    pass
