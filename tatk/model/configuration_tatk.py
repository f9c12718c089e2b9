"""Configuration of an exported tatk speech recognizer: which base models, how features become a prompt."""

from __future__ import annotations

from transformers import PretrainedConfig


class TatkAsrConfig(PretrainedConfig):
    """Everything needed to rebuild a tatk model around its trained weights.

    Base models are referenced by ``encoder`` / ``llm`` (Hub id or folder) and pinned by ``*_revision``
    (a Hub commit, or ``sha256:...`` of a local folder's files, recorded for provenance). With ``merged``
    the export holds every weight and ``encoder_config`` / ``llm_config`` describe the networks instead.
    """

    model_type = "tatk_asr"

    def __init__(
        self,
        encoder: str = "",  # encoder Hub id or folder, or "mel:N" (log-mel, no network)
        encoder_revision: str = "",
        encoder_kind: str = "mel",  # glmasr | whisper | hubert | wav2vec2 | ... | mel
        encoder_window: str = "",  # 30s | fit: how clips are padded before the encoder, as in the shards; "": kind's default
        feature_dim: int = 0,  # encoder frame size D
        normalize: str = "utterance",  # none | utterance | global (statistics in the weights)
        llm: str = "",  # causal LM Hub id or folder
        llm_revision: str = "",
        llm_hidden: int = 0,  # LLM embedding size H (projector output)
        projector_kind: str = "mlp",
        projector_stack: int = 4,
        projector_hidden: int = 2048,
        projector_options: dict | None = None,  # the kind's own constructor arguments (mosa, moe, qformer)
        decoder: str = "frozen",  # frozen | lora (adapter pairs in the weights, merged at load) | full
        lora_scale: float = 0.0,  # alpha / r of the LLM's LoRA adapters
        encoder_lora_scale: float = 0.0,  # alpha / r of the encoder's LoRA adapters (model.encoder = "lora")
        prompt_prefix: list[int] | None = None,  # token ids before the audio placeholders
        prompt_suffix: list[int] | None = None,  # token ids after them (rest of the user turn, assistant header)
        audio_token_id: int = 0,
        end_token_id: int = 0,  # token that ends a transcript
        pad_token_id: int = 0,
        max_new_tokens: int = 128,  # decoding limit per chunk
        chunk_seconds: float = 30.0,  # longer audio is cut near this length, at the quietest point
        merged: bool = False,
        encoder_config: dict | None = None,  # merged: the encoder network's config (to_dict())
        llm_config: dict | None = None,  # merged: the LLM's config (to_dict())
        aligner: str = "",  # CTC model for word timestamps (Hub id, or the folder it was copied from); "": none
        aligner_revision: str = "",
        aligner_subfolder: str = "",  # set when the aligner was copied into the export (a local folder's)
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder, self.encoder_revision, self.encoder_kind = encoder, encoder_revision, encoder_kind
        self.encoder_window = encoder_window
        self.feature_dim, self.normalize = feature_dim, normalize
        self.llm, self.llm_revision, self.llm_hidden = llm, llm_revision, llm_hidden
        self.projector_kind, self.projector_stack, self.projector_hidden = projector_kind, projector_stack, projector_hidden
        self.projector_options = dict(projector_options or {})
        self.decoder, self.lora_scale, self.encoder_lora_scale = decoder, lora_scale, encoder_lora_scale
        self.prompt_prefix, self.prompt_suffix = list(prompt_prefix or []), list(prompt_suffix or [])
        self.audio_token_id, self.end_token_id, self.pad_token_id = audio_token_id, end_token_id, pad_token_id
        self.max_new_tokens, self.chunk_seconds = max_new_tokens, chunk_seconds
        self.merged, self.encoder_config, self.llm_config = merged, encoder_config, llm_config
        self.aligner, self.aligner_revision, self.aligner_subfolder = aligner, aligner_revision, aligner_subfolder
