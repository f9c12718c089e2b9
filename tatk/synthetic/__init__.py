"""Made-here stand-ins for what cannot be downloaded: espeak-ng speech corpora and tiny random models.

In: a seed and sizes. Out: a LoquaciousSet-shaped corpus, tiny encoders / LLMs saved with ``save_pretrained``.
Used by the main job (``tools/demo.sh``), the tests and the benchmarks; nothing at run time imports it.
"""
