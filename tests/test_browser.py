"""The app in a real browser (Debian's headless Chromium, driven by Playwright), the way a learner uses it.

Opens the page, analyzes the bundled parent, moves a slider, builds, sweeps, trains, exports, and saves a screenshot
of every view (to $SUBCLONE_SCREENSHOTS, default a temporary folder). Fails on any JavaScript error, any
console error, or any error toast.
"""
import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWS = ["1 · Parent & data", "2 · Anatomy", "3 · Design", "4 · Evaluate", "5 · Tradeoffs", "6 · Heal", "7 · Export",
         "8 · Learn"]


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (make test installs it)")
def test_every_view_in_chromium(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("SUBCLONE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda e: problems.append(f"JavaScript error: {e}"))
        page.on("console", lambda m: problems.append(f"console error: {m.text}") if m.type == "error" else None)

        def view(name, settle=0):
            page.get_by_role("tab", name=name).click()
            page.wait_for_timeout(settle)

        def shot(name):
            toasts = page.locator(".toast-body.error")
            if toasts.count():
                problems.append(f"error toast on '{name}': {toasts.first.inner_text()}")
            page.screenshot(path=shots / f"{VIEWS.index(name) + 1}-{name.split(' · ')[1].split()[0].lower()}.png",
                            full_page=True)

        page.goto(app_url)
        page.get_by_role("button", name="Analyze").click()
        page.get_by_text("Calibrated on").wait_for(timeout=180_000)
        shot(VIEWS[0])

        view(VIEWS[2])
        slider = page.locator("input[type=range]").first  # layers
        slider.focus()
        for _ in range(6):
            page.keyboard.press("ArrowLeft")
        page.get_by_text("shape: 24 layers").wait_for(timeout=10_000)
        page.get_by_text("The block search chooses the blocks at Build").wait_for(timeout=10_000)  # the default
        page.wait_for_timeout(2500)  # the greyed-out figures follow the readout
        shot(VIEWS[2])

        view(VIEWS[1], settle=1000)
        assert page.locator(".js-plotly-plot").count() >= 5
        shot(VIEWS[1])

        view(VIEWS[3])
        page.get_by_role("button", name="Build & evaluate").click()
        page.locator("span", has_text="top1_agreement").first.wait_for(timeout=180_000)
        page.get_by_role("button", name="Generate with both").click()
        page.locator("h5", has_text="child").first.wait_for(timeout=60_000)  # the child's generation
        shot(VIEWS[3])

        view(VIEWS[4])
        page.get_by_label("depths (layers)").fill("30, 24")
        page.get_by_label("widths (% of hidden and ffn)").fill("100, 75")
        page.get_by_role("button", name="Sweep", exact=True).click()
        page.get_by_text(re.compile(r"sweep-.*\.csv")).first.wait_for(timeout=180_000)  # the CSV comes last
        page.wait_for_timeout(1000)
        shot(VIEWS[4])

        view(VIEWS[5])
        page.get_by_label("steps").fill("2")
        page.get_by_role("button", name="Start").click()
        page.get_by_text("Best: subclone").wait_for(timeout=300_000)
        page.locator("span", has_text="held_out_loss").first.wait_for(timeout=10_000)
        shot(VIEWS[5])

        view(VIEWS[6])
        page.get_by_role("button", name="Export", exact=True).click()
        page.get_by_text("Wrote").first.wait_for(timeout=180_000)
        shot(VIEWS[6])

        view(VIEWS[7])
        assert page.get_by_text("What weight subcloning is").count() == 1
        shot(VIEWS[7])

        # an uploaded text: read into this session, named upload:<file> in the data box, and calibrated on
        from subclone.data import load_text

        lesson = tmp_path / "lesson.txt"
        lesson.write_text(load_text("builtin")[::-1][:60_000])  # other text than the built-in one
        view(VIEWS[0])
        page.locator("input[type=file][accept*='.parquet']").set_input_files(str(lesson))
        page.wait_for_function("() => [...document.querySelectorAll('textarea, input')].some("
                               "e => e.value === 'upload:lesson.txt')", timeout=30_000)
        page.get_by_role("button", name="Analyze").click()
        page.get_by_text("tokens of upload:lesson.txt").wait_for(timeout=180_000)
        browser.close()
    assert not problems, "\n".join(problems)
    assert len(list(shots.glob("*.png"))) >= len(VIEWS)
