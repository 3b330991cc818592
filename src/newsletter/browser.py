"""Finding and driving headless Chromium, for preview screenshots and the page tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

from newsletter.errors import NewsletterError

# Flags that work on locked-down machines: no sandbox as root, no GPU, and no background
# connections, which a closed network would refuse many at a time.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = (
    "install Chromium to take screenshots: on Debian or Ubuntu `sudo apt-get install chromium`, "
    "or run `bash scripts/install-browser` in the project's repository"
)


def find_chromium() -> str | None:
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    found = find_chromium()
    if found is None:
        raise NewsletterError(f"headless Chromium was not found; {INSTALL_HINT}")
    return found


def _run_headless(arguments: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run Chromium headless with a throwaway profile and ``arguments``."""
    chromium = require_chromium()
    with tempfile.TemporaryDirectory(prefix="newsletter-chromium-") as profile:
        command = [chromium, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *arguments]
        try:
            return subprocess.run(
                command, capture_output=True, timeout=timeout, check=False, text=True
            )
        except subprocess.TimeoutExpired:
            raise NewsletterError(
                f"Chromium took over {timeout:.0f} s on {arguments[-1]}"
            ) from None


def dump_dom(url: str, *, width: int = 1000, timeout: float = 60, budget_ms: int = 2000) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``)."""
    arguments = [
        f"--window-size={width},2000",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
    ]
    return _run_headless(arguments, timeout=timeout).stdout
