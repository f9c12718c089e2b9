"""`tatk demo` in a real browser (Debian's chromium driven by Playwright), the Space folder (`tatk space`,
`tatk push --space`) and its app.py served and queried, and the upload checks the page relies on.

Set TATK_DEMO_SCREENSHOT=docs/demo.png to keep the page's screenshot for the docs (tools/demo_screenshot.sh).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import REPO, run_tatk

from tatk.export.app import check_audio

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing in the background that would reach the network (the machine may have none).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(cmd: list[str], port: int, log: Path, cwd: Path = REPO, env: dict | None = None, timeout: float = 240.0):
    """Run ``cmd`` (a server on 127.0.0.1:``port``, output to ``log``) until the page answers; yields its URL;
    stops it after."""
    out = open(log, "w")  # a file, not a pipe: nobody reads a pipe while the server runs, and a full one blocks it
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{' '.join(cmd)} exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{' '.join(cmd)}: no page at {url} after {timeout:.0f} s"
            time.sleep(1.0)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


@pytest.fixture(scope="module")
def clip(asr_run, tmp_path_factory) -> Path:
    """One synthetic (espeak-ng) test clip of the fixture corpus, as its original encoded file."""
    import pyarrow.parquet as pq

    row = pq.read_table(sorted(asr_run["corpus"].rglob("*test*.parquet"))[0], columns=["wav"]).to_pylist()[0]
    path = tmp_path_factory.mktemp("clip") / Path(row["wav"]["path"]).name
    path.write_bytes(row["wav"]["bytes"])
    return path


@pytest.fixture(scope="module")
def exported(asr_run, tmp_path_factory) -> Path:
    """The fixture model exported (`tatk export`), as a Space or `tatk push` would get it."""
    out = tmp_path_factory.mktemp("export") / "model"
    run_tatk("export", asr_run["checkpoint"], out)
    return out


@pytest.fixture(scope="module")
def pipe(asr_run):
    """The pipeline users get for the fixture model: the reference the page must agree with."""
    from tatk.export import load_pipeline

    return load_pipeline(str(asr_run["run"]))


@pytest.fixture(scope="module")
def expected(pipe, clip) -> str:
    text = pipe(str(clip))["text"]
    assert text, "the fixture model transcribes the clip to nothing: comparing with the page would prove little"
    return text


def test_check_audio_refuses_bad_uploads(tmp_path):
    """The reasons the page shows: not audio, empty, too long; a good file gives its duration."""
    good = tmp_path / "good.wav"
    soundfile.write(good, np.zeros(24_000, np.float32), 16_000)
    assert check_audio(str(good), 10.0) == pytest.approx(1.5)
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16_000)
    zero = tmp_path / "zero.flac"
    zero.write_bytes(b"")
    whole = tmp_path / "whole.flac"
    soundfile.write(whole, np.random.default_rng(0).standard_normal(48_000).astype(np.float32) * 0.1, 16_000)
    cut = tmp_path / "cut.flac"  # its header promises 3 s; the data breaks off a third of the way in
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    assert soundfile.info(str(cut)).duration == pytest.approx(3.0)
    cases = {str(cut): "cut.flac is damaged", str(text): "notes.txt is not an audio file", str(empty): "empty.wav is empty",
             str(zero): "zero.flac is not an audio file", str(good): "good.wav is 1.5 s long; this demo takes at most 1 s",
             "": "no audio"}
    for path, reason in cases.items():
        with pytest.raises(ValueError, match=reason):
            check_audio(path, 1.0 if path == str(good) else 10.0)


def _upload_and_transcribe(page, path: Path | None) -> str:
    """Upload ``path`` (None: the clip is already recorded) and press Transcribe once the page holds the
    audio (its download link appears when the upload is done); returns the audio's URL on the server."""
    if path is not None:
        page.locator("#audio input[type=file]").set_input_files(str(path))
    link = page.locator("#audio a[data-testid=download-link]")
    link.wait_for(timeout=30_000)
    page.locator("#transcribe").click()
    return link.get_attribute("href")


@pytest.mark.slow
def test_demo_in_browser(asr_run, clip, pipe, expected, tmp_path):
    """`tatk demo RUN`: the clip uploaded through the page, then recorded from a (fake) microphone, gives the
    pipeline's transcript of the same audio; a text file, and a text file named .wav, are refused with their
    reason in the page; a screenshot after transcription is a real picture."""
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} missing: tools/setup.sh installs Debian's chromium"
    mic = tmp_path / "mic.wav"  # chromium's fake microphone plays a WAV file, in a loop
    soundfile.write(mic, soundfile.read(clip)[0], soundfile.info(str(clip)).samplerate, subtype="PCM_16")
    fake_mic = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic}"]
    port, status = free_port(), "#status"
    cmd = [sys.executable, "-m", "tatk", "demo", str(asr_run["run"]), "--port", str(port), "--max-seconds", "60"]
    with serving(cmd, port, tmp_path / "demo.log", env={"OMP_NUM_THREADS": "1"}) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + fake_mic)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 820})
            page.goto(url)
            _upload_and_transcribe(page, clip)
            seconds = soundfile.info(str(clip)).duration
            expect(page.locator(status)).to_contain_text(f"{seconds:.2f} s of audio, transcribed in", timeout=120_000)
            assert page.locator("#transcript textarea").input_value() == expected
            assert not page.locator("#words").is_visible(), "word timestamps offered without an aligner"
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)

            page.reload()  # a fresh page for each of the next inputs
            page.get_by_role("button", name="Record audio").click()
            page.locator("#audio button.record-button").click()
            page.wait_for_timeout(3000)
            page.locator("#audio button.stop-button").click()
            recorded = tmp_path / "recorded.wav"  # what the server got: the reference transcript is of this file
            recorded.write_bytes(urllib.request.urlopen(_upload_and_transcribe(page, None)).read())
            got = soundfile.info(str(recorded)).duration
            expect(page.locator(status)).to_contain_text(f"{got:.2f} s of audio, transcribed in", timeout=120_000)
            assert got > 1.0 and page.locator("#transcript textarea").input_value() == pipe(str(recorded))["text"]

            page.reload()
            notes = tmp_path / "notes.txt"
            notes.write_text("this is not audio\n")
            page.locator("#audio input[type=file]").set_input_files(str(notes))  # refused by Gradio's own file-type check
            expect(page.get_by_text("Invalid file type: notes.txt")).to_be_visible(timeout=30_000)
            fake = tmp_path / "fake.wav"  # an audio name on text: passes the browser's check, not ours
            fake.write_text("this is not audio either\n")
            _upload_and_transcribe(page, fake)
            expect(page.locator(status)).to_contain_text("Cannot transcribe: fake.wav is not an audio file", timeout=60_000)
            assert page.locator("#transcript textarea").input_value() == ""
            assert "Traceback" not in page.content()
        finally:
            browser.close()
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.width >= 900 and img.height >= 500
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 100, "a blank or near-blank page"
    if os.environ.get("TATK_DEMO_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["TATK_DEMO_SCREENSHOT"])


@pytest.mark.slow
def test_space_folder_serves_the_same_app(exported, clip, expected, tmp_path):
    """`tatk space`: README header, pinned requirements, app.py = the demo's app; served from the folder with
    TATK_MODEL pointing at an export, its queue API gives the pipeline's transcript."""
    from importlib.metadata import version

    from gradio_client import Client, handle_file
    from huggingface_hub import SpaceCard

    space = tmp_path / "space"
    run_tatk("space", "someone/tiny-asr", space)
    meta = SpaceCard.load(space / "README.md").data
    assert (meta.sdk, meta.app_file, meta.models, meta.sdk_version) == ("gradio", "app.py", ["someone/tiny-asr"], version("gradio"))
    for line in (space / "requirements.txt").read_text().splitlines():
        name, pinned = line.split("==")
        assert pinned == version(name).split("+")[0]
    app = (space / "app.py").read_text()
    source = (REPO / "tatk/export/app.py").read_text()
    assert app == source.replace("MODEL_ID = None", "MODEL_ID = 'someone/tiny-asr'")

    port = free_port()
    env = {"TATK_MODEL": str(exported), "GRADIO_SERVER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    with serving([sys.executable, "app.py"], port, tmp_path / "space.log", cwd=space, env=env) as url:
        client = Client(url, verbose=False)
        text, status, _ = client.predict(handle_file(str(clip)), False, api_name="/transcribe")
    assert text == expected and "transcribed in" in status


def test_push_space_dry_run_and_bad_ids(exported, tmp_path):
    """`tatk push --space --dry-run` validates and lists both repositories' files; bad ids fail in one line."""
    model = exported
    out = run_tatk("push", model, "someone/tiny-asr", "--space", "someone/tiny-asr-demo", "--dry-run").stdout
    assert "to someone/tiny-asr\n" in out and "would upload 3 files" in out and "to Space someone/tiny-asr-demo" in out
    for name in ("app.py", "requirements.txt", "README.md"):
        assert f"  {name}\n" in out
    bad = run_tatk("push", model, "someone/tiny-asr", "--space", "not a repo!", "--dry-run", check=False)
    assert bad.returncode == 2 and "not a Hub repository id" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = run_tatk("space", "no-owner", tmp_path / "s", check=False)
    assert bad.returncode == 2 and "give it as owner/name" in bad.stderr
    from tatk.errors import UserError
    from tatk.export.space import push_space

    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):  # conftest keeps the tests off the Hub
        push_space("someone/tiny-asr", "someone/tiny-asr-demo")


def test_demo_refuses_a_busy_port_before_loading(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        proc = run_tatk("demo", tmp_path / "no-such-model", "--port", busy, check=False)
    assert proc.returncode == 2 and f"127.0.0.1:{busy}" in proc.stderr and "--port" in proc.stderr


def test_app_ships_alone():
    """The Space's app.py is tatk/export/app.py verbatim: it may import no part of tatk."""
    import ast

    tree = ast.parse((REPO / "tatk/export/app.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "tatk" or n == ""], names


class _Timed:
    """The real pipeline, noting when each call starts and ends (to see whether calls overlap)."""

    def __init__(self, pipe):
        self.pipe, self.model, self.spans = pipe, pipe.model, []

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.pipe(*args, **kwargs)
        self.spans.append((start, time.perf_counter()))
        return out


@pytest.mark.slow
def test_requests_wait_in_line(pipe, clip, expected):
    """Four requests sent at once are answered one after another (Gradio's queue), each with the transcript."""
    from gradio_client import Client, handle_file

    from tatk.export.app import build_app, launch

    timed, port = _Timed(pipe), free_port()
    app = build_app(timed)
    launch(app, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        jobs = [client.submit(handle_file(str(clip)), False, api_name="/transcribe") for _ in range(4)]
        texts = [job.result(timeout=120)[0] for job in jobs]
    finally:
        app.close()
    assert texts == [expected] * 4 and len(timed.spans) == 4
    spans = sorted(timed.spans)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


@pytest.mark.slow
def test_word_timestamps_in_the_page(asr_run, clip, tmp_path):
    """A model exported with a forced aligner: the page offers word timestamps, and its table holds the
    pipeline's words and times for the clip. Needs `tatk export --aligner` (word timestamps); skipped before."""
    import inspect

    from playwright.sync_api import expect, sync_playwright

    from tatk.export import export, load_pipeline
    from tatk.export.app import build_app, launch

    if "aligner" not in inspect.signature(export).parameters:
        pytest.skip("this tatk has no word timestamps yet (tatk export --aligner)")
    from tatk.synthetic.aligner import build_tiny_aligner  # untrained: the page must show what the pipeline gives

    folder = export(asr_run["checkpoint"], tmp_path / "export", aligner=str(build_tiny_aligner(tmp_path / "ctc", steps=0)))
    pipe = load_pipeline(str(folder))
    words = [[c["text"], round(c["timestamp"][0], 2), round(c["timestamp"][1], 2)]
             for c in pipe(str(clip), return_timestamps="word")["chunks"]]
    assert words, "no words to compare"
    app, port = build_app(pipe), free_port()
    launch(app, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#words input[type=checkbox]").check()
            _upload_and_transcribe(page, clip)
            expect(page.locator("#status")).to_contain_text("transcribed in", timeout=120_000)
            shown = page.locator("#word-table").inner_text().split()  # header cells, then each row's cells
            browser.close()
    finally:
        app.close()
    assert shown[:5] == ["word", "start", "(s)", "end", "(s)"]
    cells = shown[5:]
    assert [[w, float(a), float(b)] for w, a, b in zip(cells[::3], cells[1::3], cells[2::3])] == words
    assert len(cells) == 3 * len(words)
