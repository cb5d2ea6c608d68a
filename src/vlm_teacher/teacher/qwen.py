"""The Teacher adapter over transformers' Qwen2.5-VL and Qwen3-VL (and Qwen3-VL-MoE, on the Qwen3-VL path).

``yes_logprob`` is the paper's reward: log P("Yes" | video, question), summed over
the answer's tokens (teacher-forced), differentiable in the frames. The frames go
through the differentiable pixel path (``pixels.py``) and the vision tower ONCE;
its features are shared by every question, and all questions run as one batched
language-model forward (left padding), instead of one full VLM call per question.

To do that the adapter assembles what the model's own ``forward`` would build from
``pixel_values_videos``: the placeholder embeddings replaced by the video features,
3-D rotary positions from the model's ``get_rope_index`` (with ``mm_token_type_ids``;
without them Qwen2.5-VL silently falls back to 1-D positions), and for Qwen3-VL the
deepstack features added to the first decoder layers. A test proves this equals the
naive per-question forward with ``pixel_values_videos``.

Prompts follow the processors: the chat template renders a video item as
``<|vision_start|><|video_pad|><|vision_end|>``; Qwen2.5-VL expands the pad to
grid_t*grid_h*grid_w/merge^2 tokens (temporal positions spaced by
``tokens_per_second * temporal_patch / fps``); Qwen3-VL writes one
``<t seconds><|vision_start|>pads<|vision_end|>`` block per temporal patch.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserError
from . import pixels
from .common import ANSWER_INSTRUCTION, ChatTeacher, left_padded, load_frozen, open_model_folder, read_configs
from .common import shared_prefix_length  # noqa: F401 - imported from here by flops.py and tests

SUPPORTED_ARCHS = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")  # the MoE shares Qwen3-VL's vision and prompts
VIDEO_ITEM = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE_ITEM = "<|vision_start|><|image_pad|><|vision_end|>"
#: frames per second assumed for the K frames shown (Qwen's default video sampling rate);
#: it sets Qwen2.5-VL's temporal rope spacing and Qwen3-VL's timestamps.
DEFAULT_FPS = 2.0


def _model_class(arch: str):
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration
    if arch == "qwen3_vl_moe":
        from transformers import Qwen3VLMoeForConditionalGeneration

        return Qwen3VLMoeForConditionalGeneration
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration


class QwenVLTeacher(ChatTeacher):
    """A frozen Qwen-VL that writes yes/no questions and answers them differentiably.

    Build it with ``from_pretrained(folder)``. ``fps`` is the frame rate assumed for
    the K frames shown (it only affects temporal positions / timestamps).

    Performance switches (measured in benchmarks/README.md):

    - ``grad_checkpointing`` (off): recompute each language-model layer and each
      vision block in backward instead of keeping their activations;
    - ``batch_questions`` (on): one vision-tower pass shared by all questions and one
      batched language-model forward; off runs the model's own forward once per
      question (the vision tower again each time), the naive reference;
    - ``share_prefix`` (on): the questions share everything before their text (the
      chat header and the video, nearly all the tokens), so the language model runs
      ONE sequence: the shared prefix once, then every question's suffix, each suffix
      attending to the prefix and to itself only (a block mask; positions continue
      the prefix's as in the separate rows). The same log-probabilities as one row per
      question, for about 1/Q of the language model's cost; off: one padded row per
      question.

    The token ids, rotary positions and placeholder indices of a (questions, frame
    size) pair are built once and kept on the device (``_prepared``): later steps do
    no tokenisation, no rope-index computation and no host-to-device copies.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, spec: pixels.PixelSpec, arch: str, *,
                 fps: float = DEFAULT_FPS, answer: str = "Yes", path: str | os.PathLike | None = None) -> None:
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"arch must be one of {SUPPORTED_ARCHS}, got {arch!r}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        self.arch = arch
        self.fps = float(fps)
        self.path = Path(path) if path is not None else None
        cfg = model.config
        self.video_token_id = int(cfg.video_token_id)
        self.image_token_id = int(cfg.image_token_id)
        self._check_tokenizer()
        rope_params = inspect.signature(model.model.get_rope_index).parameters
        self._rope_takes_mm_types = "mm_token_type_ids" in rope_params
        self._setup(answer)

    # ------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, *, min_pixels: int | None = None,
                        max_pixels: int | None = None, fps: float = DEFAULT_FPS,
                        attn_implementation: str | None = None) -> "QwenVLTeacher":
        """Load a transformers Qwen2.5-VL / Qwen3-VL folder (safetensors only, no remote code).

        ``min_pixels`` / ``max_pixels`` override the per-frame pixel budget of the
        folder's preprocessor config (lower ``max_pixels`` to save memory on big frames).
        """
        folder, config = open_model_folder(path, "Qwen2.5-VL, Qwen3-VL or Qwen3-VL-MoE")
        arch = config.get("model_type")
        if arch not in SUPPORTED_ARCHS:
            raise UserError(f"{folder}: model_type {arch!r} is not supported as a teacher; "
                            f"supported: {', '.join(SUPPORTED_ARCHS)} (Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE) and internvl (InternVL -hf)")
        proc_cfgs = read_configs(folder, ("preprocessor_config.json", "video_preprocessor_config.json"))
        try:
            spec = pixels.spec_from_configs(arch, config, proc_cfgs).with_pixels(min_pixels, max_pixels)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{folder}: bad vision preprocessing settings: {exc}") from None
        vision = config.get("vision_config") or {}
        for key, model_key in (("patch_size", "patch_size"), ("temporal_patch_size", "temporal_patch_size"),
                               ("merge_size", "spatial_merge_size")):
            if model_key in vision and int(vision[model_key]) != getattr(spec, key):
                raise UserError(f"{folder}: preprocessor {key}={getattr(spec, key)} disagrees with the model's "
                                f"vision_config {model_key}={vision[model_key]}; fix preprocessor_config.json")

        model, tokenizer = load_frozen(_model_class(arch), folder, device, dtype, attn_implementation)
        return cls(model, tokenizer, spec, arch, fps=fps, path=folder)

    # ------------------------------------------------------------ protocol bits

    # ------------------------------------------------------------ tokens and prompts

    def _check_tokenizer(self) -> None:
        for token, token_id in (("<|video_pad|>", self.video_token_id), ("<|image_pad|>", self.image_token_id)):
            found = self.tokenizer.convert_tokens_to_ids(token)
            if found != token_id:
                raise UserError(f"tokenizer id of {token} is {found} but the model config says {token_id}: "
                                f"the tokenizer does not belong to this model")

    def _video_placeholder(self, grid_thw: torch.Tensor, num_frames: int) -> str:
        t, h, w = (int(v) for v in grid_thw.reshape(3))
        per_t = h * w // self.spec.merge_size ** 2
        if self.arch == "qwen2_5_vl":
            return "<|vision_start|>" + "<|video_pad|>" * (t * per_t) + "<|vision_end|>"
        # Qwen3-VL: one timestamped block per temporal patch (mean time of its frames, as the processor)
        tp = self.spec.temporal_patch_size
        idx = list(range(num_frames)) + [num_frames - 1] * (-num_frames % tp)
        stamps = [(idx[i] + idx[i + tp - 1]) / 2 / self.fps for i in range(0, len(idx), tp)]
        return "".join(f"<{s:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_t + "<|vision_end|>"
                       for s in stamps[:t])

    def question_text(self, question: str, grid_thw: torch.Tensor, num_frames: int) -> str:
        """The full prompt for one question, placeholders expanded, ending where the answer starts."""
        text = self._chat([{"type": "video"}, {"type": "text", "text": f"{question.strip()}\n{ANSWER_INSTRUCTION}"}])
        if text.count(VIDEO_ITEM) != 1:
            raise UserError("the tokenizer's chat template does not render a video item as "
                            f"{VIDEO_ITEM}; use a Qwen-VL tokenizer")
        return text.replace(VIDEO_ITEM, self._video_placeholder(grid_thw, num_frames), 1)

    def build_inputs(self, questions: Sequence[str], grid_thw: torch.Tensor, num_frames: int) -> dict[str, torch.Tensor]:
        """Token ids of every question followed by the answer tokens, left-padded.

        Returns input_ids / attention_mask / mm_token_type_ids of shape (Q, L); the last
        ``len(answer_ids)`` positions of each row hold the teacher-forced answer.
        """
        rows = [self._encode(self.question_text(q, grid_thw, num_frames)) + self.answer_ids for q in questions]
        ids, mask = left_padded(rows, self.pad_id)
        mm = torch.where(ids == self.video_token_id, 2, torch.where(ids == self.image_token_id, 1, 0)) * mask
        dev = self.device
        return {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "mm_token_type_ids": mm.to(dev)}

    def second_per_grid(self) -> float:
        """Seconds covered by one temporal patch (Qwen2.5-VL's ``second_per_grid_ts``)."""
        return self.spec.temporal_patch_size / self.fps

    # ------------------------------------------------------------ the reward

    def pixel_values(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, 3, H, W) in [0, 1] -> (pixel_values_videos, video_grid_thw), differentiable."""
        frames = frames.to(self.device)
        return pixels.frames_to_pixel_values(frames, self.spec)

    def _video_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Run the vision tower once: merged features (N, D) and Qwen3-VL's deepstack features."""
        out = self.model.model.get_video_features(pixel_values.to(self.dtype), grid_thw)
        if isinstance(out, tuple) and not hasattr(out, "pooler_output"):  # older transformers: plain tuples
            embeds, deepstack = (out[0], out[1]) if len(out) > 1 else (out[0], None)
        else:
            embeds, deepstack = out.pooler_output, getattr(out, "deepstack_features", None)
        if isinstance(embeds, (tuple, list)):
            embeds = torch.cat(list(embeds), dim=0)
        if deepstack is not None:
            deepstack = [torch.cat(list(d), dim=0) if isinstance(d, (tuple, list)) else d for d in deepstack]
        return embeds, (deepstack or None)

    def answer_logits(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """Float32 logits (Q, len(answer_ids), vocab) at the answer positions, teacher-forced.

        Row q, position j is the distribution of the answer's token j given the video,
        question q and the answer's tokens before j. ``answer_logprob`` reads the answer's
        own tokens from it; the teacher recipe trains on it (cross-entropy on Yes/No), so
        training and use share one input construction.
        """
        questions = list(questions)
        if not questions:
            raise ValueError("no questions given")
        self._arm_checkpointing()
        if not self.batch_questions:
            return self._head(torch.cat([self._answer_hidden_naive(frames, q) for q in questions]))
        pixel_values, grid = self.pixel_values(frames)
        prep = self._prepared(questions, frames.shape, grid)
        ids = prep["input_ids"]
        copies = prep["video_copies"]  # rows holding the video: Q (one row per question) or 1 (shared)

        embeds, deepstack = self._video_features(pixel_values, grid)
        inner = self.model.model
        text_embeds = inner.get_input_embeddings()(ids)
        if embeds.shape[0] != prep["video_tokens"]:
            raise RuntimeError(f"video placeholders ({prep['video_tokens']} per question) do not match "
                               f"{embeds.shape[0]} video features")
        # the placeholders filled with the shared features (precomputed indices: no boolean-mask
        # indexing, which would synchronise with the device)
        inputs_embeds = text_embeds.index_put(prep["video_index"], embeds.to(text_embeds.dtype).repeat(copies, 1))

        lm_kwargs: dict[str, Any] = {"inputs_embeds": inputs_embeds, "attention_mask": prep["attention_mask"],
                                     "position_ids": prep["position_ids"], "use_cache": False}
        if deepstack is not None:
            lm_kwargs["visual_pos_masks"] = prep["video_mask"]
            lm_kwargs["deepstack_visual_embeds"] = [d.to(text_embeds.dtype).repeat(copies, 1) for d in deepstack]
        hidden = inner.language_model(**lm_kwargs).last_hidden_state

        if "answer_index" in prep:  # shared prefix: one sequence, each question's answer positions
            return self._head(hidden[0, prep["answer_index"]])
        n_ans = len(self.answer_ids)
        # left padding: the answer occupies the last n_ans positions; position j predicts token j + 1
        return self._head(hidden[:, -n_ans - 1:-1, :])

    def _prepared(self, questions: list[str], frames_shape: Sequence[int], grid: torch.Tensor) -> dict[str, Any]:
        """Token ids, mask, rotary positions and placeholder indices for these questions
        and this frame size, built on the first call and reused (kept on the device)."""
        key = (tuple(questions), tuple(int(s) for s in frames_shape), self.spec, str(self.device), self.fps,
               self.share_prefix)
        prep = self._prepared_cache.get(key)
        if prep is not None:
            return prep
        num_frames = int(frames_shape[0])
        batch = self.build_inputs(questions, grid, num_frames)
        ids, mask, mm = batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"]
        n_q = len(questions)
        video_mask = ids == self.video_token_id
        per_row = video_mask.sum(dim=1)
        if int(per_row.min()) != int(per_row.max()):
            raise RuntimeError("questions got different numbers of video placeholders")
        grids = grid.repeat(n_q, 1)
        rope_kwargs: dict[str, Any] = {"input_ids": ids, "mm_token_type_ids": mm, "video_grid_thw": grids,
                                       "attention_mask": mask}
        if self.arch == "qwen2_5_vl":
            rope_kwargs["second_per_grid_ts"] = torch.full((n_q,), self.second_per_grid(), device=ids.device)
        if not self._rope_takes_mm_types:  # transformers before mm_token_type_ids finds the pads itself
            rope_kwargs.pop("mm_token_type_ids")
        with torch.no_grad():
            position_ids, _ = self.model.model.get_rope_index(**rope_kwargs)
        prep = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids, "video_mask": video_mask,
                "video_index": tuple(video_mask.nonzero(as_tuple=True)), "video_tokens": int(per_row[0]),
                "video_copies": n_q}
        if self.share_prefix and n_q > 1:
            prep = self._packed(prep) or prep
        return self._remember(key, prep)

    def _answer_hidden_naive(self, frames: torch.Tensor, question: str) -> torch.Tensor:
        """``batch_questions = False``: the model's own forward for ONE question with
        ``pixel_values_videos`` (vision tower inside); hidden states at the answer positions."""
        pixel_values, grid = self.pixel_values(frames)
        batch = self.build_inputs([question], grid, int(frames.shape[0]))
        kwargs: dict[str, Any] = dict(batch, pixel_values_videos=pixel_values.to(self.dtype), video_grid_thw=grid,
                                      use_cache=False)
        if self.arch == "qwen2_5_vl":
            kwargs["second_per_grid_ts"] = torch.full((1,), self.second_per_grid(), device=self.device)
        hidden = self.model.model(**kwargs).last_hidden_state
        n_ans = len(self.answer_ids)
        return hidden[:, -n_ans - 1:-1, :]

    # ------------------------------------------------------------ generation

    def prompt_inputs(self, prompt: str, images: Sequence[np.ndarray] = ()) -> dict[str, torch.Tensor]:
        """The model inputs of a chat prompt with ``images`` before the text, ending where
        the assistant's answer starts: input_ids, attention_mask, mm_token_type_ids and,
        with images, pixel_values / image_grid_thw (each image through the pixel path).
        Generation uses it, and so does the teacher recipe's query-writing loss."""
        values, grids = [], []
        for image in images:
            pv, grid = pixels.image_to_pixel_values(np.asarray(image), self.spec, device=self.device)
            values.append(pv)
            grids.append(grid)
        content = [{"type": "image"} for _ in values] + [{"type": "text", "text": prompt}]
        text = self._chat(content)
        if text.count(IMAGE_ITEM) != len(values):
            raise UserError(f"the tokenizer's chat template does not render image items as {IMAGE_ITEM}")
        parts = text.split(IMAGE_ITEM)  # expand each image placeholder, in order
        text = parts[0] + "".join(
            "<|vision_start|>" + "<|image_pad|>" * pixels.num_merged_tokens(grid, self.spec) + "<|vision_end|>" + rest
            for grid, rest in zip(grids, parts[1:]))
        ids = torch.tensor([self._encode(text)], dtype=torch.long, device=self.device)
        inputs: dict[str, torch.Tensor] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == self.image_token_id).long(),
        }
        if values:
            inputs["pixel_values"] = torch.cat(values).to(self.dtype)
            inputs["image_grid_thw"] = torch.cat(grids)
        return inputs

