"""Corpora → 16-kHz audio: where utterances come from and how their audio is decoded.

In: a Hub dataset (streamed), a local folder with a listing, or LoquaciousSet-style parquet. Out: ``Row``s
(id, audio bytes or path, text) and mono 16-kHz float32 waves. Read first: ``corpus.py``, then ``audio.py``.
"""
