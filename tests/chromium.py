"""Debian's Chromium as the browser tests and docs/screenshots.py launch it."""

CHROMIUM = "/usr/bin/chromium"
# Headless, offline and quiet: no GPU, no sandbox (containers), no background network traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
