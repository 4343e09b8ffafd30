"""What tests share besides fixtures: paths, tiny configs, the shared-data skip marker."""

from __future__ import annotations

import html
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from recpipe.evaluation.config import EvalConfig
from recpipe.monitoring.sink import SinkService, make_server
from recpipe.pipelines.config import PipelineConfig
from recpipe.registry import store as registry
from recpipe.registry.config import PushConfig
from recpipe.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
BEAUTY = SHARED_DATA / "amazon-beauty"

TINY_TRAINING = TrainConfig(
    hidden_dim=16,
    num_layers=1,
    num_heads=1,
    dropout=0.1,
    batch_size=64,
    max_epochs=3,
    patience=2,
    seed=1,
)
# Tests of plumbing must not depend on a 3-epoch model beating the baseline.
TINY_PIPELINE = PipelineConfig(training=TINY_TRAINING, evaluation=EvalConfig(baseline_margin=-1.0))


def requires_beauty() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (BEAUTY / "events.csv").is_file(),
        reason=f"shared data set not present at {BEAUTY} (see ../shared/data/README.md)",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def publish(bundle_dir: Path, root: str, name: str = "m") -> str:
    """Push a trained bundle as a blessed version; returns the model folder the server takes."""
    registry.push_blessed(
        bundle_dir,
        {"blessed": True, "reason": "test"},
        {},
        root,
        name,
        PushConfig(),
        code_version="test",
        predictor_image="p",
    )
    return f"{root}/{name}"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (Debian package `chromium`)"
)
# Appended to a copy of a page: after load, what a person's browser fetched and drew, for the
# page and the documents of its (srcdoc) iframes, written into the DOM that Chromium dumps.
_PROBE = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const docs = [document, ...[...document.querySelectorAll('iframe')]
    .map(f => f.contentDocument).filter(Boolean)];
  const out = {resources: [], broken_images: 0, svg_shapes: 0, text: ''};
  for (const d of docs) {
    out.resources.push(...d.defaultView.performance.getEntriesByType('resource')
      .map(r => r.name));
    out.broken_images += [...d.images].filter(i => !i.complete || !i.naturalWidth).length;
    out.svg_shapes += [...d.querySelectorAll('svg path, svg rect, svg circle, svg polyline')]
      .filter(e => { const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length;
    out.text += (d.body ? d.body.innerText : '') + '\\n';
  }
  const pre = document.createElement('pre');
  pre.id = 'recpipe-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 200));
</script>"""


def browser_view(page: str, workdir: Path) -> dict[str, Any]:
    """Open `page` in headless Chromium with no network (every host unresolvable) and say
    what it fetched (`resources`), which images broke, how many SVG shapes it drew with a
    size, and the text a person reads."""
    assert CHROMIUM is not None
    path = workdir / "page.html"
    body_end = page.lower().rfind("</body>")
    path.write_text(page[:body_end] + _PROBE + page[body_end:] if body_end >= 0 else page + _PROBE)
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=5000",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="recpipe-probe">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, f"the probe did not run: {result.stderr[-2000:]}"
    view: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return view


class ServerThread:
    """A `core.http` server (uvicorn, made on 127.0.0.1 port 0) serving in a thread: started
    and waited for here; `.port` the port it got, `.url` its base (no trailing slash);
    `stop()` asks it to exit (it finishes what it holds) and joins it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "did not start in 10 s"
            time.sleep(0.01)
        self.port = int(server.servers[0].sockets[0].getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout)


class RunningSink(ServerThread):
    """A real log sink (uvicorn) on a free 127.0.0.1 port, in a thread; `.url` takes the
    events `recpipe serve --log-to` sends; `stop()` flushes what it holds."""

    def __init__(self, service: SinkService) -> None:
        self.service = service
        super().__init__(make_server(service, "127.0.0.1", 0))
        self.url += "/"
