"""Who may do what: the admin token, slowing down wrong codes and tokens, the client address."""

from __future__ import annotations

import contextlib
import hmac
import os

import gradio as gr

import study
import study.throttle

ADMIN_OFF = (
    "The results page is switched off on this server. To switch it on, set the environment "
    "variable `DPE_ADMIN_TOKEN` to a long random secret and restart the app (on a Hugging Face "
    "Space: *Settings → Variables and secrets → New secret*), then enter that secret here."
)

# Wrong invite codes and admin tokens, counted per address. Process-wide on purpose: a
# guesser can open a fresh session for every try, so per-session state would slow no one.
JOIN_ATTEMPTS = study.throttle.Throttle()
ADMIN_ATTEMPTS = study.throttle.Throttle()


def client(request: gr.Request | None) -> str | None:
    """The address a request came from; None for a call from this process (tests, scripts).

    Behind a reverse proxy, list its address in ``FORWARDED_ALLOW_IPS`` so uvicorn puts the
    visitor's address here instead of the proxy's.
    """
    if request is None:
        return None
    return getattr(getattr(request, "client", None), "host", None) or "unknown"


def admin_enabled() -> bool:
    """Whether ``DPE_ADMIN_TOKEN`` is set, i.e. the results page is switched on."""
    return bool(os.environ.get("DPE_ADMIN_TOKEN"))


def require_admin(token: str | None, request: gr.Request | None = None) -> None:
    """Raise ``gr.Error`` unless ``token`` is the admin token; wrong tokens are slowed down.

    Checked on every researcher call: private endpoints can still be called over HTTP
    (/gradio_api/call/<name>). The comparison takes constant time.
    """
    expected = os.environ.get("DPE_ADMIN_TOKEN", "")
    if not expected:
        raise gr.Error(ADMIN_OFF)
    address = client(request)
    try:
        ADMIN_ATTEMPTS.check(address)
    except study.StudyError as exc:
        raise gr.Error(str(exc)) from None
    sent = str(token or "").encode("utf-8", "surrogatepass")  # any text a client sends
    if not hmac.compare_digest(sent, expected.encode("utf-8")):
        ADMIN_ATTEMPTS.failed(address)
        raise gr.Error("That admin token is not right.")
    ADMIN_ATTEMPTS.succeeded(address)


def invite_guard(
    code: str | None, request: gr.Request | None = None
) -> contextlib.AbstractContextManager:
    """Wrap the check of an invite code: repeated wrong codes from one address must wait.

    An empty field is not a guess, so it is not counted.
    """
    address = client(request) if (code or "").strip() else None
    return JOIN_ATTEMPTS.guard(address, study.InvalidInviteError)
