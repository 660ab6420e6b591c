"""Who may do what: the admin token, slowing down wrong codes and tokens, the client."""

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

# Wrong invite codes and admin tokens are counted twice: per browser session (address and
# Gradio's session id), which slows a mistyping rater or a guessing script, and per address
# with a far higher allowance, which caps a guesser who opens a fresh session for every try.
# A hospital's departments share one NAT address, so one colleague's typos must never lock
# out another: only the ceiling is shared, and honest typing never reaches it. Process-wide
# on purpose (per-session state would slow no one), and the admin token has limits and
# wording of its own.
NETWORK_WRONG = (
    "This study has received many wrong codes from your network in the last minutes; "
    "wait {wait} s and try again. Ask the study team if your code keeps being refused."
)
JOIN_ATTEMPTS = study.throttle.Throttle()
JOIN_CEILING = study.throttle.Throttle(free=100, max_delay=30.0, message=NETWORK_WRONG)
ADMIN_WRONG = (
    "Too many wrong admin tokens from this browser; wait {wait} s. The token is the value "
    "of DPE_ADMIN_TOKEN on the server."
)
ADMIN_ATTEMPTS = study.throttle.Throttle(free=5, max_delay=30.0, message=ADMIN_WRONG)
ADMIN_CEILING = study.throttle.Throttle(free=30, max_delay=60.0, message=ADMIN_WRONG)


def client(request: gr.Request | None) -> str | None:
    """The address a request came from; None for a call from this process (tests, scripts).

    Behind a reverse proxy, list its address in ``FORWARDED_ALLOW_IPS`` so uvicorn puts the
    visitor's address here instead of the proxy's.
    """
    if request is None:
        return None
    return getattr(getattr(request, "client", None), "host", None) or "unknown"


def browser(request: gr.Request | None) -> tuple[str, str | None] | None:
    """A browser session: its address and Gradio's session id; None for a call from this
    process."""
    address = client(request)
    if address is None:
        return None
    return address, getattr(request, "session_hash", None)


@contextlib.contextmanager
def _guarded(pairs, *wrong: type[BaseException]):
    """Like `Throttle.guard`, over several (throttle, client) pairs: all must let the call
    through, a wrong attempt counts in each, a right one clears only the first (the browser)."""
    for throttle, key in pairs:
        throttle.check(key)
    try:
        yield
    except wrong:
        for throttle, key in pairs:
            throttle.failed(key)
        raise
    pairs[0][0].succeeded(pairs[0][1])


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
    pairs = [(ADMIN_ATTEMPTS, browser(request)), (ADMIN_CEILING, client(request))]
    try:
        with _guarded(pairs, gr.Error):
            sent = str(token or "").encode("utf-8", "surrogatepass")  # any text a client sends
            if not hmac.compare_digest(sent, expected.encode("utf-8")):
                raise gr.Error("That admin token is not right.")
    except study.StudyError as exc:
        raise gr.Error(str(exc)) from None


def invite_guard(
    code: str | None, request: gr.Request | None = None
) -> contextlib.AbstractContextManager:
    """Wrap the check of an invite code: repeated wrong codes from one browser must wait, and
    very many from one address (see ``JOIN_CEILING``).

    An empty field is not a guess, so it is not counted.
    """
    if not (code or "").strip():
        return contextlib.nullcontext()
    pairs = [(JOIN_ATTEMPTS, browser(request)), (JOIN_CEILING, client(request))]
    return _guarded(pairs, study.InvalidInviteError)
