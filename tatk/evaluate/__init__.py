"""``tatk eval`` / ``tatk report``: a checkpoint, export or Hub id + held-out data → WER and a report.

In: shards (stored features) or audio, and a model. Out: ``summary.json``, ``utterances.jsonl``, tables,
``report/``. Read first: ``run.py`` (errors are counted by ``tatk/wer.py``), ``compare.py``, ``report.py`` for the plot.
"""
