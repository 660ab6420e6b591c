"""The Study page's browser side: its keyboard, zoom and full-screen scripts and its CSS.

`webapp.LAUNCH_OPTIONS` puts ``KEYBOARD_JS`` and ``VIEWER_JS`` in the page's head and ``CSS``
in its style sheet; the ``*_JS`` functions run in the browser before a study event's request
leaves (see `webapp.study_page.build`). They find the widgets by their ``elem_id``
(`webapp.study_layout`).
"""

from __future__ import annotations

# Also measures reading time: when the last of A and B has loaded (and is drawn in the next
# frame) the screen counts as shown; the answer's click reads the time since then.
KEYBOARD_JS = """
<script>
window.pairShownAt = null;
document.addEventListener("load", (event) => {
  const image = event.target;
  if (!image || image.tagName !== "IMG" || !image.closest("#image-a, #image-b")) return;
  const pair = [...document.querySelectorAll("#image-a img, #image-b img")];
  if (pair.length === 2 && pair.every((i) => i.complete && i.naturalWidth > 0)) {
    requestAnimationFrame(() => { window.pairShownAt = performance.now(); });
  }
}, true);
document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (event.altKey || event.ctrlKey || event.metaKey || event.repeat) return;
  if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
    return;
  }
  const ids = {"1": "vote-a", ArrowLeft: "vote-a", "2": "vote-b", ArrowRight: "vote-b",
               "3": "vote-tie", "4": "vote-bad"};
  const button = ids[event.key] && document.getElementById(ids[event.key]);
  if (!button || button.disabled || button.offsetParent === null) return;
  event.preventDefault();
  button.click();
});
</script>
"""

# Runs in the browser when an answer is given, before the request leaves: later clicks and
# key presses find the buttons disabled. Passes the event's inputs through, the last one
# replaced by the reading time (ms since both images were drawn; null when not measured).
# The answer is also kept in the tab (sessionStorage) until the server confirms it, so an
# answer sent while the server restarts counts once the page is back (see restore_code).
DISABLE_VOTES_JS = """(...inputs) => {
  sessionStorage.setItem("study-pending", `${inputs[1]} CHOICE`);
  for (const id of ["vote-a", "vote-b", "vote-tie", "vote-bad", "study-pause"]) {
    const button = document.getElementById(id);
    if (button) button.disabled = true;
  }
  const shown = window.pairShownAt;
  window.pairShownAt = null;
  inputs[inputs.length - 1] = shown === null ? null : Math.round(performance.now() - shown);
  return inputs;
}"""

# This tab's memory (sessionStorage, gone with the tab): whether it is signed in, and an
# answer still waiting for the server's reply. Read on load; see restore_code.
READ_TAB_JS = """(remembered, pending, joined) => [remembered,
  sessionStorage.getItem("study-pending") || "", sessionStorage.getItem("study-joined") || ""]"""
JOINED_JS = """(...inputs) => { sessionStorage.setItem("study-joined", "1"); return inputs; }"""
LEFT_JS = """(...inputs) => { sessionStorage.removeItem("study-joined"); return inputs; }"""
FORGET_PENDING_JS = """() => { sessionStorage.removeItem("study-pending"); }"""

CSS = """
.study-progress { display: flex; gap: 1em; align-items: center; }
.study-progress progress { flex: 1; height: 0.8em; }
#image-a img, #image-b img { width: 100%; height: 100%; object-fit: contain; }
#image-a div:has(> img), #image-b div:has(> img) { overflow: hidden; touch-action: none; }
#study-pair:fullscreen { background: var(--body-background-fill); padding: 0.5em; }
#study-pair:fullscreen #image-a, #study-pair:fullscreen #image-b { height: 88vh !important; }
#study-viewer-help { font-size: 0.85em; }
"""

# Synchronised zoom and pan of A and B (one view for both: wheel or pinch zooms about the
# pointer, a drag pans, a double click or a new screen resets), and the full-screen pair.
VIEWER_JS = """
<script>
(() => {
  const view = {scale: 1, x: 0, y: 0};
  const pointers = new Map();
  const images = () => [...document.querySelectorAll("#image-a img, #image-b img")];
  const inPair = (target) => target && target.closest && target.closest("#image-a, #image-b");
  const apply = () => {
    for (const image of images()) {
      image.style.transformOrigin = "0 0";
      image.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
    }
  };
  const reset = () => { view.scale = 1; view.x = 0; view.y = 0; apply(); };
  const zoomAt = (cx, cy, factor) => {
    const scale = Math.min(16, Math.max(1, view.scale * factor));
    const f = scale / view.scale;
    view.x = cx - (cx - view.x) * f;
    view.y = cy - (cy - view.y) * f;
    view.scale = scale;
    if (scale === 1) { view.x = 0; view.y = 0; }
    apply();
  };
  const local = (box, event) => {
    const frame = (box.querySelector("img") || box).parentElement.getBoundingClientRect();
    return [event.clientX - frame.left, event.clientY - frame.top];
  };
  document.addEventListener("wheel", (event) => {
    const box = inPair(event.target);
    if (!box) return;
    event.preventDefault();
    const [x, y] = local(box, event);
    zoomAt(x, y, Math.exp(-event.deltaY * 0.002));
  }, {passive: false});
  document.addEventListener("pointerdown", (event) => {
    const box = inPair(event.target);
    if (!box) return;
    pointers.set(event.pointerId, {x: event.clientX, y: event.clientY, box});
    event.preventDefault();
  });
  document.addEventListener("pointermove", (event) => {
    const last = pointers.get(event.pointerId);
    if (!last) return;
    if (pointers.size === 1) {
      view.x += event.clientX - last.x;
      view.y += event.clientY - last.y;
      apply();
    } else if (pointers.size === 2) {
      const [a, b] = [...pointers.values()];
      const other = a === last ? b : a;
      const before = Math.hypot(last.x - other.x, last.y - other.y);
      const after = Math.hypot(event.clientX - other.x, event.clientY - other.y);
      const [x, y] = local(last.box, {clientX: (event.clientX + other.x) / 2,
                                      clientY: (event.clientY + other.y) / 2});
      if (before > 0) zoomAt(x, y, after / before);
    }
    pointers.set(event.pointerId, {x: event.clientX, y: event.clientY, box: last.box});
  });
  for (const kind of ["pointerup", "pointercancel", "pointerleave"]) {
    document.addEventListener(kind, (event) => pointers.delete(event.pointerId));
  }
  document.addEventListener("dblclick", (event) => { if (inPair(event.target)) reset(); });
  document.addEventListener("dragstart", (event) => {  // a drag pans; it never drags the file
    if (inPair(event.target)) event.preventDefault();
  });
  document.addEventListener("load", (event) => {
    if (event.target.tagName === "IMG" && inPair(event.target)) reset();
  }, true);
  window.studyViewer = {view, reset};
  window.studyFullScreen = () => {
    const pair = document.getElementById("study-pair");
    if (document.fullscreenElement) document.exitFullscreen();
    else if (pair) pair.requestFullscreen();
  };
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
      return;
    }
    if ((event.key === "f" || event.key === "F") && document.getElementById("study-pair")) {
      const pair = document.getElementById("study-pair");
      if (pair.offsetParent !== null || document.fullscreenElement) window.studyFullScreen();
    }
  });
})();
</script>
"""
