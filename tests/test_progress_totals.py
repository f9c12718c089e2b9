"""Progress totals for `tatk shard` and `tatk eval` in audio mode: the corpus says how many input rows it
has without reading the audio (parquet footers, listing files), checked against reading the rows."""

from __future__ import annotations

import pyarrow.parquet as pq

from tatk.data.corpus import Corpus, CorpusSpec


def test_corpus_counts_rows_without_reading_audio(speech):
    parquet = Corpus(CorpusSpec(dataset=str(speech["parquet"]), subset="small", split="train"))
    want = sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(speech["parquet"].rglob("*.parquet"))
               if "small" in str(f) and "train" in f.name)
    assert parquet.count() == want == sum(1 for _ in parquet.rows()) > 0
    assert parquet.count(limit=5) == 5
    folder = Corpus(CorpusSpec(local=str(speech["folder"]), split="train"))
    assert folder.count() == sum(1 for _ in folder.rows()) == 12
