"""`relay`: start the SMTP relay (wired up by the relay issue)."""

from __future__ import annotations

import sys
from typing import NoReturn

from relay.settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    print(f"relay not built yet (would listen on {settings.listen})", file=sys.stderr)
    return 1


def run() -> NoReturn:
    sys.exit(main())
