"""The error-analysis page in a real browser: headless Debian Chromium driven by Selenium (no Selenium Manager,
nothing downloaded), on pages built from the demo corpus's extracted frames and wavs with seeded predictions.

It checks what a reader relies on: a known dialogue's transcript, the errors-only filter against predictions.csv,
a confusion cell filtering to its turns, the comparison's disagreements, a thumbnail and an audio element that
resolve (audio embedded and, over the budget, linked from file://)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hlm12erc.config import MELD_LABELS
from hlm12erc.data.meld import load_table
from hlm12erc.pages import Evaluated, build_pages
from pages_support import WAIT_S, open_page, shown_clips, write_demo_tables, write_predictions

NAMES = ("final", "text_finetune")


@pytest.fixture(scope="module")
def site(data_demo_media, tmp_path_factory) -> Path:
    """reports/ (audio embedded) and linked/ (audio over a zero budget: linked) for two objectives."""
    descriptor, media_dir, manifest = data_demo_media
    root = tmp_path_factory.mktemp("site")
    test = write_demo_tables(descriptor, manifest, media_dir, root / "tables")
    table = load_table(test, MELD_LABELS)
    objectives = []
    for seed, name in enumerate(NAMES):
        write_predictions(table, root / "plots" / name / "predictions.csv", seed)
        objectives.append(Evaluated(name, root / "plots" / name / "predictions.csv", ("text", "audio", "visual")))
    for out, budget in (("reports", 4_000_000), ("linked", 0)):
        written, refused = build_pages(test, objectives, root / out, MELD_LABELS, reference="final",
                                       audio_budget=budget)
        assert len(written) == 2 and not refused
    return root


def predictions(site: Path, name: str = "final") -> pd.DataFrame:
    return pd.read_csv(site / "plots" / name / "predictions.csv")


def test_the_transcript_of_a_known_dialogue_is_on_the_page(site, browser):
    open_page(browser, site / "reports" / "final" / "index.html")
    table = pd.read_csv(site / "tables" / "test.csv", keep_default_na=False)
    first = table[table["dialogue"] == table["dialogue"].iloc[0]].sort_values("sequence")
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('.dlg')[0].querySelectorAll('.turn')).map(e => "
        "[e.querySelector('.who').textContent, e.querySelector('.txt').textContent])")
    assert rows == [[s, t] for s, t in zip(first["speaker"], first["x_text"])]
    assert browser.find_element("css selector", ".dlg h3").text.startswith(f"Dialogue {first['dialogue'].iloc[0]}")
    assert len(shown_clips(browser)) == len(table)


def test_errors_only_leaves_exactly_the_wrong_turns(site, browser):
    open_page(browser, site / "reports" / "final" / "index.html")
    browser.find_element("id", "f-err").click()
    frame = predictions(site)
    wrong = frame.loc[frame["label"] != frame["predicted"], "clip_id"].tolist()
    assert wrong and shown_clips(browser) == wrong
    assert browser.find_element("id", "count").text.startswith(f"{len(wrong)} of {len(frame)} turns")
    assert all("err" in e.get_attribute("class") for e in browser.find_elements("css selector", ".turn:not(.hide)"))


def test_a_confusion_cell_filters_to_its_turns(site, browser):
    open_page(browser, site / "reports" / "final" / "index.html")
    frame = predictions(site)
    off = frame[frame["label"] != frame["predicted"]].iloc[0]
    gold, guess = MELD_LABELS.index(off["label"]), MELD_LABELS.index(off["predicted"])
    cell = browser.find_element("css selector", f'#cm td[data-r="{gold}"][data-c="{guess}"]')
    expected = frame.loc[(frame["label"] == off["label"]) & (frame["predicted"] == off["predicted"]), "clip_id"]
    assert cell.text == str(len(expected))
    cell.click()
    assert shown_clips(browser) == expected.tolist()
    assert "sel" in cell.get_attribute("class")
    browser.find_element("id", "f-clear").click()
    assert len(shown_clips(browser)) == len(frame)


def test_the_comparison_shows_the_turns_where_two_objectives_disagree(site, browser):
    open_page(browser, site / "reports" / "final" / "index.html", "#compare=text_finetune")
    assert browser.find_element("id", "f-cmp").get_attribute("value") == "text_finetune"
    browser.find_element("id", "f-dis").click()
    a, b = predictions(site), predictions(site, "text_finetune")
    assert shown_clips(browser) == a.loc[a["predicted"] != b["predicted"], "clip_id"].tolist()


@pytest.mark.parametrize("folder", ["reports", "linked"])
def test_a_thumbnail_and_an_audio_element_resolve(site, browser, folder):
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, site / folder / "final" / "index.html")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
        "const i = document.querySelector('img.thumb'); return i && i.complete && i.naturalWidth > 0"))
    button = browser.find_element("css selector", "button.play")
    src = browser.execute_script("return arguments[0].closest('.turn').dataset.clip", button)
    button.click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
        "const a = document.querySelector('audio'); return a && a.readyState >= 1 && a.duration > 0"))
    audio = browser.find_element("css selector", "audio")
    url = audio.get_attribute("src")
    assert url.startswith("data:audio/wav;base64,") if folder == "reports" else url.startswith("file://")
    assert src == browser.execute_script("return arguments[0].closest('.turn').dataset.clip", audio)
    if folder == "reports":
        browser.save_screenshot(str(site / "page.png"))
        assert (site / "page.png").stat().st_size > 10_000


def test_the_index_opens_a_comparison_of_two_objectives(site, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get("about:blank")
    browser.get((site / "reports" / "index.html").resolve().as_uri())
    assert [a.text for a in browser.find_elements("css selector", "table a")][:2] == list(NAMES)
    browser.find_element("css selector", "#cmp button").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    assert browser.current_url.endswith("/final/index.html#compare=text_finetune")
    assert browser.find_element("id", "f-cmp").get_attribute("value") == "text_finetune"
    assert "text_finetune: " in browser.find_element("css selector", ".turn .cmp").text


def test_the_page_works_as_mlflow_shows_it_in_a_sandboxed_blob_iframe(site, browser):
    """MLflow's artifact view puts an HTML artifact in <iframe sandbox="allow-scripts" src=blob:...>: an opaque
    origin where nothing relative resolves; the embedded page must still render, filter and show its media."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get("about:blank")
    browser.execute_script(
        "const f = document.createElement('iframe'); f.sandbox = 'allow-scripts'; f.width = 1200; f.height = 900;"
        "f.src = URL.createObjectURL(new Blob([arguments[0]], {type: 'text/html'})); document.body.appendChild(f);",
        (site / "reports" / "final" / "index.html").read_text(encoding="utf-8"))
    browser.switch_to.frame(browser.find_element("tag name", "iframe"))
    try:
        WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
            "const i = document.querySelector('img.thumb');"
            "return document.body.dataset.ready === '1' && i && i.complete && i.naturalWidth > 0"))
        browser.find_element("id", "f-err").click()
        frame = predictions(site)
        assert shown_clips(browser) == frame.loc[frame["label"] != frame["predicted"], "clip_id"].tolist()
        browser.find_element("css selector", "button.play").click()
        WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
            "const a = document.querySelector('audio'); return a && a.duration > 0"))
    finally:
        browser.switch_to.default_content()
