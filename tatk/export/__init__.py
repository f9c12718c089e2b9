"""Export: a trained checkpoint → a Hub-ready model folder any transformers user loads, and its upload.

In: a checkpoint or run folder (``tatk/train/checkpoint.py``). Out: a folder with ``config.json``, the
model code of ``tatk/model/``, trained weights, tokenizer, feature extractor and model card; a Hub repo.
Read first: ``build.py`` (``tatk export``), then ``load.py`` (the pipeline for anything tatk can name).
Trying a model: ``app.py`` (the web page, which also ships as a Space's app.py), ``demo.py`` (``tatk demo``),
``space.py`` (the Space folder: ``tatk space``, ``tatk push --space``).
"""

from tatk.export.build import export
from tatk.export.load import load_pipeline
from tatk.export.push import check_export, push

__all__ = ["check_export", "export", "load_pipeline", "push"]
