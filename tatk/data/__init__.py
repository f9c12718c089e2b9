"""Corpora → 16-kHz audio: where utterances come from and how their audio is decoded.

In: a Hub dataset (its parquet data files), a local folder with a listing, or LoquaciousSet-style parquet.
Out: units of work (``listing.py``: source files or 1,000-row listing blocks), their ``Row``s (id, audio
bytes or path, text) and mono 16-kHz float32 waves. Read first: ``corpus.py``, then ``listing.py``, ``audio.py``.
"""
