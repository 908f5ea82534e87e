"""Debian's Chromium, which the ops page's browser test drives headless.

``python -m infra.browser`` (run by ``make setup``) installs the ``chromium`` package
when it is missing, the way the local stack installs PostgreSQL and Redis: with
apt-get as root, otherwise it says which command to run. Only that one test needs
it, so a missing browser never stops the setup.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from bankflow.errors import StackError
from bankflow.settings import get_settings
from infra.stack import LocalStack


def chromium_path() -> str | None:
    """The Chromium binary on PATH (Debian names it ``chromium``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def ensure_chromium(echo: Callable[[str], None] = print) -> str | None:
    found = chromium_path()
    if found is not None:
        return found
    try:
        LocalStack(get_settings(), echo)._apt_install("chromium", "Chromium")
    except StackError as exc:
        echo(f"{exc} (only the ops page's browser test needs it)")
        return None
    return chromium_path()


if __name__ == "__main__":
    ensure_chromium()
