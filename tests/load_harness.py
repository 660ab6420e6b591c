"""A small study served by a real ``python app.py``, and raters that speak the browser's protocol.

The support code of ``tests/test_load.py`` and ``tests/test_faults.py``, and of the benchmark
``benchmarks/load_study.py``, which runs it at scale: the study and the server (`make_study`,
`AppServer`), one browser tab on /study over HTTP only (`StudyPage`: Gradio's queue under the
event ids the page's ``/config`` lists), raters and visitors at once (`LoadRun`), and the
audit of the SQLite file afterwards (`audit`): every vote a rater saw acknowledged is looked up.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import random
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, PngImagePlugin

import study
from study.trials import hash_code
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]

CHOICES = ("left", "right", "tie", "both_bad")
PROGRESS = re.compile(r"(Practice|Trial) (\d+) of (\d+)")
ENHANCE_IMAGE = ROOT / "examples" / "radiology" / "brain_mri_coronal.png"
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)  # read: the queue sends a heartbeat every 15 s


# ---------------------------------------------------------------- the study and the server


@dataclass(frozen=True)
class LoadStudy:
    """A study made for a load run: its id, one invite code per rater, the trials planned."""

    db_path: Path
    study_id: str
    codes: tuple[str, ...]
    planned: int


def make_study(
    data_dir: str | os.PathLike,
    *,
    raters: int,
    items: int = 4,
    methods: int = 3,
    image_size: int = 512,
    repeat_fraction: float = 0.1,
    seed: int = 0,
) -> LoadStudy:
    """A balanced study of ``methods`` tone curves on ``items`` synthetic images, with raters.

    The stimuli are real PNGs of ``image_size`` pixels, so serving them costs what it would.
    Safe while an app serves the same folder.
    """
    data_dir = Path(data_dir)
    sources = data_dir.parent / f"sources-{secrets.token_hex(4)}"
    sources.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.1, 0.8, image_size, dtype=np.float32)
    paths = []
    for k in range(items):
        noise = rng.normal(0.0, 0.05, (image_size, image_size, 3)).astype(np.float32)
        image = np.clip(ramp[:, None, None] * ramp[None, :, None] + noise, 0.0, 1.0)
        paths.append(sources / f"scan{k}.png")
        Image.fromarray((image * 255).astype(np.uint8)).save(paths[-1])
    gammas = {f"curve{k}": 0.5 + 0.25 * k for k in range(methods)}

    def enhance(image: np.ndarray, method: str) -> np.ndarray:
        return (image ** gammas[method]).astype(np.float32)

    with study.open_db(data_dir / study.db.DB_FILENAME) as db:
        study_id = study.create_study(
            db,
            "Load test",
            paths,
            list(gammas),
            enhance,
            repeat_fraction=repeat_fraction,
            seed=seed,
        )
        codes = tuple(
            study.invite_rater(db, study_id, f"Rater {n + 1}", seed=seed * 1000 + n).code
            for n in range(raters)
        )
        planned = db.query(
            "SELECT count(*) AS n FROM trials t JOIN raters r ON r.id = t.rater WHERE r.study = ?",
            [study_id],
        )[0]["n"]
        register_stimuli(db.media_root)
    return LoadStudy(db.path, study_id, codes, planned)


# The app serves each screen's images as fresh links under random names (per rater, per
# screen), so a page cannot tell which stimulus it shows; the harness, on the server's
# machine, recognises a served link by the stored file it links to.
_STIMULI: dict[tuple[int, int], str] = {}


def register_stimuli(media_root: str | os.PathLike) -> None:
    """Remember the stored stimuli under ``media_root`` by file identity (device, inode)."""
    for file in Path(media_root).rglob("*.png"):
        info = file.stat()
        _STIMULI[(info.st_dev, info.st_ino)] = file.name


def stimulus_name(served: dict) -> str:
    """The stored stimulus a served image links to (its own name when not recognised)."""
    path = served.get("path") or ""
    try:
        info = os.stat(path)
    except OSError:
        return Path(path).name
    return _STIMULI.get((info.st_dev, info.st_ino), Path(path).name)


class AppServer:
    """``python app.py`` in a subprocess on 127.0.0.1, serving ``data_dir``.

    ``prefix`` runs it under another command (e.g. ``unshare``); it must ``exec`` the app so
    that the process id is the app's.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        port: int | None = None,
        log_path: str | os.PathLike | None = None,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.log_path = Path(log_path or self.data_dir.parent / "server.log")
        self.prefix = list(prefix)
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> AppServer:
        """Start the app and wait until its Study page is served; raise with the log if not."""
        scratch = self.data_dir.parent / "server-tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "DPE_BACKUP_REPO")}
        env.update(
            DPE_DATA_DIR=str(self.data_dir),
            GRADIO_SERVER_NAME="127.0.0.1",
            GRADIO_SERVER_PORT=str(self.port),
            GRADIO_ANALYTICS_ENABLED="False",
            GRADIO_TEMP_DIR=str(self.data_dir.parent / "gradio-cache"),
            HF_HUB_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONUNBUFFERED="1",
            TMPDIR=str(scratch),  # what the app leaves behind when killed stays in here
        )
        env.update(self.extra_env)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, str(ROOT / "app.py")],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited ({self.process.returncode}):\n{self.log()}")
            if server_is_up(self.url):
                return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"the app did not start within {timeout:g} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine or the container dies."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Ask the app to stop; kill it if it has not after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self, tail: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail:]


def server_is_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/config", params={"page": "study"}, timeout=2.0).is_success
    except httpx.HTTPError:
        return False


def wait_until_up(url: str, deadline: float) -> bool:
    """Poll until the app answers again or the deadline (time.monotonic) passes."""
    while time.monotonic() < deadline:
        if server_is_up(url):
            return True
        time.sleep(0.2)
    return False


# ---------------------------------------------------------------- one browser tab on /study


class PageError(Exception):
    """The event ended with an error the page shows the rater (``message``); nothing changed."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and "value" not in value


class Disconnected(Exception):
    """The connection broke before the event's result arrived: its outcome is unknown."""


@dataclass(frozen=True)
class Screen:
    """What the page shows: a "practice" or "trial" pair, or "done" (no pair left).

    ``left`` and ``right`` are the images' opaque file names; ``done`` and ``total`` come
    from the progress label; ``token`` is the screen token an answer must carry.
    """

    kind: str
    token: str
    message: str
    left: str | None = None
    right: str | None = None
    done: int = 0
    total: int = 0
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Event:
    fn_index: int
    trigger_id: int | None


class StudyProtocol:
    """The Study page's event ids and output positions, read from ``/config?page=study``."""

    def __init__(self, config: dict):
        self.events = {}
        for dep in config["dependencies"]:
            trigger = dep["targets"][0][0] if dep.get("targets") else None
            self.events.setdefault(dep["api_name"], _Event(dep["id"], trigger))
        components = {c["id"]: c for c in config["components"]}
        (join,) = [d for d in config["dependencies"] if d["api_name"] == "join_study"]
        outputs = [components[i] for i in join["outputs"]]

        def position(test: Callable[[dict], bool]) -> int:
            (found,) = [n for n, c in enumerate(outputs) if test(c)]
            return found

        def elem(name: str) -> Callable[[dict], bool]:
            return lambda c: c["props"].get("elem_id") == name

        self.token = position(elem("study-screen"))
        self.progress = position(lambda c: c["type"] == "html")
        self.message = position(elem("study-message"))
        self.source = position(elem("study-source"))
        self.left = position(elem("image-a"))
        self.right = position(elem("image-b"))

    @classmethod
    def fetch(cls, http: httpx.Client) -> StudyProtocol:
        response = http.get("/config", params={"page": "study"})
        response.raise_for_status()
        return cls(response.json())

    def screen(self, data: list) -> Screen:
        """The screen an event's outputs put on the page; a problem the page shows the rater
        (a warning, ⚠, without a new pair) raises :class:`PageError`."""
        left, right, source = data[self.left], data[self.right], data[self.source]
        source = source.get("value") if isinstance(source, dict) else source
        message = data[self.message] if isinstance(data[self.message], str) else ""
        pair = all(isinstance(f, dict) and f.get("url") for f in (left, right))
        if message.startswith("**⚠") and not pair:
            raise PageError(html.unescape(message.strip("*").removeprefix("⚠").strip()))
        if not pair and any(_is_skip(f) for f in (left, right)):
            raise PageError("the answer changed nothing on the page")
        if not left or not right:
            return Screen("done", data[self.token] or "", message)
        found = PROGRESS.search(data[self.progress] or "")
        if not found:
            raise PageError(f"a pair is shown without a progress label: {data[self.progress]!r}")
        urls = tuple(f["url"] for f in (source, left, right) if f)
        return Screen(
            "practice" if found[1] == "Practice" else "trial",
            data[self.token],
            message,
            stimulus_name(left),
            stimulus_name(right),
            int(found[2]) - 1,
            int(found[3]),
            urls,
        )


def join_queue(
    http: httpx.Client, fn_index: int, trigger_id: int | None, data: list, session_hash: str
) -> str:
    """Put one event in Gradio's queue (``POST /gradio_api/queue/join``); returns its id."""
    body = {
        "data": data,
        "event_data": None,
        "fn_index": fn_index,
        "trigger_id": trigger_id,
        "session_hash": session_hash,
    }
    joined = http.post("/gradio_api/queue/join", json=body)
    if not joined.is_success:
        raise PageError(f"queue/join answered {joined.status_code}: {joined.text[:200]}")
    return joined.json()["event_id"]


def queue_result(http: httpx.Client, session_hash: str, event_id: str) -> dict:
    """Read the session's event stream until ``event_id`` completes; returns that message
    (``success``, and ``output`` with ``data`` or ``error``)."""
    params = {"session_hash": session_hash}
    with http.stream("GET", "/gradio_api/queue/data", params=params) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "unexpected_error":
                raise PageError(message.get("message") or "unexpected error")
            if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                return message
    raise Disconnected("the event stream ended without a result")


class StudyPage:
    """One browser tab on the Study page: the requests its JavaScript makes, no more.

    Each page has its own Gradio session (a random ``session_hash``, as a page load makes),
    so the server keeps its rater's session for it. Broken connections raise
    :class:`Disconnected`; errors shown on the page raise :class:`PageError`.
    """

    def __init__(self, url: str, *, protocol: StudyProtocol | None = None):
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT)
        self.session_hash = secrets.token_hex(6)
        self.duration = 0.0  # seconds the last queued event's function ran on the server
        try:
            page = self.http.get("/study")  # the page itself
            self.protocol = protocol or StudyProtocol.fetch(self.http)
        except httpx.TransportError as exc:
            self.close()
            raise Disconnected(str(exc)) from exc
        if not page.is_success:
            self.close()
            raise PageError(f"the Study page answered {page.status_code}")

    def close(self) -> None:
        self.http.close()

    def join(self, code: str) -> Screen:
        """Page load, then the invite code typed in and Start pressed."""
        self.event("restore_code", [None, "", ""])  # the load event; no code, a new tab
        screen = self.protocol.screen(self.event("join_study", [code, ""]))
        self.event("show_profile", [None])  # runs after a successful join, as .success() does
        return screen

    def answer(self, screen: Screen, choice: str) -> Screen:
        """Press an answer button on ``screen``; returns the next screen once it arrives."""
        # The session is the server's; no code is remembered in this browser.
        return self.protocol.screen(self.event(f"vote_{choice}", [None, screen.token, None, None]))

    def enable_answers(self) -> None:
        """The unqueued follow-up of every answer, which enables the buttons again."""
        self.run("enable_answers", [])

    def fetch_images(self, screen: Screen) -> None:
        """Download the screen's images, as the page's <img> tags do."""
        for url in screen.urls:
            try:
                response = self.http.get(url)
            except httpx.TransportError as exc:
                raise Disconnected(str(exc)) from exc
            if not response.is_success:
                raise PageError(f"an image answered {response.status_code}: {url}")

    def event(self, api_name: str, data: list) -> list:
        """Run one queued event the way the browser does; returns its outputs."""
        event = self.protocol.events[api_name]
        try:
            event_id = join_queue(
                self.http, event.fn_index, event.trigger_id, data, self.session_hash
            )
            message = queue_result(self.http, self.session_hash, event_id)
        except httpx.TransportError as exc:
            raise Disconnected(f"{api_name}: {exc!r}") from exc
        output = message.get("output") or {}
        if not message.get("success"):
            raise PageError(output.get("error") or "Error")
        self.duration = float(output.get("duration") or 0.0)
        return output["data"]

    def run(self, api_name: str, data: list) -> list:
        """Run one unqueued event (``queue=False``), as the browser posts it."""
        event = self.protocol.events[api_name]
        body = {
            "data": data,
            "event_data": None,
            "fn_index": event.fn_index,
            "trigger_id": event.trigger_id,
            "session_hash": self.session_hash,
        }
        try:
            response = self.http.post("/gradio_api/run/predict", json=body)
        except httpx.TransportError as exc:
            raise Disconnected(f"{api_name}: {exc!r}") from exc
        if not response.is_success:
            raise PageError(f"{api_name} answered {response.status_code}: {response.text[:200]}")
        return response.json()["data"]


# ---------------------------------------------------------------- raters, visitors, ledger


@dataclass(frozen=True)
class Answer:
    """A trial answer as a rater's browser knows it: which pair, which choice."""

    code: str
    left: str
    right: str
    choice: str
    done: int  # trials answered before this one, from the progress label

    @property
    def key(self) -> tuple[str, str, str]:
        return hash_code(self.code), self.left, self.right


@dataclass(frozen=True)
class Join:
    """A rater entering their code: what they had seen acknowledged, what the page showed."""

    code: str
    screen: Screen
    answered: int  # this rater's trial answers acknowledged before this join
    in_flight: Answer | None  # the answer sent just before, whose connection broke
    at: float  # time.monotonic()


@dataclass
class Ledger:
    """What the raters and visitors saw; appended to from many threads under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    acked: list[Answer] = field(default_factory=list)
    in_flight: list[Answer] = field(default_factory=list)  # sent, then the connection broke
    vote_ms: list[float] = field(default_factory=list)
    vote_server_ms: list[float] = field(default_factory=list)  # of which in the callback
    errors: list[str] = field(default_factory=list)  # messages shown on a rater's page
    disconnects: int = 0
    joins: list[Join] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    images: int = 0
    enhance_ms: list[float] = field(default_factory=list)
    enhance_errors: list[str] = field(default_factory=list)

    def add(self, name: str, value) -> None:
        with self.lock:
            getattr(self, name).append(value)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def finish(self, code: str) -> None:
        with self.lock:
            self.finished.add(code)

    def acked_now(self) -> list[Answer]:
        with self.lock:
            return list(self.acked)


def rate(
    url: str,
    code: str,
    ledger: Ledger,
    *,
    rng: random.Random,
    think: tuple[float, float],
    deadline: float,
    images: bool = True,
    reconnect: bool = False,
    max_errors: int = 5,
    protocol: StudyProtocol | None = None,
) -> bool:
    """One rater: join, answer every screen after a random think time, until done.

    After a broken connection the rater comes back (with ``reconnect``) the way a person
    would: wait for the server, open the page again, enter the code. Returns True when the
    rater reached the end of their plan before ``deadline`` (time.monotonic).
    """
    page: StudyPage | None = None
    screen: Screen | None = None
    errors = answered = 0
    unknown: Answer | None = None
    try:
        while time.monotonic() < deadline:
            try:
                if page is None:
                    page = StudyPage(url, protocol=protocol)
                    screen = page.join(code)
                    ledger.add("joins", Join(code, screen, answered, unknown, time.monotonic()))
                    unknown = None
                    if images:
                        page.fetch_images(screen)
                        ledger.count("images", len(screen.urls))
                if screen.kind == "done":
                    ledger.finish(code)
                    return True
                time.sleep(max(0.0, min(rng.uniform(*think), deadline - time.monotonic())))
                answer = Answer(code, screen.left, screen.right, rng.choice(CHOICES), screen.done)
                is_trial = screen.kind == "trial"
                if is_trial:
                    ledger.count("sent")
                started = time.perf_counter()
                try:
                    following = page.answer(screen, answer.choice)
                except Disconnected:
                    if is_trial:
                        unknown = answer
                        ledger.add("in_flight", answer)
                    raise
                if is_trial:
                    answered += 1
                    with ledger.lock:
                        ledger.acked.append(answer)
                        ledger.vote_ms.append((time.perf_counter() - started) * 1000)
                        ledger.vote_server_ms.append(page.duration * 1000)
                screen = following
                page.enable_answers()
                if images:
                    page.fetch_images(screen)
                    ledger.count("images", len(screen.urls))
            except PageError as exc:
                ledger.add("errors", f"{code[:4]}…: {exc.message}")
                errors += 1
                if errors >= max_errors:
                    return False
                if "invite code again" in exc.message and page is not None:
                    page.close()  # the server no longer knows this page's session
                    page = None
                time.sleep(0.2)
            except Disconnected:
                ledger.count("disconnects")
                if page is not None:
                    page.close()
                    page = None
                if not reconnect or not wait_until_up(url, deadline):
                    return False
        return False
    except Exception as exc:  # a reply this client does not understand: report, stop
        ledger.add("errors", f"{code[:4]}…: {exc!r}")
        return False
    finally:
        if page is not None:
            page.close()


def enhance_until(
    url: str,
    ledger: Ledger,
    stop: threading.Event,
    *,
    methods: Sequence[str],
    image: Path,
    deadline: float,
    workdir: Path,
    ready: threading.Event | None = None,
) -> None:
    """A visitor on the Enhance page, via the public API: enhance, again, until ``stop``.

    ``ready`` is set once the first request is on its way (or connecting failed).
    """
    from gradio_client import Client, handle_file

    ready = ready or threading.Event()
    try:
        client = Client(url, verbose=False, analytics_enabled=False, download_files=workdir)
    except Exception as exc:  # any failure to connect is a result to report
        ledger.add("enhance_errors", repr(exc)[:200])
        ready.set()
        return
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                job = client.submit(
                    handle_file(str(image)), list(methods), False, "paper", 0, None,
                    api_name="/enhance",
                )  # fmt: skip
                ready.set()
                job.result(timeout=max(1.0, deadline - time.monotonic()))
                ledger.add("enhance_ms", (time.perf_counter() - started) * 1000)
            except Exception as exc:
                ledger.add("enhance_errors", repr(exc)[:200])
                stop.wait(0.5)
    finally:
        ready.set()
        client.close()


def own_copy(image: Path, folder: Path, n: int) -> Path:
    """``image`` as a PNG with a text chunk of its own: same pixels, different bytes.

    Different visitors upload different files. Byte-identical uploads share one path in
    Gradio's upload folder (named by their sha256), and the app deletes an upload once read,
    so a second visitor's request can find it gone: ``--same-upload`` shows that.
    """
    target = folder / f"visitor{n}-{image.stem}.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("visitor", str(n))
    with Image.open(image) as source:
        source.save(target, pnginfo=info)
    return target


class LoadRun:
    """Raters (and optional visitors) in threads against ``url``; start, then join.

    Every loop stops by itself at ``deadline_s``; ``join`` waits for the raters, then stops
    the visitors.
    """

    def __init__(
        self,
        url: str,
        codes: Sequence[str],
        *,
        think: tuple[float, float] = (0.2, 1.0),
        seed: int = 0,
        enhancers: int = 0,
        enhance_methods: Sequence[str] = ("dpe",),
        enhance_image: Path = ENHANCE_IMAGE,
        same_upload: bool = False,
        images: bool = True,
        reconnect: bool = False,
        deadline_s: float = 600.0,
        workdir: Path | None = None,
    ):
        self.url = url
        self.ledger = Ledger()
        self.deadline = time.monotonic() + deadline_s
        self.stop_visitors = threading.Event()
        self.started = self.elapsed = 0.0
        # Visitors' uploads and downloads; a folder of our own unless the caller gives one.
        self._scratch = None
        if workdir is None and enhancers:
            self._scratch = tempfile.TemporaryDirectory(prefix="dpe-load-")
            workdir = self._scratch.name
        workdir = Path(workdir) if workdir is not None else None
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as http:
            protocol = StudyProtocol.fetch(http)
        options = dict(think=think, deadline=self.deadline, images=images, reconnect=reconnect)
        self.raters = [
            threading.Thread(
                target=rate,
                args=(url, code, self.ledger),
                kwargs={
                    **options,
                    "rng": random.Random(seed * 1_000_003 + n),
                    "protocol": protocol,
                },
                name=f"rater-{n}",
                daemon=True,
            )
            for n, code in enumerate(codes)
        ]
        self.visitors_ready = [threading.Event() for _ in range(enhancers)]
        self.visitors = [
            threading.Thread(
                target=enhance_until,
                args=(url, self.ledger, self.stop_visitors),
                kwargs={
                    "methods": enhance_methods,
                    "image": enhance_image if same_upload else own_copy(enhance_image, workdir, n),
                    "deadline": self.deadline,
                    "workdir": workdir,
                    "ready": self.visitors_ready[n],
                },
                name=f"visitor-{n}",
                daemon=True,
            )
            for n in range(enhancers)
        ]

    def start(self) -> LoadRun:
        """Start the visitors, and once each has a request under way, the raters."""
        for thread in self.visitors:
            thread.start()
        for ready in self.visitors_ready:
            ready.wait(max(0.0, self.deadline - time.monotonic()))
        self.started = time.monotonic()
        for thread in self.raters:
            thread.start()
        return self

    def wait_for_votes(self, n: int, timeout: float = 60.0) -> bool:
        """Wait until at least ``n`` votes are acknowledged; False on timeout."""
        until = min(time.monotonic() + timeout, self.deadline)
        while time.monotonic() < until:
            with self.ledger.lock:
                if len(self.ledger.acked) >= n:
                    return True
            time.sleep(0.02)
        return False

    def join(self) -> Ledger:
        for thread in self.raters:
            thread.join(max(0.0, self.deadline - time.monotonic()) + 5.0)
        self.elapsed = time.monotonic() - self.started
        self.stop_visitors.set()
        for thread in self.visitors:
            thread.join(max(0.0, self.deadline - time.monotonic()) + 5.0)
        if self._scratch is not None:
            self._scratch.cleanup()
        return self.ledger


# ---------------------------------------------------------------- checking the database


def stored_votes(db_path: str | os.PathLike, study_id: str) -> dict[tuple, dict]:
    """Every stored vote of the study by (token hash, left name, right name)."""
    with _connect(db_path) as conn:
        rows = conn.execute(
            """SELECT r.token_hash, sl.opaque_name, sr.opaque_name, v.choice, t.order_index
               FROM votes v JOIN trials t ON t.id = v.trial JOIN raters r ON r.id = t.rater
               JOIN stimuli sl ON sl.item = t.item AND sl.method = t.left_method
               JOIN stimuli sr ON sr.item = t.item AND sr.method = t.right_method
               WHERE r.study = ?""",
            [study_id],
        ).fetchall()
    return {(h, left, right): {"choice": c, "order_index": i} for h, left, right, c, i in rows}


def trial_order(db_path: str | os.PathLike, study_id: str) -> dict[tuple, int]:
    """Every planned trial's position in its rater's plan, by (token hash, left, right)."""
    with _connect(db_path) as conn:
        rows = conn.execute(
            """SELECT r.token_hash, sl.opaque_name, sr.opaque_name, t.order_index
               FROM trials t JOIN raters r ON r.id = t.rater
               JOIN stimuli sl ON sl.item = t.item AND sl.method = t.left_method
               JOIN stimuli sr ON sr.item = t.item AND sr.method = t.right_method
               WHERE r.study = ?""",
            [study_id],
        ).fetchall()
    return {(h, left, right): i for h, left, right, i in rows}


def integrity(db_path: str | os.PathLike) -> str:
    """``PRAGMA integrity_check``: "ok" for a sound file."""
    with _connect(db_path) as conn:
        return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))


def _connect(db_path) -> contextlib.closing[sqlite3.Connection]:
    # closing(): a sqlite3 connection's own `with` only commits, it never closes.
    conn = sqlite3.connect(db_path, timeout=30)
    conn.execute("PRAGMA query_only = ON")  # a checker never writes
    return contextlib.closing(conn)


@dataclass(frozen=True)
class Audit:
    """The ledger checked against the database."""

    planned: int
    sent: int
    acked: int
    stored: int
    lost: int  # acknowledged, then missing or stored with another choice
    duplicated: int  # acknowledged twice for one trial, or stored twice
    unexplained: int  # stored, never acknowledged and not in flight at a broken connection
    integrity: str

    @property
    def sound(self) -> bool:
        return self.lost == self.duplicated == self.unexplained == 0 and self.integrity == "ok"


def audit(load: LoadStudy, ledger: Ledger, db_path: str | os.PathLike | None = None) -> Audit:
    """Compare what raters saw acknowledged with what ``db_path`` (default: the study's) holds."""
    db_path = db_path or load.db_path
    stored = stored_votes(db_path, load.study_id)
    acked = ledger.acked_now()
    counts = Counter(a.key for a in acked)
    lost = sum(1 for a in acked if stored.get(a.key, {}).get("choice") != a.choice)
    with _connect(db_path) as conn:
        twice = conn.execute(
            "SELECT count(*) - count(DISTINCT trial) FROM votes v JOIN trials t ON t.id = v.trial"
            " JOIN raters r ON r.id = t.rater WHERE r.study = ?",
            [load.study_id],
        ).fetchone()[0]
    explained = set(counts) | {a.key for a in ledger.in_flight}
    return Audit(
        planned=load.planned,
        sent=ledger.sent,
        acked=len(acked),
        stored=len(stored),
        lost=lost,
        duplicated=sum(n - 1 for n in counts.values()) + twice,
        unexplained=sum(1 for key in stored if key not in explained),
        integrity=integrity(db_path),
    )
