"""tatk, the Tiny Audio Training Kit.

Data flows corpus → shards → batches → model → checkpoint → export:

- ``corpus``   reads utterances (Hub datasets, local folders, parquet) as 16 kHz mono audio;
- ``encoders`` runs a frozen audio encoder once per utterance;
- ``shards``   stores its features as WebDataset tars with a manifest;
- ``shard``    is the command that ties the three together.
"""

__version__ = "0.1.0"
