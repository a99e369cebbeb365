"""Make the README's pictures from real runs: the report, the live terminal view, the metrics.

    python scripts/readme_pictures.py [--only report|live|metrics] [--out docs/img]

Needs a Chromium (``apt-get install chromium``; headless, ``--screenshot``) and Pillow (to crop
the page into parts). ``metrics`` also needs a Prometheus binary (``apt-get install
prometheus``): it scrapes a monitored run and draws the Grafana dashboard's panel queries in
Prometheus's own graph view (Grafana itself is not packaged for Debian).

Every picture comes from a run made here, on the mock market (offline):

* ``report.png``, ``report_premium.png``: ``run.py --engine local --volatility 4 --report``;
* ``live_view.png``: the last frame ``run.py --monitoring-enabled`` drew on a pseudo-terminal
  (``script``), set in a terminal's colours;
* ``metrics_premium.png``: ``ray_arb_premium_bps`` and ``ray_arb_pnl_usd`` of a monitored run.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("readme_pictures: no Chromium found (apt-get install chromium)")


def screenshot(url: str, png: Path, width: int, height: int, wait_ms: int = 15000) -> None:
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--window-size={width},{height}",
                    f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", url],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)


def crop(png: Path, parts: list[tuple[Path, int, int]], width: int) -> None:
    from PIL import Image

    with Image.open(png) as im:
        for out, top, bottom in parts:
            im.crop((0, top, width, bottom)).save(out, optimize=True)


def run_py(args: list[str], cwd: Path, env: dict | None = None) -> None:
    e = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **(env or {}))
    subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=e, check=True,
                   stdout=subprocess.DEVNULL)


def report(out: Path, tmp: Path) -> None:
    logs = tmp / "logs"
    run_py(["--engine", "local", "--volatility", "4", "--run-duration-seconds", "3600",
            "--quiet", "--report", "--log-dir", str(logs)], tmp)
    (run_dir,) = list(logs.iterdir())
    full = tmp / "report_full.png"
    screenshot((run_dir / "report.html").as_uri(), full, 1280, 4200)
    crop(full, [(out / "report.png", 0, 1520), (out / "report_premium.png", 2400, 3560)], 1280)
    print(f"report pictures from {run_dir}")


def live(out: Path, tmp: Path) -> None:
    log = tmp / "tty.log"
    cmd = (f"{sys.executable} {ROOT / 'run.py'} --monitoring-enabled --speed 20 "
           f"--run-duration-seconds 600 --volatility 4 --log-dir {tmp / 'logs'}")
    subprocess.run(["script", "-qc", cmd, str(log)], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"), timeout=600)
    text = log.read_bytes().decode("utf-8", "replace")
    frames = [f for f in re.split(r"\x1b\[\d+F", text) if "premium bps" in f]
    if not frames:
        sys.exit("readme_pictures: the run drew no live view (was it on a pseudo-terminal?)")
    frame = frames[-1].split("\x1b[J")[0].replace("\x1b[K", "").replace("\r", "")
    frame = frame[frame.index("event time"):].rstrip()
    page = tmp / "live.html"
    page.write_text(
        "<!DOCTYPE html><html><body style='margin:0;background:#1e1e1e'>"
        "<pre style='margin:0;padding:14px 18px;color:#d4d4d4;font:14px/1.35 "
        "\"DejaVu Sans Mono\",monospace'>"
        f"<span style='color:#6a9955'>$ python run.py --monitoring-enabled --speed 20 ..."
        f"</span>\n{html.escape(frame)}</pre></body></html>")
    lines = frame.count("\n") + 2
    screenshot(page.as_uri(), out / "live_view.png", 1120, 30 + 19 * lines, 2000)
    print("live view picture")


def metrics(out: Path, tmp: Path) -> None:
    prom = shutil.which("prometheus")
    if not prom:
        sys.exit("readme_pictures: no prometheus binary (apt-get install prometheus)")
    port, prom_port = 18080, 19090
    (tmp / "prom.yml").write_text(
        "global: {scrape_interval: 2s}\nscrape_configs:\n  - job_name: ray\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
    p = subprocess.Popen([prom, f"--config.file={tmp / 'prom.yml'}",
                          f"--storage.tsdb.path={tmp / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{prom_port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_py(["--monitoring-enabled", "--metrics-export-port", str(port), "--speed", "10",
                "--run-duration-seconds", "1800", "--volatility", "4", "--quiet",
                "--log-dir", str(tmp / "logs")], tmp)
        time.sleep(3)
        for name, expr in (("metrics_premium.png", "max by (symbol) (ray_arb_premium_bps)"),
                           ("metrics_pnl.png", "sum(max by (symbol) (ray_arb_pnl_usd))")):
            q = urllib.parse.urlencode({"g0.expr": expr, "g0.tab": "0", "g0.range_input": "5m",
                                        "g0.stacked": "0", "g0.show_exemplars": "0"})
            url = f"http://127.0.0.1:{prom_port}/graph?{q}"
            urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/-/ready", timeout=5)
            screenshot(url, out / name, 1280, 720, 8000)
        print("metrics pictures")
    finally:
        p.terminate()
        p.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("report", "live", "metrics"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="readme-pictures-"))
    try:
        for name, fn in (("report", report), ("live", live), ("metrics", metrics)):
            if args.only in (None, name):
                sub = tmp / name
                sub.mkdir()
                fn(out, sub)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
