"""``tatk shard``: 16-kHz audio → a frozen encoder's features, stored as WebDataset tars with a manifest.

In: rows from ``tatk/data``. Out: ``<split>-NNNNNN.tar`` + ``manifest.json`` (+ resume state in ``.state/``).
Read first: ``run.py`` (the command), then ``format.py`` (tars, manifest, reading them back), ``encoders.py``.
"""
