"""The model code that ships inside every exported model (``tatk export``), and that tatk itself imports.

In: encoder features or 16-kHz waves. Out: transcripts (``TatkAsrModel``, ``TatkAsrPipeline``). Read first:
``speech.py`` (how audio is spliced into the LLM prompt), ``projectors.py``, then ``modeling_tatk.py``.

Transformers' remote-code loader copies these files into a Hub repository's module cache, so they may
import only torch, numpy, transformers, safetensors / huggingface_hub and each other (relative imports);
optional audio libraries (soundfile, soxr) are imported inside ``try`` blocks where they are needed.

- ``projectors``          frame stacking + MLP / SwiGLU / conv projectors;
- ``speech``              feature normalisation, the prompt layout, splicing audio into the prompt, greedy decoding;
- ``encoder``             frozen encoder front ends: waveform → model input → features;
- ``configuration_tatk``  the exported model's ``PretrainedConfig``;
- ``modeling_tatk``       the exported model: base encoder + LLM loaded by id, trained weights applied;
- ``align``               word timestamps: CTC forced alignment (Viterbi) of a transcript with a CTC aligner;
- ``pipeline_tatk``       the ``automatic-speech-recognition`` pipeline (audio loading, chunking, batching).
"""
