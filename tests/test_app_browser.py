"""The app in a real browser: Playwright driving Debian's Chromium (no browser download).

Set ``MUSEGEN_SCREENSHOT=docs/app.png`` to save a screenshot of the page after the generation
(how the README's picture is made; ``MUSEGEN_SCREENSHOT_CHECKPOINT`` swaps in a trained model).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
EXAMPLE = Path(__file__).resolve().parents[1] / "musegen" / "examples" / "mozart_quartet.mid"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    from musegen.app import blocks as ui
    from musegen.app.session import Workspace
    from musegen.pipeline import Pipeline

    checkpoint = os.environ.get("MUSEGEN_SCREENSHOT_CHECKPOINT") or tiny_checkpoint
    workspace = Workspace(tmp_path_factory.mktemp("workspace"))
    cap = None if os.environ.get("MUSEGEN_SCREENSHOT_CHECKPOINT") else 64
    demo = ui.build_app(
        Pipeline.from_pretrained(checkpoint), workspace=workspace, max_new_tokens=cap
    )
    yield ui.launch(demo, port=free_port(), block=False, quiet=True)
    demo.close()
    demo.musegen_composer.close()
    workspace.close()


@pytest.fixture
def page(app_url: str):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--mute-audio",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1300})
        page.set_default_timeout(120_000)
        yield page
        browser.close()


def _wait_for_downloads(page) -> None:
    """Both files are offered: the file list renders after the status on a loaded machine."""
    page.wait_for_function(
        "() => ['.mid', '.wav'].every(x => "
        "(document.querySelector('#files-0')?.innerText || '').includes(x))",
        timeout=60_000,
    )


def test_upload_generate_shows_player_and_pianoroll(page, app_url: str):
    base = app_url.rstrip("/")
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda r: None if r.url.startswith((base, "data:", "blob:")) else elsewhere.append(r.url),
    )
    page.goto(app_url)
    page.locator("#generate").wait_for()
    page.locator("input[type=file]").first.set_input_files(str(EXAMPLE))
    page.get_by_text(f"Prompt: {EXAMPLE.name}").wait_for()

    page.locator("input[aria-label='number input for Variations']").fill("2")
    page.keyboard.press("Enter")
    page.locator("#generate").click()
    for i in (0, 1):
        page.locator(
            f"#audio-{i} [data-testid='waveform-controls'] button[aria-label='Play']"
        ).wait_for()
    wav_link = page.locator("#audio-0 a[data-testid='download-link']")
    assert (wav_link.get_attribute("href") or "").endswith(".flac")  # the streamed preview
    roll = page.locator("#roll-0 img")
    roll.wait_for()
    assert (roll.get_attribute("src") or "").endswith(".png")
    assert page.evaluate("img => img.complete && img.naturalWidth > 100", roll.element_handle())
    # The preview comes first; the full-length WAV is offered once the request is done.
    page.locator("#status").get_by_text("Done").wait_for()
    _wait_for_downloads(page)
    assert page.locator("#status").inner_text().startswith(("Done", "Stopped early"))
    assert "rendered with" in page.inner_text("body") or "built-in synth" in page.inner_text("body")
    assert not elsewhere, f"the page fetched from outside the app: {elsewhere[:5]}"

    if target := os.environ.get("MUSEGEN_SCREENSHOT"):
        page.mouse.move(0, 0)
        page.screenshot(path=target, full_page=True)


@pytest.fixture(scope="module")
def infill_url(tmp_path_factory: pytest.TempPathFactory):
    """The app around a tiny model with room for infilling (a 512-token context)."""
    import torch

    from musegen.app import blocks as ui
    from musegen.app.session import Workspace
    from musegen.checkpoint import save_pretrained
    from musegen.config import preset
    from musegen.model.transformer import MusicTransformer
    from musegen.pipeline import Pipeline
    from musegen.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = MusicTransformer(preset("tiny", vocab_size=len(tokenizer), max_seq_len=512))
    path = save_pretrained(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "infill")
    workspace = Workspace(tmp_path_factory.mktemp("workspace"))
    demo = ui.build_app(Pipeline.from_pretrained(path), workspace=workspace, max_new_tokens=48)
    yield ui.launch(demo, port=free_port(), block=False, quiet=True)
    demo.close()
    demo.musegen_composer.close()
    workspace.close()


def test_select_bars_regenerate_and_play_the_preview(page, infill_url: str, tmp_path: Path):
    """Upload, read the bars and tracks, choose bars 2-3, Regenerate: the A/B players appear
    and the preview (lead-in + new bars, compressed) plays."""
    from conftest import write_midi

    piece = write_midi(tmp_path / "band.mid", bars=6, tracks=((0, False), (33, False)), seed=2)
    page.goto(infill_url)
    page.locator("#regenerate").wait_for()
    page.locator("input[type=file]").first.set_input_files(str(piece))
    page.get_by_text("Prompt: band.mid").wait_for()
    assert "6 bars" in page.locator("#prompt-info").inner_text()
    page.wait_for_function(
        "() => (document.querySelector('#prompt-overview')?.innerText || '').includes('Bass')"
    )

    page.locator("#infill-bars input, #infill-bars textarea").first.fill("2-3")
    page.locator("#regenerate").click()
    play = page.locator("#audio-0 [data-testid='waveform-controls'] button[aria-label='Play']")
    play.wait_for()
    page.locator("#status").get_by_text("Done").wait_for()
    link = page.locator("#audio-0 a[data-testid='download-link']")
    assert (link.get_attribute("href") or "").endswith((".flac", ".ogg"))
    page.locator(
        "#original-audio [data-testid='waveform-controls'] button[aria-label='Play']"
    ).wait_for()
    assert "bars 1–4" in page.locator("body").inner_text(), "zoomed: lead-in + span + 1 bar"
    assert page.locator("#again-0").inner_text().strip() == "Keep this"
    _wait_for_downloads(page)
    play.click()
    page.locator("#audio-0 [data-testid='waveform-controls'] button[aria-label='Pause']").wait_for(
        timeout=30_000
    )
