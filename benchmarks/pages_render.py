"""The error-analysis page at MELD's test size: write time, size, first render and filter times in headless Chromium.

    python benchmarks/pages_render.py [--turns 2610] [--dialogues 280] [--objectives 10] [--loads 3]
                                      [--screenshot docs/pages.png]
    python benchmarks/pages_render.py --screenshot-only reports/final/index.html   # after `make demo`

Builds the demo corpus (real H.264/AAC clips, extracted to frames and wavs by the extract stage's code),
tiles its test table up to ``--turns`` turns in ``--dialogues`` dialogues (texts, speakers and gold labels from
real MELD dev when ``../shared/meld-text`` is there, so the transcripts have MELD's lengths), writes seeded
predictions for ``--objectives`` objectives and the pages with the stage's code (``hlm12erc.pages``), then
opens one page ``--loads`` times in headless Chromium (Debian's, driven by Selenium; nothing downloaded).

First render: navigation start to the end of the page's script (every dialogue in the DOM, filters wired:
``window.__renderMs``) and to the load event. Filters: the time of one click including style and layout.
Writes its own page under docs/benchmarks/ (``common.write_page``: the command, the machine and the date).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import pandas as pd
import yaml

from hlm12erc import media
from hlm12erc.config import MELD_LABELS, DataParams, ExtractParams, TablesParams
from hlm12erc.data import demo, sources, tables
from hlm12erc.data.meld import load_table, normalize_text, read_meld_csv
from hlm12erc.pages import Evaluated, build_pages

ROOT = Path(__file__).resolve().parents[1]
MELD_DEV = ROOT.parent / "shared" / "meld-text" / "dev_sent_emo.csv"
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FIRST_RENDER_TARGET_S, SIZE_TARGET_MB = 1.5, 15.0


def demo_test_table(work: Path, jobs: int) -> Path:
    """The demo corpus (14 test dialogues) extracted and tabulated under ``work``; returns test.csv."""
    raw = work / "raw" / "MELD.Raw"
    demo.generate(raw, seed=7, dialogues={"train": 3, "dev": 1, "test": 14}, jobs=jobs)
    descriptor = {"source": "demo", **sources.detect_layout(raw)}
    manifest, _ = media.run_extract(descriptor, work / "media", ExtractParams(jobs=jobs), progress=False)
    built = tables.build_tables(descriptor, manifest, DataParams(), TablesParams(), MELD_LABELS,
                                media_dir=work / "media", table_dir=work / "tables")
    tables.write_tables(built, work / "tables")
    return work / "tables" / "test.csv"


def tiled(test_csv: Path, turns: int, dialogues: int, out: Path) -> Path:
    """The test table repeated to ``dialogues`` dialogues of ``turns`` turns in all (media paths kept)."""
    base = load_table(test_csv, MELD_LABELS)  # media paths absolute: written back relative to ``out``
    groups = [g for _, g in base.groupby("dialogue", sort=True)]
    sizes = np.full(dialogues, turns // dialogues)
    sizes[: turns % dialogues] += 1
    rows = []
    for d, size in enumerate(sizes):
        source = groups[d % len(groups)]
        for s in range(int(size)):
            row = source.iloc[s % len(source)].to_dict()
            row.update(dialogue=d, sequence=s, clip_id=f"dia{d}_utt{s}")
            rows.append(row)
    frame = pd.DataFrame(rows, columns=base.columns)
    if MELD_DEV.is_file():
        meld = read_meld_csv(MELD_DEV)
        pick = np.arange(len(frame)) % len(meld)
        frame["speaker"] = meld["Speaker"].map(normalize_text).to_numpy()[pick]
        frame["x_text"] = frame["x_text_raw"] = meld["Utterance"].map(normalize_text).to_numpy()[pick]
        frame["label"] = meld["Emotion"].str.strip().str.lower().to_numpy()[pick]
    for column in ("x_visual", "x_audio"):
        frame[column] = [os.path.relpath(v, out) if v else "" for v in frame[column]]
    path = out / "test.csv"
    frame.to_csv(path, index=False)
    return path


def predictions(table: pd.DataFrame, path: Path, seed: int) -> None:
    """Seeded predictions, about 60 % right, in the evaluate stage's format."""
    rng = np.random.default_rng(seed)
    gold = np.array([MELD_LABELS.index(v) for v in table["label"]])
    predicted = np.where(rng.random(len(table)) < 0.6, gold, rng.integers(0, len(MELD_LABELS), len(table)))
    logits = rng.normal(0, 1, (len(table), len(MELD_LABELS)))
    logits[np.arange(len(table)), predicted] += 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    frame = pd.DataFrame({"clip_id": table["clip_id"].astype(str), "label": table["label"],
                          "predicted": [MELD_LABELS[i] for i in predicted]})
    for i, label in enumerate(MELD_LABELS):
        frame[f"p_{label}"] = probs[:, i]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.6f")


def browser(width: int = 1280, height: int = 1400):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (os.path.isfile(CHROMIUM) and os.path.exists(DRIVER)):
        sys.exit(f"no {CHROMIUM} or {DRIVER}: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={width},{height}",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='hlm12erc-bench-chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def load(driver, page: Path) -> dict[str, float]:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")
    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "return document.body.dataset.ready === '1' && performance.timing.loadEventEnd > 0"))
    return driver.execute_script(
        "const t = performance.timing; return {render: window.__renderMs, load: t.loadEventEnd - t.navigationStart}")


CLICK_JS = """
const t0 = performance.now(); const e = document.querySelector(arguments[0]);
if (e.tagName === 'SELECT') { e.value = arguments[1]; e.dispatchEvent(new Event('change')); } else e.click();
document.body.offsetHeight; return performance.now() - t0;"""


def filter_times(driver, other: str) -> dict[str, float]:
    """ms of one click (the handler, then style and layout) for the filters a reader uses first."""
    return {"errors only": driver.execute_script(CLICK_JS, "#f-err"),
            "confusion cell": driver.execute_script(CLICK_JS, '#cm td[data-r="4"][data-c="3"]'),
            "clear": driver.execute_script(CLICK_JS, "#f-clear"),
            "sort by errors": driver.execute_script(CLICK_JS, "#f-sort", "errors"),
            "compare + disagree": driver.execute_script(CLICK_JS, "#f-cmp", other)
            + driver.execute_script(CLICK_JS, "#f-dis")}


def screenshot(page: Path, out: Path) -> None:
    driver = browser(1280, 1150)
    try:
        load(driver, page)
        time.sleep(0.5)  # the visible thumbnails decode
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=2610)
    parser.add_argument("--dialogues", type=int, default=280)
    parser.add_argument("--objectives", type=int, default=10, help="pages written (each holds the others' labels)")
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder of the page (default docs/benchmarks)")
    parser.add_argument("--screenshot", default=str(ROOT / "docs" / "pages.png"), help="'' for none")
    parser.add_argument("--screenshot-only", default=None, metavar="PAGE", help="only screenshot PAGE to --screenshot")
    parser.add_argument("--keep", default=None, help="build in this folder and keep it")
    args = parser.parse_args(argv)
    if args.screenshot_only:
        screenshot(Path(args.screenshot_only), Path(args.screenshot))
        print(f"wrote {args.screenshot}")
        return 0
    work = Path(args.keep or tempfile.mkdtemp(prefix="hlm12erc-pages-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        test = tiled(demo_test_table(work / "demo", args.jobs), args.turns, args.dialogues, work)
        table = load_table(test, MELD_LABELS)
        known = list(yaml.safe_load((ROOT / "params.yaml").read_text())["objectives"])  # the real names, for looks
        names = (known + [f"objective{i}" for i in range(args.objectives)])[: args.objectives]
        shown = "final" if "final" in names else names[0]
        for seed, name in enumerate(names):
            predictions(table, work / "plots" / name / "predictions.csv", seed)
        objectives = [Evaluated(n, work / "plots" / n / "predictions.csv", ("text", "audio", "visual"))
                      for n in names]
        with common.timed() as writing:
            written, _ = build_pages(test, objectives, work / "reports", MELD_LABELS, reference=shown)
        write_s = writing.seconds
        page = work / "reports" / shown / "index.html"
        size_mb = page.stat().st_size / 1e6
        html = page.read_text(encoding="utf-8")
        thumbs = html.count("data:image/jpeg;base64,")
        driver = browser()
        try:
            loads = [load(driver, page) for _ in range(args.loads)]
            filters = filter_times(driver, next(n for n in names if n != shown))
        finally:
            driver.quit()
        render = statistics.median(x["render"] for x in loads) / 1000
        onload = statistics.median(x["load"] for x in loads) / 1000
        rows = [("turns / dialogues", f"{len(table):,} / {table['dialogue'].nunique()}", ""),
                ("page + thumbnails (one file)", f"{size_mb:.1f} MB", f"< {SIZE_TARGET_MB:g} MB"),
                ("thumbnails embedded", f"{thumbs:,}", ""),
                ("first render (navigation start to the end of the page's script), median", f"{render:.2f} s",
                 f"< {FIRST_RENDER_TARGET_S:g} s"),
                ("navigation start to load event, median", f"{onload:.2f} s", ""),
                ("all loads, render s", " / ".join(f"{x['render'] / 1000:.2f}" for x in loads), ""),
                (f"writing {len(written)} pages + index (thumbnails once)", f"{write_s:.1f} s", "")]
        base = len(pd.read_csv(work / "demo" / "tables" / "test.csv"))
        notes = [f"{len(table):,} turns tiled from the demo's {base} test turns (real extracted frames and wavs)"
                 + (", texts/speakers/labels from MELD dev" if MELD_DEV.is_file() else "")
                 + f"; {args.objectives} objectives with seeded predictions; Chromium headless, 1280x1400 window",
                 f"audio: {'embedded' if 'data:audio/wav' in html else 'linked to the wav files (over the budget)'}"]
        table_md = (common.markdown_table(("measure", "value", "target"), rows) + "\n\n"
                    + common.markdown_table(("filter click (handler + style + layout)", "ms"),
                                            [(name, f"{ms:.0f}") for name, ms in filters.items()]))
        common.write_page(__file__, "Error-analysis page: size and first render", table_md,
                          "\n".join(f"- {n}" for n in notes), folder=Path(args.out) if args.out else None, argv=argv
                          and ["benchmarks/pages_render.py", *argv])
        if args.screenshot:
            screenshot(page, Path(args.screenshot))
            print(f"wrote {args.screenshot}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
