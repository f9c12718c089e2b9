"""``tatk eval`` / ``tatk report``: a checkpoint, export, Hub id or baseline ASR model + held-out data → WER, CER and a report.

In: shards (stored features) or audio, and a model. Out: ``summary.json``, ``utterances.jsonl``, tables,
``report/``. Read first: ``run.py`` (test sets, scoring, files; errors are counted by ``tatk/wer.py``), then
``models.py`` (what is evaluated: tatk checkpoint, tatk export, transformers baseline), ``reading.py`` (rows
and the batched transcription loop), ``tables.py``, ``compare.py``, ``report.py`` for the plot.
"""
