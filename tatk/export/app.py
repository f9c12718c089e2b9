"""The web page for trying a trained recognizer: upload or record audio, read the transcript.

Used by ``tatk demo`` (``tatk/export/demo.py``) and copied verbatim as a Hugging Face Space's ``app.py``
(``tatk/export/space.py``), so it imports only gradio, soundfile and transformers, never tatk. Run as a
script it loads the model named by ``TATK_MODEL`` (a Hub id or a local export folder), else ``MODEL_ID``.

Gradio's queue runs one transcription at a time (``concurrency_limit=1``): a model is not shared by
parallel requests; the others wait in line and the page shows their place.
"""

from __future__ import annotations

import os
import time

import gradio as gr
import soundfile

MODEL_ID = None  # a Space's app.py names its model here (written by tatk/export/space.py)
MAX_SECONDS = 120.0  # longer uploads are refused before any work: a public page must not run for minutes
# System fonts: the default theme fetches Google Fonts, which a local demo on an offline machine cannot reach.
FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]


def check_audio(path: str | None, max_seconds: float) -> float:
    """The duration in seconds of the audio file at ``path``; ``ValueError`` with a one-line reason when it is
    missing, not audio soundfile can read, empty, longer than ``max_seconds`` (known from the header, before
    decoding) or damaged."""
    if not path:
        raise ValueError("no audio: upload a file or record from the microphone first")
    try:
        info = soundfile.info(path)
    except RuntimeError:  # soundfile's LibsndfileError: "format not recognised" (also for a 0-byte file)
        raise ValueError(f"{os.path.basename(path)} is not an audio file (WAV, FLAC, OGG or MP3)") from None
    if info.frames == 0 or info.samplerate <= 0:
        raise ValueError(f"{os.path.basename(path)} is empty (0 samples)")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise ValueError(f"{os.path.basename(path)} is {seconds:.1f} s long; this demo takes at most {max_seconds:g} s")
    try:  # a sound header on broken data (a cut-off download): decoding fails only here, and it is cheap
        soundfile.read(path, dtype="float32")
    except RuntimeError as e:
        raise ValueError(f"{os.path.basename(path)} is damaged ({str(e).strip()})") from None
    return seconds


def has_word_timestamps(pipe) -> bool:
    """Whether the model was exported with a forced aligner (``tatk export --aligner``), which word
    timestamps need; without one the option is hidden."""
    return bool(getattr(pipe.model.config, "aligner", None))


def transcribe(pipe, path: str | None, words: bool, max_seconds: float) -> tuple[str, str, list[list]]:
    """One request: (transcript, status line in Markdown, rows of [word, start s, end s]). Bad input gives an
    empty transcript and the reason in the status line, never a traceback."""
    try:
        seconds = check_audio(path, max_seconds)
        start = time.perf_counter()
        out = pipe(path, return_timestamps="word") if words else pipe(path)
        took = time.perf_counter() - start
    except (ValueError, RuntimeError) as e:  # check_audio's reasons; a file that breaks off mid-way; out of memory
        return "", f"**Cannot transcribe:** {(str(e).strip().splitlines() or [type(e).__name__])[0]}", []
    chunks = out.get("chunks", []) if words else []  # transformers' format: {"text": word, "timestamp": (start, end)}
    rows = [[c["text"], round(c["timestamp"][0], 2), round(c["timestamp"][1], 2)] for c in chunks]
    return out["text"], f"{seconds:.2f} s of audio, transcribed in {took:.2f} s", rows


def build_app(pipe, title: str = "tatk speech recognizer", max_seconds: float = MAX_SECONDS) -> gr.Blocks:
    """The page: audio in (upload or microphone), a Transcribe button, the transcript, a status line (audio
    duration and time taken, or why the input was refused), and word timestamps when the model has an aligner."""
    words_ok = has_word_timestamps(pipe)
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\nUpload a clip or record one (at most {max_seconds:g} s), then press **Transcribe**.")
        audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
        words = gr.Checkbox(label="Word timestamps", value=False, visible=words_ok, elem_id="words")
        button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
        text = gr.Textbox(label="Transcript", lines=3, interactive=False, elem_id="transcript")
        status = gr.Markdown(elem_id="status")
        table = gr.Dataframe(headers=["word", "start (s)", "end (s)"], visible=words_ok, interactive=False,
                             elem_id="word-table")
        button.click(lambda p, w: transcribe(pipe, p, w, max_seconds), [audio, words], [text, status, table],
                     concurrency_limit=1, api_name="transcribe")
    return app.queue(default_concurrency_limit=1)


def launch(app: gr.Blocks, **kwargs) -> None:
    """Serve ``app`` with system fonts; ``kwargs`` go to ``gr.Blocks.launch`` (server_name, server_port, share)."""
    app.launch(theme=gr.themes.Default(font=FONTS, font_mono=["ui-monospace", "monospace"]), **kwargs)


if __name__ == "__main__":  # a Space (or `python app.py`): binds where GRADIO_SERVER_NAME says, else 127.0.0.1
    from transformers import pipeline

    model = os.environ.get("TATK_MODEL") or MODEL_ID
    if not model:
        raise SystemExit("set TATK_MODEL to a Hub id or an export folder")
    asr = pipeline("automatic-speech-recognition", model=model, trust_remote_code=True)
    launch(build_app(asr, title=f"{model} (tatk)"))
