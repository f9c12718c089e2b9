"""``tatk train``: feature shards + a recipe → a trained projector (and LLM adapters or decoder) in checkpoints.

In: shard folders from ``tatk/shard`` and a TOML recipe. Out: ``runs/<name>/checkpoints/step-N/`` and
``metrics.jsonl``. Read first: ``recipe.py`` (what a run is), ``loop.py`` (the loop), then ``stream.py``.
"""
