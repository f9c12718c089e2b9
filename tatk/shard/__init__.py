"""``tatk shard``: 16-kHz audio → a frozen encoder's features, stored as WebDataset tars with a manifest.

In: units of rows from ``tatk/data`` (``listing.py``). Out: ``<split>-u<unit>-<k>.tar`` + ``manifest.json``
(+ claims and done records in ``.state/<split>/``). Read first: ``run.py`` (the command), then ``units.py``
(who does which unit), ``format.py`` (tars, manifest, reading them back), ``verify.py``, ``guard.py``, ``encoders.py``.
"""
