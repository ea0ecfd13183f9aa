"""The viewer's benchmarks: time to first picture in headless Chromium, and the size of a scene in each splat format.

    python bench/viewer_bench.py --splats 100000 1000000            # synthetic balls of splats
    python bench/viewer_bench.py --scene outputs/demo/scene --sizes  # a trained scene's export sizes

Time to first picture: from asking the page to load until splats cover 1% of the canvas (read every 0.5 s), for the
live viewer (after its server is up; the Python side's preparation is reported apart) and for the static export
served by Python's plain static file server. Chromium runs with software GL (SwiftShader) here: the figures compare
sizes and modes with each other, not with a machine that has a GPU.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

from test_viewer_browser import CHROMIUM, CHROMIUM_ARGS, FIXED_PIXELS, Tab, _QuietHandler  # noqa: E402
from viewer_scenes import ball_splats  # noqa: E402

from viewers import static  # noqa: E402
from viewers.formats import FORMATS, write_splats  # noqa: E402
from viewers.scene import StillTimeline, ViewScene, load_view_scene  # noqa: E402
from viewers.server import Viewer, ViewerConfig  # noqa: E402


def first_picture_seconds(tab: Tab, url: str, timeout: float) -> float:
    tic = time.perf_counter()
    tab.page.goto(url)
    while time.perf_counter() - tic < timeout:
        if (tab.canvas()[..., 3] > 0.5).mean() >= 0.01:
            return time.perf_counter() - tic
        time.sleep(0.5)
    return float("nan")


def live(browser, scene: ViewScene, timeout: float) -> tuple[float, float]:
    tic = time.perf_counter()
    viewer = Viewer(scene, ViewerConfig(port=0))
    prepare = time.perf_counter() - tic
    tab = Tab(browser)
    try:
        return prepare, first_picture_seconds(tab, viewer.url + FIXED_PIXELS, timeout)
    finally:
        tab.close()
        viewer.stop()


def static_site(browser, scene: ViewScene, timeout: float) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as folder:
        tic = time.perf_counter()
        site = static.run(scene, Path(folder) / "site")
        export = time.perf_counter() - tic
        size = sum(p.stat().st_size for p in site.iterdir())
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 functools.partial(_QuietHandler, directory=str(site)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        tab = Tab(browser)
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/index.html{FIXED_PIXELS}"
            return export, first_picture_seconds(tab, url, timeout), size
        finally:
            tab.close()
            server.shutdown()


def sizes(splats, label: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        row = {fmt: write_splats(Path(folder) / f"s.{fmt}", splats).stat().st_size for fmt in FORMATS}
    print(f"| {label} | {len(splats):,} | {splats.sh_degree} | " + " | ".join(f"{row[f] / 1e6:.2f} MB" for f in FORMATS)
          + f" | {row['ply'] / row['spz']:.1f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splats", type=int, nargs="*", default=[], help="synthetic scene sizes to time")
    parser.add_argument("--scene", type=Path, default=None, help="a scene folder or splat file (sizes, timing)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a first picture")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    scenes = [(f"synthetic ball, {n:,} splats", ViewScene(Path(f"ball{n}"), StillTimeline(ball_splats(n))))
              for n in args.splats]  # fmt: skip
    if args.scene is not None:
        scenes.append((f"{args.scene}", load_view_scene(args.scene)))
    print("| scene | splats | SH degree | .ply | .splat | .spz | .ply / .spz |\n|---|---|---|---|---|---|---|")
    for label, scene in scenes:
        sizes(scene.timeline.at(0.0), label)
    print("\n| scene | live: prepare (s) | live: first picture (s) | static: export (s) | static: size | "
          "static: first picture (s) |\n|---|---|---|---|---|---|")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        for label, scene in scenes:
            prepare, live_first = live(browser, scene, args.timeout)
            export, static_first, size = static_site(browser, scene, args.timeout)
            print(f"| {label} | {prepare:.1f} | {live_first:.1f} | {export:.1f} | {size / 1e6:.1f} MB | "
                  f"{static_first:.1f} |", flush=True)
        browser.close()


if __name__ == "__main__":
    main()
