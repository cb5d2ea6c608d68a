"""`vlm-teacher train teacher`: train the embedded teacher (a small Qwen3-VL) on the grid suite.

    vlm-teacher train teacher --out DIR [--reasoner DIR] [--minutes 35] [--seed 0] [--resume]

What it learns (``teacher_data.py`` makes the examples):

(a) to answer the grid questions (``suites/grid/questions.py``: one goal
    question, 2-3 process questions per family) about videos: ground truth,
    corrupted, degraded, and, when a reasoner is given, the reasoner's own final
    videos and first-step previews. The true answers come only from the pixel
    verifier. Loss: cross-entropy on the answer token (Yes / No), weighted so each
    question type's Yes and No count equally.
(b) to write those questions: given ``query_prompt(instruction)`` and the first
    frame, the JSON ``{"goal": ..., "process": [...]}``. Loss: cross-entropy on
    the JSON tokens and the end-of-turn token.

Both losses are computed through ``QwenVLTeacher`` itself (``answer_logits`` and
``prompt_inputs``: the same prompts, pixel path and chat template as at test
time), so training and use cannot drift apart.

The run is seeded (the example stream is a function of (seed, step)), shows
progress bars, appends every step's losses to ``train_log.jsonl``, checkpoints
to ``--work`` every ``--ckpt-every`` steps (weights and optimizer moments as
safetensors) and continues from there with ``--resume``. At the end it
evaluates the saved folder (loaded with ``load_teacher``), writes ``eval.json``
and a ``MODEL_CARD.md`` whose every figure is read from ``eval.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..files import atomic_folder, write_json
from .scaffold import JsonlLog, WorkLock, command_record, pick, save_safetensors, warmup_cosine
from .teacher_eval import EvalSettings

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "preprocessor_config.json")
LOG_NAME = "train_log.jsonl"
EVAL_NAME = "eval.json"


def init_lineage(init_from: Path | None) -> list[dict[str, Any]]:
    """The runs that made an ``--init-from`` folder, newest first, from its eval.json:
    a continued teacher's card lists every command needed to remake it."""
    if init_from is None:
        return []
    try:
        tr = json.loads((Path(init_from) / EVAL_NAME).read_text(encoding="utf-8"))["training"]
    except (OSError, ValueError, KeyError):
        return [{"command": None, "note": f"{init_from} has no {EVAL_NAME} training record"}]
    run = {"command": tr.get("command"), "steps": tr.get("steps"), "train_seconds": tr.get("train_seconds"),
           "reasoner": tr.get("reasoner")}
    return [run, *tr.get("lineage", [])]


# ---------------------------------------------------------------- arguments

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..embedded import REASONER_DIR

    p.add_argument("--out", required=True, type=Path, help="the teacher folder to write (transformers Qwen3-VL)")
    p.add_argument("--reasoner", type=Path, default=None,
                   help=f"a Wan reasoner folder whose videos and previews to train on (default: the embedded one, "
                        f"{REASONER_DIR}, when present)")
    p.add_argument("--no-reasoner", action="store_true", help="train on rendered videos only")
    p.add_argument("--work", type=Path, default=None,
                   help="checkpoints and cached reasoner videos (default: OUT.work beside OUT)")
    p.add_argument("--minutes", type=float, default=35.0, help="wall-clock budget of the whole run (default 35)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default: as many as the time budget allows; the run is "
                        "bit-for-bit repeatable only with --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
    p.add_argument("--stop-at", type=int, default=None,
                   help="checkpoint and stop after this step, as an interrupted run would (continue with --resume)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this teacher folder (e.g. the shipped one, to retrain on a new reasoner's "
                        "videos) instead of a random model; the size options are then ignored")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on the shared 2-core machine one thread ran a step of this "
                        "small model 4x faster than two, which wait on each other when another job holds a core)")
    g = p.add_argument_group("data")
    g.add_argument("--train-tasks", type=int, default=400, help="train-split tasks per family (default 400)")
    g.add_argument("--batch", type=int, default=4, help="videos per step (default 4)")
    g.add_argument("--query-batch", type=int, default=1, help="query-writing examples per query step (default 1)")
    g.add_argument("--query-every", type=int, default=3,
                   help="a query-writing example every this many steps (default 3: it is learnt long before the answers)")
    g.add_argument("--where-loss", type=float, default=0.0,
                   help="weight of each training-only where-question (agent/box row and column; default 0 = off: "
                        "its loss stayed at the prior for 625 steps of the first shipped run)")
    g.add_argument("--no-goal-contrast", dest="goal_contrast", action="store_false",
                   help="ask only the example's own goal colour (default: every in-domain colour of the first "
                        "frame about the same video, see goal_contrast)")
    g.add_argument("--cell-loss", type=float, default=0.5,
                   help="weight of the auxiliary per-cell perception loss (0 = off; default 0.5)")
    g.add_argument("--reasoner-share", type=float, default=0.5,
                   help="share of videos drawn from the reasoner's outputs when there are any (default 0.5)")
    g.add_argument("--blend-share", type=float, default=0.0,
                   help="share of videos that are a failing example moved a random fraction of the way to its "
                        "ground truth (pixel blend), labelled by the verifier of the blend: the line the "
                        "teacher's loss should fall along (default 0 = none)")
    g.add_argument("--weight-scan", type=int, default=400,
                   help="examples drawn up front to balance Yes/No per question type (default 400)")
    g.add_argument("--reasoner-jobs", type=int, default=160, help="train-split (task, seed) reasoner runs (default 160)")
    g.add_argument("--reasoner-minutes", type=float, default=None,
                   help="time cap for making reasoner videos (default: a quarter of --minutes)")
    g.add_argument("--tto-jobs", type=int, default=0,
                   help="train-split (task, seed) runs of the test-time loop against the --init-from teacher, whose "
                        "previews and final videos (labelled by the verifier) join the reasoner videos: the "
                        "adversarial examples against reward hacking (default 0 = none; needs --init-from)")
    g.add_argument("--tto-lr", type=float, default=5e-4,
                   help="learning rate of those runs (default 5e-4, where the shipped teacher was fooled)")
    g.add_argument("--tto-minutes", type=float, default=10.0, help="time cap for the --tto-jobs runs (default 10)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-tasks", type=int, default=12, help="test/ood tasks per family for rendered videos (default 12)")
    g.add_argument("--eval-reasoner", type=int, default=8,
                   help="test/ood tasks per family for reasoner videos, 2 seeds each (default 8)")
    g.add_argument("--eval-queries", type=int, default=12, help="test/ood tasks per family for query writing (default 12)")
    g.add_argument("--eval-minutes", type=float, default=4.0, help="time kept back for the evaluation (default 4)")
    g.add_argument("--no-eval", action="store_true", help="write the folder only: no eval.json, no model card")
    g.add_argument("--eval-only", action="store_true",
                   help="no training: evaluate the teacher already at --out (e.g. on a new reasoner's videos) and "
                        "rewrite its eval.json (keeping the training record) and MODEL_CARD.md")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--align-loss", type=float, default=0.0,
                   help="weight of the gradient-alignment loss: 1 - cosine of the input gradient of the "
                        "teacher's test-time loss with the direction to the asked task's ground truth, on "
                        "failing videos (double backprop; default 0 = off)")
    g.add_argument("--align-batch", type=int, default=2, help="failing videos per step given the alignment loss")
    g.add_argument("--align-pool", type=int, default=1,
                   help="compare the two directions averaged over this many pixels square (default 1 = per pixel)")
    g.add_argument("--attack-batch", type=int, default=0,
                   help="latent attacks per step (teacher_data.attack_example): the reasoner's first-step latent "
                        "of a train task pushed down the teacher's CURRENT test-time loss, decoded and labelled "
                        "by the verifier, trained on in the same step (default 0 = none; needs a reasoner)")
    g.add_argument("--attack-steps", type=int, default=4,
                   help="at most this many gradient steps per attack (default 4)")
    g.add_argument("--attack-step-size", type=float, default=0.05,
                   help="largest root-mean-square size of one attack step on the unit-RMS latent (default 0.05)")
    g.add_argument("--attack-noise", type=float, default=0.1,
                   help="largest standard deviation of the random start around the frozen latent (default 0.1)")
    g.add_argument("--warmup", type=int, default=20)
    g.add_argument("--ckpt-every", type=int, default=100)
    g = p.add_argument_group("model size (a Qwen3-VL built from config)")
    g.add_argument("--vocab", type=int, default=1024)
    g.add_argument("--hidden", type=int, default=128)
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--kv-heads", type=int, default=2)
    g.add_argument("--intermediate", type=int, default=384)
    g.add_argument("--vision-depth", type=int, default=2)
    g.add_argument("--vision-hidden", type=int, default=64)
    g.add_argument("--vision-heads", type=int, default=4)
    g.add_argument("--vision-intermediate", type=int, default=128)


# ---------------------------------------------------------------- settings (what each stage reads)

@dataclass(frozen=True)
class ModelSize:
    """The random initial model (``build_initial``): the size options of the same names."""
    seed: int
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int


@dataclass(frozen=True)
class Folders:
    """Where the run reads and writes (``_prepare_work``, ``_initial_model``, ``_reasoner_dir``)."""
    out: Path
    work: Path | None
    reasoner: Path | None
    no_reasoner: bool
    init_from: Path | None
    resume: bool
    eval_only: bool


@dataclass(frozen=True)
class DataSettings:
    """The example stream (``Stream``) and its class-weight scan."""
    seed: int
    train_tasks: int
    batch: int
    query_batch: int
    query_every: int
    reasoner_share: float
    weight_scan: int
    blend_share: float = 0.0


@dataclass(frozen=True)
class VideoJobs:
    """The reasoner and test-time-loop videos (``_reasoner_videos``); minutes already defaulted."""
    seed: int
    eval_reasoner: int
    reasoner_jobs: int
    reasoner_minutes: float
    tto_jobs: int
    tto_lr: float
    tto_minutes: float


@dataclass(frozen=True)
class TrainSettings:
    """The training loop (``_train``, ``_train_step``, ``_load_for_training``)."""
    seed: int
    steps: int | None
    stop_at: int | None
    lr: float
    warmup: int
    ckpt_every: int
    goal_contrast: bool
    where_loss: float
    cell_loss: float
    align_loss: float = 0.0
    align_batch: int = 2
    align_pool: int = 1
    attack_batch: int = 0
    attack_steps: int = 4
    attack_step_size: float = 0.05
    attack_noise: float = 0.1

    def attack(self):
        from .teacher_data import AttackSettings

        return AttackSettings(steps=self.attack_steps, step_size=self.attack_step_size, noise=self.attack_noise)


def _check(minutes: float, eval_minutes: float, size: ModelSize, data: DataSettings, train: TrainSettings,
           folders: Folders, videos: VideoJobs) -> None:
    for flag, value in (("minutes", minutes), ("batch", data.batch), ("train-tasks", data.train_tasks),
                        ("vocab", size.vocab), ("hidden", size.hidden), ("layers", size.layers), ("lr", train.lr)):
        if value <= 0:
            raise UserError(f"--{flag} must be positive, got {value}")
    if not folders.eval_only and minutes <= eval_minutes:
        raise UserError(f"--minutes {minutes:g} leaves no training time: --eval-minutes {eval_minutes:g} "
                        "of it is kept back for the evaluation; give more --minutes (or fewer --eval-minutes)")
    if train.steps is not None and train.steps <= 0:
        raise UserError(f"--steps must be positive, got {train.steps}")
    if videos.tto_jobs and not folders.eval_only:
        if folders.init_from is None:
            raise UserError("--tto-jobs runs the test-time loop against a trained teacher: give it with --init-from")
        if folders.no_reasoner:
            raise UserError("--tto-jobs runs the test-time loop on a reasoner: drop --no-reasoner")
    if videos.tto_jobs < 0:
        raise UserError(f"--tto-jobs must be >= 0, got {videos.tto_jobs}")
    if not 0.0 <= data.reasoner_share <= 1.0:
        raise UserError(f"--reasoner-share must be in [0, 1], got {data.reasoner_share}")
    if not 0.0 <= data.blend_share <= 1.0:
        raise UserError(f"--blend-share must be in [0, 1], got {data.blend_share}")
    if train.align_loss < 0 or train.align_batch < 1 or train.align_pool < 1:
        raise UserError(f"--align-loss must be >= 0, --align-batch and --align-pool >= 1, got {train.align_loss}, "
                        f"{train.align_batch} and {train.align_pool}")
    if train.attack_batch < 0 or train.attack_steps < 1 or train.attack_step_size <= 0 or train.attack_noise < 0:
        raise UserError(f"--attack-batch must be >= 0, --attack-steps >= 1, --attack-step-size > 0 and "
                        f"--attack-noise >= 0, got {train.attack_batch}, {train.attack_steps}, "
                        f"{train.attack_step_size:g} and {train.attack_noise:g}")
    if train.attack_batch and folders.no_reasoner and not folders.eval_only:
        raise UserError("--attack-batch attacks the teacher through a reasoner's latents: drop --no-reasoner")
    if size.hidden % size.heads or size.heads % size.kv_heads:
        raise UserError("--hidden must divide by --heads, and --heads by --kv-heads")
    if size.vision_hidden % size.vision_heads:
        raise UserError("--vision-hidden must divide by --vision-heads")


def _reasoner_dir(folders: Folders) -> Path | None:
    if folders.no_reasoner:
        return None
    if folders.reasoner is not None:
        if not (folders.reasoner / "model_index.json").is_file():
            raise UserError(f"--reasoner {folders.reasoner} is not a diffusers Wan pipeline folder "
                            "(no model_index.json)")
        return folders.reasoner
    from ..embedded import REASONER_DIR

    return REASONER_DIR if (REASONER_DIR / "model_index.json").is_file() else None


# ---------------------------------------------------------------- model

def tokenizer_corpus() -> list[str]:
    """Every text the teacher reads or writes on grid tasks, so the BPE encodes them compactly."""
    from ..suites.grid import TARGET_COLOURS, prompt_for
    from ..suites.grid.questions import PROCESS_TYPES, goal_question, process_question
    from ..teacher.qwen import ANSWER_INSTRUCTION
    from ..teacher.queries import query_prompt

    lines = []
    for family in PROCESS_TYPES:
        for colour in TARGET_COLOURS:
            prompt = prompt_for(family, colour)
            goal = goal_question(family, colour)
            proc = [process_question(family, k) for k in PROCESS_TYPES[family]]
            lines += [query_prompt(prompt)] * 3 + [json.dumps({"goal": goal, "process": proc})] * 5
            lines += [f"{q}\n{ANSWER_INSTRUCTION}" for q in [goal, *proc]] * 5
    lines += [f"<{i / 2:.1f} seconds>" for i in range(0, 40)] * 5
    return lines


def _deepstack(vision_depth: int, text_layers: int) -> tuple[int, ...]:
    """Vision layers whose features are added to the first text layers (Qwen3-VL's
    deepstack): the middle and the last, fewer when the model is smaller."""
    picks = sorted({vision_depth // 2, vision_depth - 1})
    return tuple(picks[-max(1, min(len(picks), text_layers)):])


def build_initial(folder: Path, size: ModelSize) -> Path:
    from ..testing.tiny_qwen import build_tiny_qwen_vl

    return build_tiny_qwen_vl(
        folder, arch="qwen3_vl", seed=size.seed, vocab_size=size.vocab, hidden_size=size.hidden,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        intermediate_size=size.intermediate, vision_depth=size.vision_depth, vision_hidden_size=size.vision_hidden,
        vision_num_heads=size.vision_heads, vision_intermediate_size=size.vision_intermediate,
        num_position_embeddings=64, deepstack_visual_indexes=_deepstack(size.vision_depth, size.layers),
        max_pixels=128 * 128, tokenizer_corpus=tokenizer_corpus())


def save_folder(teacher, dest: Path, init: Path) -> None:
    """The teacher as a transformers folder (safetensors weights + the initial folder's tokenizer
    and preprocessor files), written beside ``dest`` then renamed over it."""
    with atomic_folder(dest) as tmp:
        teacher.model.save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (init / name).is_file():
                shutil.copy2(init / name, tmp / name)


def _optimizer(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01, foreach=True)


def lr_at(step: int, progress: float, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine down to a tenth as ``progress``
    (the fraction of the run done: of the steps with --steps, else of the training time) goes to 1."""
    return warmup_cosine(step, progress, lr, warmup, floor=0.1)


def _named_parameters(teacher, probe) -> dict[str, torch.nn.Parameter]:
    out = dict(teacher.model.named_parameters())
    if probe is not None:
        out.update({f"cell_probe.{n}": p for n, p in probe.named_parameters()})
    return out


def save_checkpoint(work: Path, teacher, optimizer, init: Path, state: dict[str, Any], probe=None) -> None:
    ckpt = work / "ckpt"
    save_folder(teacher, ckpt, init)
    if probe is not None:
        save_safetensors({n: p.detach().clone() for n, p in probe.named_parameters()}, work / "probe.safetensors")
    names = {id(p): n for n, p in _named_parameters(teacher, probe).items()}
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"{names[id(p)]}::{key}"] = value.detach().reshape(value.shape).contiguous().clone()
    save_safetensors(tensors, work / "optimizer.safetensors")
    write_json(work / "state.json", state)


def load_optimizer_state(work: Path, teacher, optimizer, probe=None) -> None:
    from safetensors.torch import load_file

    if probe is not None and (work / "probe.safetensors").is_file():
        probe.load_state_dict(load_file(str(work / "probe.safetensors")))
    saved = load_file(str(work / "optimizer.safetensors"))
    params = _named_parameters(teacher, probe)
    for key, value in saved.items():
        name, field = key.split("::")
        optimizer.state[params[name]][field] = value


# ---------------------------------------------------------------- losses

def where_questions(example, rng: np.random.Generator, digits: dict[str, int]) -> list[tuple[str, int]]:
    """Training-only questions with a one-digit answer read by the verifier from the video
    itself: the row and column of the agent (and box) in the last frame and in one random
    frame ("9" when it is not visible). A Yes/No answer carries one bit per question; these
    carry three, and teach the language model where in the video tokens to look."""
    if not example.paths:
        return []
    out = []
    frames = len(example.paths["agent"])
    for thing in ("agent", "box"):
        path = example.paths.get(thing)
        if not path:
            continue
        word = "blue agent" if thing == "agent" else "brown box"
        for t in (frames - 1, int(rng.integers(frames))):
            cell = path[t]
            when = "at the end" if t == frames - 1 else f"in frame {t}"
            for axis, i in (("row", 0), ("column", 1)):
                answer = "9" if cell is None else str(cell[i])
                out.append((f"Which {axis} is the {word} in {when}?", digits[answer]))
    return out


def goal_contrast(example) -> list[tuple[str, bool]]:
    """The goal question for every OTHER in-domain target colour of the example's first
    frame, asked about the same video, with the verifier's answer for that colour.

    Why: with one goal question per video, the language model can lower its loss only by
    reading the video AND matching the colour word to it at once, and from scratch it sat
    at the Yes/No prior. Asking every colour about one video gives Yes and No answers on
    identical video tokens, so only the colour word and the pixels explain the difference
    (measured on the 2-core CPU machine, 2-layer 128-wide LM, goal questions only, lr 1e-3: with every colour
    asked, held-out test-render goal accuracy 67% (n=102, 52 Yes) at steps 150-250; with one colour, 51% at step
    100, the longest that run went)."""
    from ..suites.grid import verify
    from ..suites.grid.questions import goal_question
    from .teacher_data import goal_variants, is_preview

    if not example.source or is_preview(example.source):
        return []  # a preview's answers are decided by another video: only its own questions
    out = []
    for variant in goal_variants(example.task):
        if variant.goal_colour == example.task.goal_colour:
            continue
        reached = bool(verify(variant, example.video).details["goal_reached"])
        out.append((goal_question(variant.family, variant.goal_colour), reached))
    return out


def answer_loss(teacher, example, weights: dict[tuple[str, bool], float], yes_no: tuple[int, int],
                extra: list[tuple[str, int]] = (), extra_weight: float = 0.0,
                contrast: list[tuple[str, bool]] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy on the Yes/No answer token, through ``QwenVLTeacher.answer_logits``,
    and (with ``extra``) on the where-questions' digits, in the same batched forward: two sums.
    ``contrast``: further goal questions (``goal_contrast``) counted with the Yes/No answers."""
    from ..video import to_float

    kinds = list(example.labels)
    qs = example.questions
    extra = list(extra) if extra_weight > 0 else []
    contrast = list(contrast)
    texts = [qs[k] for k in kinds] + [q for q, _ in contrast] + [q for q, _ in extra]
    logits = teacher.answer_logits(to_float(example.video), texts)[:, 0]
    answers = [example.labels[k] for k in kinds] + [y for _, y in contrast]
    target = torch.tensor([yes_no[0] if y else yes_no[1] for y in answers] + [t for _, t in extra])
    w = torch.tensor([weights.get((k, example.labels[k]), 1.0) for k in kinds]
                     + [weights.get(("goal", y), 1.0) for _, y in contrast] + [extra_weight] * len(extra))
    terms = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    if example.soft:  # P(Yes) targets on the example's own questions (blends): cross-entropy on {Yes, No}
        logp = torch.log_softmax(logits[:len(kinds)], dim=-1)
        p = torch.tensor([example.soft[k] for k in kinds])
        soft = -(p * logp[:, yes_no[0]] + (1 - p) * logp[:, yes_no[1]])
        terms = torch.cat([soft, terms[len(kinds):]])
    terms = terms * w
    n = len(answers)
    return terms[:n].sum(), terms[n:].sum()


def query_loss(teacher, task) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy on the JSON queries and the end-of-turn token, and the token count."""
    from ..suites.grid.questions import queries_json
    from ..teacher.queries import query_prompt

    inputs = teacher.prompt_inputs(query_prompt(task.prompt), [task.first_frame()])
    target = teacher.tokenizer(queries_json(task), add_special_tokens=False)["input_ids"]
    target = list(target) + [teacher.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    prompt_ids = inputs["input_ids"]
    ids = torch.cat([prompt_ids, torch.tensor([target], dtype=torch.long)], dim=1)
    batch = dict(inputs)
    batch.update(input_ids=ids, attention_mask=torch.ones_like(ids),
                 mm_token_type_ids=(ids == teacher.image_token_id).long())
    logits = teacher.model(**batch, use_cache=False).logits[0]
    start = prompt_ids.shape[1]
    pred = logits[start - 1:-1].float()
    return torch.nn.functional.cross_entropy(pred, ids[0, start:], reduction="sum"), len(target)


def class_weights(examples) -> dict[tuple[str, bool], float]:
    """Per (question type, answer): 0.5 / frequency of that answer within the type, clipped
    to [0.25, 4], so Yes and No weigh the same for every question type."""
    counts: dict[tuple[str, bool], int] = {}
    for ex in examples:
        for k, v in ex.labels.items():
            counts[(k, v)] = counts.get((k, v), 0) + 1
    out = {}
    for (k, v), n in counts.items():
        total = n + counts.get((k, not v), 0)
        out[(k, v)] = float(min(4.0, max(0.25, 0.5 * total / n)))
    return out


def align_target(example) -> np.ndarray | None:
    """The ground truth of the example's asked task when the gradient-alignment loss applies to the
    example: a video the verifier fails (some answer No) of the ground truth's shape."""
    if all(example.labels.values()):
        return None
    truth = example.task.video()
    return truth if truth.shape == example.video.shape and not np.array_equal(truth, example.video) else None


def align_loss(teacher, example, truth: np.ndarray, lam: float = 0.5, pool: int = 1) -> torch.Tensor:
    """1 - cosine of the input gradient of the test-time loss (lambda-weighted -log P(Yes) of the
    suite's questions, ``objective.weighted_loss``) with ``video - truth``, frames after the first
    (the reasoner pins that one): small when a descent step on the teacher's loss moves the pixels
    toward the legal video, as the MSE to it would. Differentiable in the teacher's weights (double
    backprop: the teacher must be loaded with eager attention). ``pool``: both compared after averaging
    over pool x pool pixel blocks (the coarse direction a reasoner's LoRA can follow; 1 = per pixel)."""
    from ..objective import weighted_loss
    from ..suites.grid.questions import grid_queries
    from ..video import to_float

    x = to_float(example.video).requires_grad_(True)
    loss = weighted_loss(teacher.yes_logprob(x, grid_queries(example.task).all), lam)
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    direction = x.detach() - to_float(truth)
    grad, direction = grad[1:], direction[1:]
    if pool > 1:
        grad, direction = (torch.nn.functional.avg_pool2d(t, pool) for t in (grad, direction))
    cos = torch.nn.functional.cosine_similarity(grad.reshape(-1), direction.reshape(-1), dim=0)
    return 1.0 - cos


# ---------------------------------------------------------------- auxiliary perception loss

#: frame-level facts of the cell probe: any unreadable cell (2), exactly one agent (2),
#: what is under the agent (floor, wall, 4 target colours, none = 7), the same for the box (7)
GLOBAL_CLASSES = (2, 2, 7, 7)
_UNDER = ("floor", "wall", "red", "green", "yellow", "magenta")


def _frame_facts(centre: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """The GLOBAL_CLASSES facts of one frame from its cell classes (palette index, last = unknown)."""
    from ..suites.grid import PALETTE

    names = list(PALETTE)
    unknown = len(names)
    facts = [int((centre == unknown).any() or (ring == unknown).any())]
    for i, thing in enumerate(("agent", "box")):
        cells = np.argwhere(centre == names.index(thing))
        if i == 0:
            facts.append(int(len(cells) == 1))
        if len(cells) == 1:
            under = names[ring[tuple(cells[0])]] if ring[tuple(cells[0])] < unknown else None
            facts.append(_UNDER.index(under) if under in _UNDER else len(_UNDER))
        else:
            facts.append(len(_UNDER))
    return np.array(facts)


class CellProbe(torch.nn.Module):
    """Training-only auxiliary loss (never shipped): a linear head on the vision tokens the
    language model receives predicts what the pixel verifier reads in each of the cells they
    cover (centre and border colour class of each cell, in both frames of the temporal patch).

    From scratch, the answer loss alone sat at the Yes/No prior (ln 2) for hundreds of steps:
    nothing told the vision tower what matters. This dense signal, read from the same pixels
    by the verifier's own reader, makes the video tokens carry the grid state early."""

    def __init__(self, teacher) -> None:
        from ..suites.grid import PALETTE

        super().__init__()
        self.classes = len(PALETTE) + 1  # palette colours + unknown
        merge = teacher.spec.merge_size
        self.per_token = teacher.spec.temporal_patch_size * merge * merge * 2
        hidden = teacher.model.config.text_config.hidden_size
        gen = torch.Generator().manual_seed(0)
        self.head = torch.nn.Linear(hidden, self.per_token * self.classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * 0.02)
            self.head.bias.zero_()
        self.merge, self.tp = merge, teacher.spec.temporal_patch_size
        # frame-level facts predicted from EVERY token of the frame pair, so that any token (and
        # so the language model's first, near-uniform attention) carries them
        self.global_head = torch.nn.Linear(hidden, self.tp * sum(GLOBAL_CLASSES))
        with torch.no_grad():
            self.global_head.weight.copy_(torch.randn(self.global_head.weight.shape, generator=gen) * 0.02)
            self.global_head.bias.zero_()
        self.captured: torch.Tensor | None = None
        teacher.model.model.visual.merger.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.captured = output

    def targets(self, video: np.ndarray) -> torch.Tensor:
        from ..suites.grid.verify import MAX_DISTANCE, read_cells

        t, h = video.shape[0], video.shape[1]
        n = h // 16
        cells = read_cells(video, n)
        unknown = self.classes - 1
        centre = np.where(cells["centre_dist"] > MAX_DISTANCE, unknown, cells["centre_idx"])
        ring = np.where(cells["ring_dist"] > MAX_DISTANCE, unknown, cells["ring_idx"])
        arr = np.stack([centre, ring], axis=-1)  # T, n, n, 2
        glob = np.stack([_frame_facts(centre[f], ring[f]) for f in range(t)])  # T, len(GLOBAL_CLASSES)
        if t % self.tp:
            arr = np.concatenate([arr, np.repeat(arr[-1:], self.tp - t % self.tp, axis=0)])
            glob = np.concatenate([glob, np.repeat(glob[-1:], self.tp - t % self.tp, axis=0)])
        m, tp = self.merge, self.tp
        arr = arr.reshape(-1, tp, n // m, m, n // m, m, 2).transpose(0, 2, 4, 1, 3, 5, 6)
        per_group = glob.reshape(-1, tp * len(GLOBAL_CLASSES))  # groups, tp * facts
        tokens_per_group = (n // m) ** 2
        self._global_targets = torch.from_numpy(np.repeat(per_group, tokens_per_group, axis=0)).long()
        return torch.from_numpy(np.ascontiguousarray(arr).reshape(-1, self.per_token)).long()

    def loss(self, video: np.ndarray) -> torch.Tensor:
        """Cross-entropy of the head on the tokens of the LAST vision pass (``answer_logits``)."""
        feats = self.captured
        target = self.targets(video)
        if feats is None or feats.shape[0] != target.shape[0]:
            raise RuntimeError("the cell probe saw no vision pass for this video (or the frame size is not 16n)")
        logits = self.head(feats.float()).view(-1, self.classes)
        loss = torch.nn.functional.cross_entropy(logits, target.view(-1))
        glob = self.global_head(feats.float()).view(feats.shape[0], self.tp, -1)
        gt = self._global_targets.view(feats.shape[0], self.tp, -1)
        start = 0
        for i, k in enumerate(GLOBAL_CLASSES):
            loss = loss + torch.nn.functional.cross_entropy(glob[..., start:start + k].reshape(-1, k),
                                                            gt[..., i].reshape(-1)) / len(GLOBAL_CLASSES)
            start += k
        return loss


# ---------------------------------------------------------------- the run

class Stream:
    """The training examples of step ``s``: a pure function of (seed, s)."""

    def __init__(self, tasks, reasoner_examples, data: DataSettings) -> None:
        from .teacher_data import goal_variants

        self.tasks = tasks
        self.reasoner_examples = reasoner_examples
        self.query_tasks = [v for t in tasks for v in goal_variants(t)]
        self.data = data
        self.share = data.reasoner_share if reasoner_examples else 0.0

    def draw(self, rng: np.random.Generator):
        from .teacher_data import blend_example

        if self.data.blend_share and rng.random() < self.data.blend_share:
            return blend_example(self._draw(rng), rng)
        return self._draw(rng)

    def _draw(self, rng: np.random.Generator):
        from .teacher_data import render_example

        if self.share and rng.random() < self.share:
            return self.reasoner_examples[int(rng.integers(len(self.reasoner_examples)))]
        return render_example(self.tasks[int(rng.integers(len(self.tasks)))], rng)

    def step(self, step: int):
        rng = np.random.default_rng([self.data.seed, 1, step])
        videos = [self.draw(rng) for _ in range(self.data.batch)]
        n_q = self.data.query_batch if step % max(1, self.data.query_every) == 0 else 0
        queries = [self.query_tasks[int(rng.integers(len(self.query_tasks)))] for _ in range(n_q)]
        return videos, queries


def _eval_only(out: Path, eval_samples, reasoner_dir, ev: EvalSettings, command: str, fallback_command: str) -> int:
    from . import teacher_eval

    old = json.loads((out / EVAL_NAME).read_text()) if (out / EVAL_NAME).is_file() else {}
    figures = teacher_eval.evaluate(out, eval_samples, ev)
    figures["training"] = dict(old.get("training") or {"steps": None, "train_seconds": None, "wall_seconds": None,
                                                        "reasoner_train_videos": 0, "reasoner": None,
                                                        "weights_mb": None})
    figures["training"]["reasoner_eval_videos"] = len(eval_samples)
    figures["training"]["eval_reasoner"] = str(reasoner_dir) if reasoner_dir else None
    figures["training"]["eval_command"] = command + " --eval-only"
    if old.get("alignment"):  # the same weights: their figures on the loop's previews still hold
        figures["alignment"] = old["alignment"]
    write_json(out / EVAL_NAME, figures)
    teacher_eval.write_model_card(out, figures, fallback_command)
    print(f"evaluated {out}; figures in {out / EVAL_NAME}")
    return 0


def _command(args) -> str:
    return command_record("vlm-teacher train teacher", args, add_arguments, {"out": str(args.out)},
                          leave_out=("resume", "stop_at", "eval_only", "work"))


def _work_folder(folders: Folders) -> Path:
    """--work, else ``<out>.work`` beside the model folder."""
    return folders.work or folders.out.with_name(folders.out.name + ".work")


def _prepare_work(folders: Folders) -> tuple[Path, bool]:
    """The work folder, and whether the run resumes there; a fresh run clears the old one's files."""
    work = _work_folder(folders)
    work.mkdir(parents=True, exist_ok=True)
    resuming = folders.resume and (work / "state.json").is_file() and (work / "ckpt" / "config.json").is_file()
    if folders.resume and not resuming:
        print(f"no checkpoint in {work}; starting from scratch")
    if not resuming and not folders.eval_only:
        for name in ("ckpt", "init", "state.json", "optimizer.safetensors", "probe.safetensors", LOG_NAME):
            path = work / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    return work, resuming


def _initial_model(folders: Folders, size: ModelSize, work: Path) -> Path:
    """The initial (random, or --init-from) model: its tokenizer and preprocessor files are kept for every save."""
    init = work / "init"
    if folders.eval_only:
        if not (folders.out / "config.json").is_file():
            raise UserError(f"--eval-only needs a trained teacher at --out {folders.out}")
    elif not (init / "config.json").is_file():
        if folders.init_from is not None:
            if not (folders.init_from / "config.json").is_file():
                raise UserError(f"--init-from {folders.init_from} is not a transformers model folder "
                                "(no config.json)")
            shutil.copytree(folders.init_from, init,
                            ignore=shutil.ignore_patterns("*.work", LOG_NAME, EVAL_NAME, "*.md"))
        else:
            build_initial(init, size)
    return init


def _reasoner_videos(reasoner_dir: Path | None, work: Path, init: Path, t0: float, jobs: VideoJobs, *,
                     eval_only: bool):
    """(evaluation, training, test-time-loop) videos of the reasoner, each cached under its weights' id."""
    from ..identity import model_id
    from ..suites.grid import grid_tasks
    from ..teacher.qwen import QwenVLTeacher
    from .teacher_data import reasoner_samples, run_reasoner, tto_maker

    if reasoner_dir is None:
        return [], [], []
    from ..reasoner import load_reasoner

    # (task, seed) jobs for the reasoner: evaluation first (test and ood), then training
    eval_jobs = [(t, s) for split in ("test", "ood") for t in grid_tasks(split, jobs.eval_reasoner)
                 for s in (1001, 1002)]
    train_jobs = [(t, int(s)) for t, s in zip(grid_tasks("train", (jobs.reasoner_jobs + 1) // 2, seed=7),
                                              np.random.default_rng([jobs.seed, 2]).integers(
                                                  0, 10**6, size=jobs.reasoner_jobs))]
    reasoner = load_reasoner(reasoner_dir)
    # keyed by the weights, not the folder name: a retrained reasoner in the same folder makes new videos
    cache = work / f"reasoner-{model_id(reasoner_dir)}"
    make = functools.partial(run_reasoner, reasoner)
    eval_samples = reasoner_samples(make, eval_jobs, cache, deadline=t0 + jobs.reasoner_minutes * 60 * 0.4,
                                    desc="reasoner videos (eval)")
    train_samples = reasoner_samples(make, train_jobs, cache, deadline=t0 + jobs.reasoner_minutes * 60,
                                     desc="reasoner videos (train)") if not eval_only else []
    tto_samples = []
    if jobs.tto_jobs and not eval_only:
        tto_jobs = [(t, int(s)) for t, s in zip(grid_tasks("train", (jobs.tto_jobs + 1) // 2, seed=11),
                                                np.random.default_rng([jobs.seed, 5]).integers(
                                                    0, 10**6, size=jobs.tto_jobs))]
        attacked = QwenVLTeacher.from_pretrained(init)
        tto_samples = reasoner_samples(tto_maker(reasoner, attacked, jobs.tto_lr), tto_jobs,
                                       work / f"tto-{model_id(reasoner_dir)}-vs-{model_id(init)}-lr{jobs.tto_lr:g}",
                                       deadline=time.monotonic() + jobs.tto_minutes * 60,
                                       desc="test-time-loop videos")
    return eval_samples, train_samples, tto_samples


def _load_for_training(folder: Path, work: Path, resuming: bool, *, cell_loss: float, lr: float, seed: int,
                       double_backprop: bool = False):
    """(teacher in training mode, cell probe or None, parameters, AdamW, run state), resumed when asked.
    ``double_backprop``: eager attention (torch's CPU flash attention has no second derivative)."""
    from ..teacher.qwen import QwenVLTeacher

    teacher = QwenVLTeacher.from_pretrained(folder, attn_implementation="eager" if double_backprop else None)
    teacher.model.requires_grad_(True)
    teacher.model.train()
    probe = CellProbe(teacher) if cell_loss > 0 else None
    params = list(_named_parameters(teacher, probe).values())
    optimizer = _optimizer(params, lr)
    state: dict[str, Any] = {"step": 0, "train_seconds": 0.0, "seed": seed}
    if resuming:
        state = json.loads((work / "state.json").read_text())
        load_optimizer_state(work, teacher, optimizer, probe)
        print(f"resuming at step {state['step']}")
    return teacher, probe, params, optimizer, state


def _attacks(reasoner, teacher, stream: Stream, step: int, seed: int, train: TrainSettings) -> list:
    """The step's latent attacks on the teacher as it is now (``attack_example``): train tasks of the
    stream, reasoner seeds and attack sizes drawn from (seed, step), so a resumed run repeats them."""
    from .teacher_data import attack_example

    out = []
    for i in range(train.attack_batch):
        rng = np.random.default_rng([seed, 6, step, i])
        task = stream.tasks[int(rng.integers(len(stream.tasks)))]
        out.append(attack_example(reasoner, teacher, task, int(rng.integers(10**6)), rng, train.attack()))
    return out


def _train_step(teacher, probe, params, optimizer, stream: Stream, step: int, lr: float, weights, yes_no, digits, *,
                seed: int, contrast_goals: bool, where_loss: float, cell_loss: float, align_weight: float = 0.0,
                align_batch: int = 2, align_pool: int = 1, attacks: list = ()) -> dict[str, Any]:
    """One optimiser step on the answer, where, cell, alignment and query losses; returns its log record.
    ``attacks``: examples trained on beside the stream's (``_attacks``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    videos, qtasks = stream.step(step)
    videos = videos + list(attacks)
    optimizer.zero_grad(set_to_none=True)
    contrasts = [goal_contrast(ex) if contrast_goals else [] for ex in videos]
    n_answers = sum(len(v.labels) + len(c) for v, c in zip(videos, contrasts))
    a_loss = c_loss = w_loss = 0.0
    wrng = np.random.default_rng([seed, 4, step])
    for ex, contrast in zip(videos, contrasts):
        loss, where = answer_loss(teacher, ex, weights, yes_no, where_questions(ex, wrng, digits),
                                  where_loss, contrast)
        loss, where = loss / n_answers, where / n_answers
        a_loss += float(loss.detach())
        w_loss += float(where.detach())
        loss = loss + where
        if probe is not None:
            cell = probe.loss(ex.video) / len(videos)
            c_loss += float(cell.detach())
            loss = loss + cell_loss * cell
        loss.backward()
    al_loss, n_align = 0.0, 0
    if align_weight > 0:
        pairs = [(ex, t) for ex in videos if (t := align_target(ex)) is not None][:align_batch]
        for ex, truth in pairs:
            loss = align_loss(teacher, ex, truth, pool=align_pool) / len(pairs)
            (align_weight * loss).backward()
            al_loss += float(loss.detach())
        n_align = len(pairs)
    q_loss = 0.0
    for qt in qtasks:
        loss, n = query_loss(teacher, qt)  # (no vision pass of a video: the probe is not used)
        loss = loss / (n * len(qtasks))
        loss.backward()
        q_loss += float(loss.detach())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
    optimizer.step()
    record = {"lr": lr, "answer_loss": a_loss, "where_loss": w_loss, "cell_loss": c_loss, "query_loss": q_loss,
              "grad_norm": grad_norm, "sources": [v.source for v in videos]}
    if align_weight > 0:
        record |= {"align_loss": al_loss, "align_videos": n_align}
    return record


def _train(train: TrainSettings, teacher, probe, params, optimizer, state, stream: Stream, weights, work: Path,
           init: Path, log: JsonlLog, train_deadline: float, resuming: bool, reasoner=None) -> int:
    """The training loop up to --steps, the time budget or --stop-at; checkpoints on the way. Returns the step.
    ``reasoner``: the model whose latents --attack-batch attacks."""
    from tqdm.auto import tqdm

    yes_no = (teacher.tokenizer.convert_tokens_to_ids("Yes"), teacher.tokenizer.convert_tokens_to_ids("No"))
    digits = {str(d): teacher.tokenizer(str(d), add_special_tokens=False)["input_ids"][0] for d in range(10)}
    # the learning-rate schedule follows the steps when --steps is given (deterministic), else
    # the training time (robust to a machine shared with other jobs)
    if "train_budget" not in state or not resuming:
        state["train_budget"] = max(1.0, train_deadline - time.monotonic())
    step = int(state["step"])
    total = train.steps
    bar = tqdm(total=total, initial=step, desc="train teacher", unit="step")
    while total is None or step < total:
        if time.monotonic() > train_deadline:
            print(f"time budget reached at step {step}")
            break
        if train.stop_at is not None and step >= train.stop_at:
            break
        ts = time.monotonic()
        progress = step / total if total else float(state["train_seconds"]) / state["train_budget"]
        attacks = _attacks(reasoner, teacher, stream, step, train.seed, train) if train.attack_batch else []
        record = _train_step(teacher, probe, params, optimizer, stream, step,
                             lr_at(step, progress, train.lr, train.warmup), weights, yes_no, digits, seed=train.seed,
                             contrast_goals=train.goal_contrast, where_loss=train.where_loss,
                             cell_loss=train.cell_loss, align_weight=train.align_loss, align_batch=train.align_batch,
                             align_pool=train.align_pool, attacks=attacks)
        step += 1
        seconds = time.monotonic() - ts
        state["train_seconds"] = float(state["train_seconds"]) + seconds
        sources = record.pop("sources")
        log.write(step=step, **record, seconds=round(seconds, 4), sources=sources)
        bar.update(1)
        bar.set_postfix(answer=f"{record['answer_loss']:.3f}", where=f"{record['where_loss']:.3f}",
                        cell=f"{record['cell_loss']:.3f}", query=f"{record['query_loss']:.3f}")
        if step % train.ckpt_every == 0:
            state["step"] = step
            save_checkpoint(work, teacher, optimizer, init, state, probe)
    bar.close()
    state["step"] = step
    save_checkpoint(work, teacher, optimizer, init, state, probe)
    return step


def _ship(out: Path, state, samples, weights, reasoner_dir: Path | None, t0: float, ev: EvalSettings,
          record: dict[str, Any], fallback_command: str) -> int:
    """The evaluation figures and the model card of the written folder; ``record``: the run's
    settings for the training record (``_training_record``)."""
    from . import teacher_eval

    eval_samples, train_samples, tto_samples = samples
    figures = teacher_eval.evaluate(out, eval_samples, ev)
    figures["training"] = {
        "steps": int(state["step"]), "threads": record["threads"],
        "train_seconds": round(float(state["train_seconds"]), 1),
        "reasoner": str(reasoner_dir) if reasoner_dir else None,
        "command": record["command"],
        "init_from": record["init_from"],
        "lineage": record["lineage"],
        "reasoner_train_videos": len(train_samples), "reasoner_eval_videos": len(eval_samples),
        "tto_train_videos": len(tto_samples), "tto_lr": record["tto_lr"],
        "train_tasks_per_family": record["train_tasks_per_family"], "seed": record["seed"],
        "blend_share": record["blend_share"], "align_loss": record["align_loss"],
        "attack": record["attack"],
        "wall_seconds": round(time.monotonic() - t0, 1),
        "weights_mb": round(sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e6, 2),
        "class_weights": {f"{k}={'yes' if v else 'no'}": w for (k, v), w in sorted(weights.items())},
    }
    write_json(out / EVAL_NAME, figures)
    teacher_eval.write_model_card(out, figures, fallback_command)
    print(f"wrote {out} ({figures['training']['weights_mb']} MB of weights); figures in {out / EVAL_NAME}")
    return 0


def _training_record(args, command: str) -> dict[str, Any]:
    """The run's settings as eval.json's training record keeps them."""
    return {"threads": args.threads, "command": command,
            "init_from": str(args.init_from) if args.init_from else None, "lineage": init_lineage(args.init_from),
            "tto_lr": args.tto_lr if args.tto_jobs else None, "train_tasks_per_family": args.train_tasks,
            "seed": args.seed, "blend_share": args.blend_share, "align_loss": args.align_loss,
            "attack": ({"batch": args.attack_batch, "steps": args.attack_steps, "step_size": args.attack_step_size,
                        "noise": args.attack_noise} if args.attack_batch else None)}


def _fallback_command(args) -> str:
    """The card's command when an evaluated folder's eval.json has none (``write_model_card``)."""
    return f"vlm-teacher train teacher --out {args.out} --minutes {args.minutes:g} --seed {args.seed}"


def _train_and_save(folders: Folders, data: DataSettings, train: TrainSettings, work: Path, init: Path,
                    resuming: bool, reasoner_examples, train_deadline: float, reasoner_dir: Path | None = None):
    """The training stage: the stream, the class weights, the loop (resumed when asked) and the saved
    folder. Returns (state, weights), or None when the run stopped early at --stop-at."""
    from ..suites.grid import grid_tasks

    stream = Stream(grid_tasks("train", data.train_tasks, seed=data.seed), reasoner_examples, data)
    scan_rng = np.random.default_rng([data.seed, 3])
    weights = class_weights([stream.draw(scan_rng) for _ in range(max(1, data.weight_scan))])
    teacher, probe, params, optimizer, state = _load_for_training(work / "ckpt" if resuming else init, work, resuming,
                                                                  cell_loss=train.cell_loss, lr=train.lr,
                                                                  seed=train.seed,
                                                                  double_backprop=train.align_loss > 0)
    log = JsonlLog(work / LOG_NAME, stamp=False)
    log.keep_until(int(state["step"]))  # drop lines written after the checkpoint
    reasoner = None
    if train.attack_batch:
        from ..reasoner import load_reasoner

        reasoner = load_reasoner(reasoner_dir)
    step = _train(train, teacher, probe, params, optimizer, state, stream, weights, work, init, log,
                  train_deadline=train_deadline, resuming=resuming, reasoner=reasoner)
    if step == 0:
        raise UserError(f"the time budget ran out before the first training step, so no model was written to "
                        f"{folders.out}; give more --minutes (the reasoner videos take --reasoner-minutes, by "
                        "default a quarter of it, and --eval-minutes is kept back for the evaluation)")
    if train.stop_at is not None and step >= train.stop_at and (train.steps is None or step < train.steps):
        print(f"stopped at step {step} as asked; continue with --resume")
        return None
    teacher.model.eval()
    save_folder(teacher, folders.out, init)
    shutil.copy2(log.path, folders.out / LOG_NAME)
    return state, weights


def run(args) -> int:
    """The recipe as its stages: settings, work folder, initial model, reasoner videos, training, the shipped folder."""
    t0 = time.monotonic()
    size, folders, data, train = (pick(ModelSize, args), pick(Folders, args), pick(DataSettings, args),
                                  pick(TrainSettings, args))
    videos = pick(VideoJobs, args, reasoner_minutes=args.reasoner_minutes if args.reasoner_minutes is not None
                  else args.minutes / 4)
    ev = pick(EvalSettings, args)
    _check(args.minutes, args.eval_minutes, size, data, train, folders, videos)
    torch.set_num_threads(max(1, args.threads))
    command = _command(args)

    with WorkLock(_work_folder(folders), "`vlm-teacher train teacher`"):
        work, resuming = _prepare_work(folders)
        reasoner_dir = _reasoner_dir(folders)
        if train.attack_batch and reasoner_dir is None and not folders.eval_only:
            raise UserError("--attack-batch needs a reasoner: give --reasoner (no embedded reasoner was found)")
        init = _initial_model(folders, size, work)
        print(f"reasoner: {reasoner_dir}" if reasoner_dir else
              "reasoner: none available; training on ground-truth, corrupted and degraded renders only")
        samples = _reasoner_videos(reasoner_dir, work, init, t0, videos, eval_only=folders.eval_only)
        eval_samples, train_samples, tto_samples = samples
        if folders.eval_only:
            return _eval_only(folders.out, eval_samples, reasoner_dir, ev, command, _fallback_command(args))
        if reasoner_dir:
            print(f"reasoner videos: {len(train_samples)} for training, {len(eval_samples)} for evaluation"
                  + (f", {len(tto_samples)} from the test-time loop" if videos.tto_jobs else ""))

        trained = _train_and_save(folders, data, train, work, init, resuming,
                                  [ex for s in train_samples + tto_samples for ex in s.examples()],
                                  train_deadline=t0 + args.minutes * 60.0 - args.eval_minutes * 60,
                                  reasoner_dir=reasoner_dir)
        if trained is None:
            return 0
        if args.no_eval:
            print(f"wrote {folders.out} (no evaluation: --no-eval)")
            return 0
        state, weights = trained
        return _ship(folders.out, state, samples, weights, reasoner_dir, t0, ev, _training_record(args, command),
                     _fallback_command(args))
