"""The Teacher adapter over transformers' InternVL (``InternVLForConditionalGeneration``, InternVL3).

The same reward as the Qwen adapter (``common.ChatTeacher``): log P("Yes" | video,
question), teacher-forced, differentiable in the frames; the vision tower runs ONCE
on the K frames and its features fill every question's placeholders; the questions
share the video prefix (one packed sequence) or run as one left-padded batch.

Prompts follow ``InternVLProcessor``: the chat template renders a video item as
``<video>`` and an image item as ``<IMG_CONTEXT>``; the processor expands a video of
K frames to ``Frame1: <img><IMG_CONTEXT>*n</img>\\nFrame2: ...`` (one 448 px tile per
frame, n = ``image_seq_length`` = 256 for InternVL3) and an image cut into N tiles to
``<img><IMG_CONTEXT>*(n*N)</img>``. The language model (Qwen2.5) uses 1-D positions:
each row counts from its first real token, as an unpadded forward does. Pixels:
``tiles.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserError
from . import tiles
from .common import ANSWER_INSTRUCTION, ChatTeacher, left_padded, load_frozen, open_model_folder, read_configs

ARCH = "internvl"
#: the tokenizer's named multimodal tokens (``tokenizer_config.json``) and their InternVL3 values
TOKEN_NAMES = {"start_image_token": "<img>", "end_image_token": "</img>",
               "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


class InternVLTeacher(ChatTeacher):
    """A frozen InternVL that writes yes/no questions and answers them differentiably.

    Build it with ``from_pretrained(folder)``. The performance switches are the Qwen
    adapter's (``grad_checkpointing``, ``batch_questions``, ``share_prefix``).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, spec: tiles.TileSpec, *, answer: str = "Yes",
                 path: str | os.PathLike | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        self.arch = ARCH
        self.path = Path(path) if path is not None else None
        cfg = model.config
        self.tokens = {name: str(getattr(tokenizer, name, None) or default) for name, default in TOKEN_NAMES.items()}
        # frames and images both fill <IMG_CONTEXT>: the video placeholder of the shared machinery
        self.image_token_id = self.video_token_id = int(cfg.image_token_id)
        self._check_tokenizer()
        vision = cfg.vision_config
        side = int(vision.image_size[0]) // int(vision.patch_size[0])
        per_tile = int(side * cfg.downsample_ratio) ** 2
        if spec.tokens_per_tile != per_tile or int(cfg.image_seq_length) != per_tile:
            raise UserError(f"image_seq_length {spec.tokens_per_tile} (processor) / {cfg.image_seq_length} (model) "
                            f"disagrees with the vision tower's {per_tile} tokens per tile "
                            f"({vision.image_size[0]} px / patch {vision.patch_size[0]}, downsample "
                            f"{cfg.downsample_ratio}); fix processor_config.json")
        if spec.tile != int(vision.image_size[0]):
            raise UserError(f"processor tile size {spec.tile} disagrees with the vision tower's image_size "
                            f"{vision.image_size[0]}; fix preprocessor_config.json")
        self._setup(answer)

    # ------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, *,
                        attn_implementation: str | None = None) -> "InternVLTeacher":
        """Load a transformers InternVL folder (the ``-hf`` checkpoints: model_type ``internvl``;
        safetensors only, no remote code)."""
        folder, config = open_model_folder(path, "InternVL (-hf)")
        if config.get("model_type") != ARCH:
            raise UserError(f"{folder}: model_type {config.get('model_type')!r} is not InternVL; the remote-code "
                            f"InternVL checkpoints (internvl_chat) are not loaded, use the -hf conversion")
        proc_cfgs = read_configs(folder, ("preprocessor_config.json", "video_preprocessor_config.json",
                                          "processor_config.json"))
        try:
            spec = tiles.spec_from_configs(config, proc_cfgs)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{folder}: bad vision preprocessing settings: {exc}") from None

        from transformers import InternVLForConditionalGeneration

        model, tokenizer = load_frozen(InternVLForConditionalGeneration, folder, device, dtype, attn_implementation)
        return cls(model, tokenizer, spec, path=folder)

    # ------------------------------------------------------------ tokens and prompts

    def _check_tokenizer(self) -> None:
        found = self.tokenizer.convert_tokens_to_ids(self.tokens["context_image_token"])
        if found != self.image_token_id:
            raise UserError(f"tokenizer id of {self.tokens['context_image_token']} is {found} but the model config's "
                            f"image_token_id is {self.image_token_id}: the tokenizer does not belong to this model")

    def _tile_block(self, num_tiles: int) -> str:
        t = self.tokens
        return t["start_image_token"] + t["context_image_token"] * (self.spec.tokens_per_tile * num_tiles) \
            + t["end_image_token"]

    def question_text(self, question: str, num_frames: int) -> str:
        """The full prompt for one question, the video expanded, ending where the answer starts."""
        text = self._chat([{"type": "video"}, {"type": "text", "text": f"{question.strip()}\n{ANSWER_INSTRUCTION}"}])
        video = self.tokens["video_token"]
        if text.count(video) != 1:
            raise UserError(f"the tokenizer's chat template does not render a video item as {video}; "
                            f"use an InternVL (-hf) tokenizer")
        frames = "\n".join(f"Frame{i + 1}: {self._tile_block(1)}" for i in range(num_frames))
        return text.replace(video, frames, 1)

    def build_inputs(self, questions: Sequence[str], num_frames: int) -> dict[str, torch.Tensor]:
        """Token ids of every question followed by the answer tokens, left-padded, with the
        attention mask and 1-D positions (Q, L); the answer is the last ``len(answer_ids)``."""
        ids, mask = left_padded([self._encode(self.question_text(q, num_frames)) + self.answer_ids
                                 for q in questions], self.pad_id)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        dev = self.device
        return {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "position_ids": positions.to(dev)}

    # ------------------------------------------------------------ the reward

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """(K, 3, H, W) in [0, 1] -> (K, 3, tile, tile) normalised, one tile per frame, differentiable."""
        return tiles.frames_to_tiles(frames.to(self.device), self.spec)

    def _video_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision tower + pixel shuffle + projector once: (K * tokens_per_tile, D)."""
        out = self.model.model.get_image_features(pixel_values=pixel_values.to(self.dtype), return_dict=True)
        return out.pooler_output.reshape(-1, out.pooler_output.shape[-1])

    def answer_logits(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """Float32 logits (Q, len(answer_ids), vocab) at the answer positions, teacher-forced
        (the Qwen adapter's contract). Gradients flow to ``frames``."""
        questions = list(questions)
        if not questions:
            raise ValueError("no questions given")
        self._arm_checkpointing()
        n_ans = len(self.answer_ids)
        pixel_values = self.pixel_values(frames)
        if not self.batch_questions:  # the model's own forward per question, the vision tower each time
            hidden = [self.model.model(**self.build_inputs([q], int(frames.shape[0])), pixel_values=pixel_values,
                                       use_cache=False).last_hidden_state[:, -n_ans - 1:-1] for q in questions]
            return self._head(torch.cat(hidden))
        prep = self._prepared(questions, frames.shape)
        embeds = self._video_features(pixel_values)
        inner = self.model.model
        text_embeds = inner.get_input_embeddings()(prep["input_ids"])
        if embeds.shape[0] != prep["video_tokens"]:
            raise RuntimeError(f"video placeholders ({prep['video_tokens']} per question) do not match "
                               f"{embeds.shape[0]} video features")
        inputs_embeds = text_embeds.index_put(prep["video_index"],
                                              embeds.to(text_embeds.dtype).repeat(prep["video_copies"], 1))
        hidden = inner.language_model(inputs_embeds=inputs_embeds, attention_mask=prep["attention_mask"],
                                      position_ids=prep["position_ids"], use_cache=False).last_hidden_state
        if "answer_index" in prep:  # shared prefix: one sequence, each question's answer positions
            return self._head(hidden[0, prep["answer_index"]])
        return self._head(hidden[:, -n_ans - 1:-1, :])

    def _prepared(self, questions: list[str], frames_shape: Sequence[int]) -> dict[str, Any]:
        """Token ids, mask, positions and placeholder indices for these questions and this
        number of frames, built once and kept on the device."""
        key = (tuple(questions), int(frames_shape[0]), self.spec, str(self.device), self.share_prefix)
        prep = self._prepared_cache.get(key)
        if prep is not None:
            return prep
        batch = self.build_inputs(questions, int(frames_shape[0]))
        ids = batch["input_ids"]
        video_mask = ids == self.video_token_id
        per_row = video_mask.sum(dim=1)
        if int(per_row.min()) != int(per_row.max()):
            raise RuntimeError("questions got different numbers of video placeholders")
        prep = {**batch, "video_mask": video_mask, "video_index": tuple(video_mask.nonzero(as_tuple=True)),
                "video_tokens": int(per_row[0]), "video_copies": len(questions)}
        if self.share_prefix and len(questions) > 1:
            prep = self._packed(prep) or prep
        return self._remember(key, prep)

    # ------------------------------------------------------------ generation

    def prompt_inputs(self, prompt: str, images: Sequence[np.ndarray] = ()) -> dict[str, torch.Tensor]:
        """The model inputs of a chat prompt with ``images`` (each cut into tiles) before the
        text, ending where the assistant's answer starts: input_ids, attention_mask and,
        with images, pixel_values (all tiles, image by image)."""
        values = [tiles.image_to_tiles(np.asarray(image), self.spec, device=self.device) for image in images]
        text = self._chat([{"type": "image"} for _ in values] + [{"type": "text", "text": prompt}])
        context = self.tokens["context_image_token"]
        parts = text.split(context)
        if len(parts) - 1 != len(values):
            raise UserError(f"the tokenizer's chat template does not render image items as {context}")
        text = parts[0] + "".join(self._tile_block(v.shape[0]) + rest for v, rest in zip(values, parts[1:]))
        ids = torch.tensor([self._encode(text)], dtype=torch.long, device=self.device)
        inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if values:
            inputs["pixel_values"] = torch.cat(values).to(self.dtype)
        return inputs
