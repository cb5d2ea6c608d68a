"""What every chat-VLM teacher adapter shares, whatever its vision tower.

``ChatTeacher`` holds the model-independent half of the Teacher protocol: the
reward read off the adapter's ``answer_logits`` (log P(answer), summed over the
answer's tokens, in float32), the no-grad helpers and ``score``, greedy generation
from the adapter's ``prompt_inputs``, query synthesis through the one prompt and
parser of ``queries.py``, activation checkpointing of every transformers layer,
and the shared-prefix packing of the questions' rows. An adapter (``qwen.py``,
``internvl.py``) supplies the model, its tokenizer, ``answer_ids``, ``pad_id``,
``video_token_id`` (the placeholder the video features replace), ``answer_logits``
and ``prompt_inputs``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserError
from ..objective import weighted_loss
from ..task import Queries
from .queries import fallback_queries, parse_queries, query_prompt

logger = logging.getLogger("vlm_teacher")

ANSWER_INSTRUCTION = "Answer with Yes or No."


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc.__class__.__name__}: {exc}") from None


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()


def open_model_folder(path: str | os.PathLike, kind: str) -> tuple[Path, dict[str, Any]]:
    """(folder, its config.json) after the checks every teacher makes: the folder and its
    config.json exist, the weights are safetensors (never pickle), a tokenizer is there.
    ``kind`` names the expected checkpoints in the messages."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"teacher folder not found: {folder}. Give a transformers {kind} folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{folder} has no config.json: it is not a transformers model folder "
                        f"(expected a {kind} checkpoint)")
    config = _read_json(config_path)
    if not _has_safetensors(folder):
        raise UserError(f"{folder} has no *.safetensors weights (only safetensors are loaded, never pickle); "
                        f"convert the checkpoint with save_pretrained(safe_serialization=True)")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise UserError(f"{folder} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return folder, config


def read_configs(folder: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The processor configs among ``names`` that the folder has, in that order."""
    return [_read_json(folder / name) for name in names if (folder / name).is_file()]


def load_frozen(model_class: Any, folder: Path, device: str | torch.device, dtype: torch.dtype | str | None,
                attn_implementation: str | None) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) of a checked folder: safetensors only, no remote code, float32 by default."""
    from transformers import AutoTokenizer

    from ..weights import check_weight_folder

    check_weight_folder(folder)  # a damaged file is named as such, not as a loader's traceback
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer of {folder}: {exc}") from None
    if getattr(tokenizer, "chat_template", None) is None:  # some -hf folders keep it beside the processor
        for name in ("chat_template.jinja", "chat_template.json"):
            if (folder / name).is_file():
                text = (folder / name).read_text()
                tokenizer.chat_template = _read_json(folder / name)["chat_template"] if name.endswith("json") else text
                break
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"use_safetensors": True, "dtype": dtype or torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = model_class.from_pretrained(folder, **kwargs)
    model.to(device)
    return model, tokenizer


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token rows, left-padded to one length (the answers line up at the end)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, length - len(row):] = 1
    return ids, mask


def shared_prefix_length(rows: Sequence[Sequence[int]], answer_tokens: int) -> int:
    """Tokens all rows share at their start, leaving each row at least its answer and the
    position that predicts it (``share_prefix``; also used by the FLOP count)."""
    common = 0
    for column in zip(*rows):
        if any(c != column[0] for c in column):
            break
        common += 1
    return max(0, min(common, min(len(r) for r in rows) - answer_tokens - 1))


class ChatTeacher:
    """The model-independent half of a frozen chat-VLM teacher (see the module docstring).

    Subclasses set ``model``, ``tokenizer`` and ``video_token_id`` in ``__init__``, then call
    ``_setup(answer)``, and define ``answer_logits`` and ``prompt_inputs``."""

    def _setup(self, answer: str) -> None:
        """What every adapter's ``__init__`` ends with: the teacher-forced answer's ids, the
        pad id, the performance switches at their defaults, an empty prepared-input cache."""
        self.answer = answer
        self.answer_ids = self._encode(answer)
        if not self.answer_ids:
            raise ValueError(f"the answer {answer!r} encodes to no tokens")
        self.pad_id = self._pad_id()
        self.batch_questions = True
        self.share_prefix = True
        self._grad_ckpt = False
        self._prepared_cache: dict[tuple, dict[str, Any]] = {}

    # ------------------------------------------------------------ performance switches

    def _checkpoint_layers(self) -> list[torch.nn.Module]:
        from transformers.modeling_layers import GradientCheckpointingLayer

        return [m for m in self.model.modules() if isinstance(m, GradientCheckpointingLayer)]

    @property
    def grad_checkpointing(self) -> bool:
        """Activation checkpointing of every language-model layer and vision block."""
        return self._grad_ckpt

    @grad_checkpointing.setter
    def grad_checkpointing(self, on: bool) -> None:
        import functools

        from torch.utils.checkpoint import checkpoint

        func = functools.partial(checkpoint, use_reentrant=False)
        for layer in self._checkpoint_layers():
            layer.gradient_checkpointing = bool(on)
            layer._gradient_checkpointing_func = func
        self._grad_ckpt = bool(on)
        self._arm_checkpointing()

    def _arm_checkpointing(self) -> None:
        """transformers checkpoints a layer only when ``layer.training`` is set; the
        teacher stays in eval mode (no dropout anywhere), so only the layers' own flag
        is raised, and raised again before each use in case someone called ``eval()``."""
        if self._grad_ckpt:
            for layer in self._checkpoint_layers():
                layer.training = True

    # ------------------------------------------------------------ protocol bits

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight of the frozen VLM (for integrity checks: it must never change)."""
        return dict(self.model.state_dict())

    # ------------------------------------------------------------ tokens and prompts

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def _chat(self, content: list[dict[str, Any]]) -> str:
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    # ------------------------------------------------------------ the reward

    def answer_logprob(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """log P(answer | frames, question) for each question, summed over the answer's tokens.

        One vision-tower pass; one batched language-model forward; logits in float32.
        Gradients flow to ``frames`` (the model's weights are frozen).
        """
        logp = torch.log_softmax(self.answer_logits(frames, questions), dim=-1)
        n_q, n_ans = logp.shape[:2]
        target = self._answer_target(logp.device).view(1, n_ans, 1).expand(n_q, -1, -1)
        return logp.gather(-1, target).squeeze(-1).sum(-1)

    def _answer_target(self, device: torch.device) -> torch.Tensor:
        """The answer's token ids on ``device``, copied once (not a host-to-device copy per step)."""
        cached = getattr(self, "_answer_ids_tensor", None)
        if cached is None or cached.device != device:
            cached = self._answer_ids_tensor = torch.tensor(self.answer_ids, device=device)
        return cached

    def _packed(self, prep: dict[str, Any]) -> dict[str, Any] | None:
        """The rows of ``prep`` as ONE sequence: their common prefix once, then each row's
        suffix; a 4-D additive mask lets a suffix see the prefix and itself (causally), and
        the positions are each row's own. None when the video is not inside the common prefix."""
        ids, mask, pos, video_mask = prep["input_ids"], prep["attention_mask"], prep["position_ids"], prep["video_mask"]
        n_q, length = ids.shape
        n_ans = len(self.answer_ids)
        starts = [length - int(n) for n in mask.sum(dim=1).tolist()]  # left padding
        common = shared_prefix_length([ids[i, starts[i]:].tolist() for i in range(n_q)], n_ans)
        if int(video_mask[0, starts[0]:starts[0] + common].sum()) != prep["video_tokens"]:
            return None
        device = ids.device
        pieces, positions, segments = [ids[0, starts[0]:starts[0] + common]], [pos[..., 0, starts[0]:starts[0] + common]], [0]
        answer_index, end = [], common
        seg_sizes = [common]
        for i in range(n_q):
            pieces.append(ids[i, starts[i] + common:])
            positions.append(pos[..., i, starts[i] + common:])
            seg_sizes.append(length - starts[i] - common)
            end += seg_sizes[-1]
            answer_index.append(list(range(end - n_ans - 1, end - 1)))
        packed_ids = torch.cat(pieces)[None]
        total = packed_ids.shape[1]
        segment = torch.repeat_interleave(torch.arange(n_q + 1), torch.tensor(seg_sizes)).to(device)
        causal = torch.ones(total, total, dtype=torch.bool, device=device).tril()
        visible = causal & ((segment[None, :] == 0) | (segment[None, :] == segment[:, None]))
        additive = torch.zeros(total, total, dtype=self.dtype, device=device)
        additive.masked_fill_(~visible, torch.finfo(self.dtype).min)
        packed_video = packed_ids == self.video_token_id
        return {"input_ids": packed_ids, "attention_mask": additive[None, None],
                "position_ids": torch.cat(positions, dim=-1).unsqueeze(-2), "video_mask": packed_video,
                "video_index": tuple(packed_video.nonzero(as_tuple=True)), "video_tokens": prep["video_tokens"],
                "video_copies": 1, "answer_index": torch.tensor(answer_index, device=device)}

    def _remember(self, key: tuple, prep: dict[str, Any]) -> dict[str, Any]:
        """Keep ``prep`` in ``_prepared_cache`` (a few (questions, size) pairs per instance: bounded)."""
        if len(self._prepared_cache) >= 16:
            self._prepared_cache.clear()
        self._prepared_cache[key] = prep
        return prep

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """The LM head in float32 on the answer positions only (bf16 model, fp32 logits)."""
        weight = self.model.lm_head.weight
        return torch.nn.functional.linear(h.float(), weight.float(),
                                          None if self.model.lm_head.bias is None else self.model.lm_head.bias.float())

    def yes_logprob(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """log P("Yes") per question, shape (len(questions),), differentiable in ``frames``."""
        return self.answer_logprob(frames, questions)

    @torch.no_grad()
    def yes_prob_no_grad(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """P("Yes") per question without building a graph (for scoring and reports)."""
        return self.answer_logprob(frames.detach(), questions).exp()

    def score(self, frames: torch.Tensor | np.ndarray, queries: Queries, lam: float = 0.5) -> dict[str, Any]:
        """Teacher's judgement of a video (no grad): P("Yes") per query, the
        lambda-weighted mean (goal weight ``lam``, process queries share ``1 - lam``) and
        the lambda-weighted -log P(Yes) that TTO minimises (``loss``; best-of-N ranks by it).
        ``frames``: the K frames the teacher should see, (K, 3, H, W) float in [0, 1] or
        uint8 (K, H, W, 3); subsample a long video first (all given frames are encoded)."""
        if isinstance(frames, np.ndarray):
            from ..video import to_float

            frames = to_float(frames)
        with torch.no_grad():
            logp = self.answer_logprob(frames.detach(), queries.all).float()
        p = logp.exp().cpu().tolist()
        goal, process = p[0], p[1:]
        return {"questions": queries.all, "p_yes": p, "goal": goal, "process": process,
                "score": lam * goal + (1.0 - lam) * sum(process) / len(process),
                "loss": float(weighted_loss(logp, lam))}

    # ------------------------------------------------------------ generation

    def generate_text(self, prompt: str, images: Sequence[np.ndarray] = (), max_new_tokens: int = 128) -> str:
        """Greedy generation; ``images`` (uint8 H x W x 3) come before the text, each
        through the same pixel path as the frames."""
        ids = self.generate_ids(prompt, images, max_new_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    @torch.no_grad()
    def generate_ids(self, prompt: str, images: Sequence[np.ndarray] = (), max_new_tokens: int = 128) -> list[int]:
        """The new token ids of a greedy generation (see ``generate_text``)."""
        inputs = self.prompt_inputs(prompt, images)
        ids = inputs["input_ids"]
        kwargs: dict[str, Any] = {
            **inputs,
            "max_new_tokens": int(max_new_tokens),
            "do_sample": False,
            "pad_token_id": self.pad_id,
        }
        eos = [i for i in {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
               if isinstance(i, int) and i >= 0]
        if eos:
            kwargs["eos_token_id"] = eos
        out = self.model.generate(**kwargs, temperature=None, top_p=None, top_k=None)
        return out[0, ids.shape[1]:].tolist()

    def propose_queries(self, prompt: str, first_frame: np.ndarray | None, *,
                        max_new_tokens: int = 256) -> Queries:
        """One goal and 1-3 process questions written by the teacher; the fallback
        (logged as a warning) when its answer does not parse."""
        images = [first_frame] if first_frame is not None else []
        text = self.generate_text(query_prompt(prompt), images, max_new_tokens=max_new_tokens)
        queries = parse_queries(text)
        if queries is None:
            snippet = " ".join(text.split())[:200]
            logger.warning("teacher output did not parse as queries; using fallback questions. Output was: %r",
                           snippet)
            return fallback_queries(prompt)
        return queries
