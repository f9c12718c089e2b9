"""tatk, the Tiny Audio Training Kit: train LLM-based speech recognizers from stored encoder features.

Subpackages, in data-flow order (each imports only those before it; ``cli.py`` ties them together):

- ``data``       corpora (Hub datasets, local folders, parquet) → 16-kHz mono audio;
- ``shard``      ``tatk shard``: audio → a frozen encoder's features in WebDataset tars + manifest;
- ``model``      the model code that ships inside every export (encoder front ends, projectors, decoding);
                 it imports nothing else of tatk, so every stage may use it;
- ``train``      ``tatk train``: recipes, batches from shards, the Accelerate loop, checkpoints;
- ``export``     ``tatk export`` / ``tatk push``: a checkpoint → a Hub-ready folder, and the user's pipeline;
- ``evaluate``   ``tatk eval`` / ``tatk report``: WER of checkpoints, exports and Hub models;
- ``synthetic``  espeak-ng corpora and tiny random models for the main job and the tests (beside the flow).

``errors.py`` (one-line user errors), ``files.py`` (atomic writes) and ``wer.py`` (the one WER scorer, for
validation during training and for ``tatk eval``) are shared by all.
"""

__version__ = "0.1.0"
