"""`vlm-teacher train surrogate`: distil a reasoner's VAE decoder into a small surrogate
decoder for the teacher's preview (``reasoner/surrogate.py``, the paper's LightX2V role).

The surrogate takes the same latent as the VAE decoder (the raw latent ``preview`` feeds
it) and returns RGB frames; it is a ``TinyWanDecoder`` with the reasoner's time and space
factors. Its targets are the full VAE decode of each training latent (no pixels of the
videos themselves: the surrogate must reproduce what the VAE shows, the reasoner's
mistakes included). The latents come from two places:

1. **videos** - grid videos of the train split encoded by the reasoner's VAE, drawn from
   the VAE recipe's mix (``grid_videos.vae_video``: ground truth, counterfactual goals,
   rule-breaking corruptions, random walks);
2. **reasoner** - first-step predictions of the frozen reasoner on train tasks (what the
   teacher is shown at step 1 of the test-time loop), and the same with a random LoRA
   (``lora_B`` drawn at up to ``--lora-scale``) standing in for the adapters the loop
   visits later.

3. **oracle_tto** (second round) - the latents the test-time loop previews when the grid
   oracle (the loss whose optimum is the ground truth) drives it through the first-round
   surrogate. Measured without this round: latents optimised through the surrogate came to
   decode right through it and wrong through the VAE (verdict agreement 66% on such
   latents against 98% on held-out predictions). The surrogate then trains on all the data
   for ``--tune-steps`` more steps.

The loss is the VAE recipe's (squared plus absolute error with extra weight on agent, box
and target pixels, ``grid_reasoner.salience_weights``) plus the error of each cell's mean
centre and border colour, the pixels the grid verifier reads: one cell of an unknown
colour fails a whole video. At the end the surrogate and the
VAE decode held-out latents (the test and ood splits: ground truth, frozen predictions,
LoRA-perturbed predictions) and the grid verifier judges both: the card reports how often
the verdicts agree.

Repeatability and resumption: the seed fixes the surrogate's init, the data and each
step's batch (drawn from ``(seed, step)``); ``checkpoint/surrogate.safetensors`` holds the
weights, the AdamW state and the run state, and ``--resume`` continues the run. The
training stage times its first steps and fixes how many fit in ``--minutes``
(``scaffold.StepPlan``). From scratch the defaults take about 14 CPU minutes on one thread
(data 2, first round up to 7, second round 4, evaluation 1); re-distilling for a retrained
VAE from the surrogate of the previous one (``--init-from FILE --steps 1000``) took 7.7 CPU
minutes here (the shipped card).

Outputs in ``--out``: ``model/`` (``surrogate_decoder.safetensors``, ``metrics.json``,
``MODEL_CARD.md``), ``log.jsonl``, ``checkpoint/``, ``cache/``. ``--export DIR`` copies
``model/`` to DIR (the shipped one is ``src/vlm_teacher/embedded/grid-wan-surrogate``).
Use it with ``reasoner.load_preview_decoder(DIR / "surrogate_decoder.safetensors")``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..files import write_json, write_text
from ..runtime import machine_line
from .scaffold import (JsonlLog, ModuleCheckpoint, StepPlan, WorkLock, apply_update, changed_settings, command_record,
                       config_record, export_folder, save_safetensors, warmup_cosine)

FILE_NAME = "surrogate_decoder.safetensors"
METRICS_NAME = "metrics.json"
#: the surrogate shipped for the embedded reasoner (beside it, not inside it: the reasoner recipe's
#: --export replaces the whole grid-wan folder, and the folder's hash names the reasoner in results)
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "embedded" / "grid-wan-surrogate"
SOURCES = ("videos", "reasoner", "reasoner_lora", "oracle_tto")
STAGES = ("train", "tune", "done")
#: the settings that shape the model and its data; a resumed run must use the same ones
ARCH_KEYS = ("seed", "reasoner", "widths", "train_tasks", "videos", "reasoner_videos", "lora_variants", "lora_scale",
             "steps", "batch", "lr", "object_weight", "cell_weight", "oracle_tasks", "oracle_steps",
             "oracle_every", "tune_steps", "init_from")
CALIBRATION_STEPS, REPLAN_EVERY = 20, 100


# ---------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="work folder (model/, log.jsonl, checkpoint/, cache/)")
    p.add_argument("--reasoner", type=Path, default=None,
                   help="Wan pipeline folder whose VAE decoder is distilled (default: the embedded grid-wan)")
    p.add_argument("--minutes", type=float, default=7.0,
                   help="wall-clock budget of the first training round (default %(default)s; the data, the "
                        "second round and the evaluation add about 7 minutes on one thread)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    p.add_argument("--export", type=Path, default=None,
                   help="copy the finished model folder here (e.g. src/vlm_teacher/embedded/grid-wan-surrogate)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    g = p.add_argument_group("data")
    g.add_argument("--train-tasks", type=int, default=400, help="train-split tasks per family to draw from")
    g.add_argument("--videos", type=int, default=600, help="encoded grid videos (the VAE recipe's mix)")
    g.add_argument("--reasoner-videos", type=int, default=200,
                   help="train tasks whose frozen first-step prediction is a training latent")
    g.add_argument("--lora-variants", type=int, default=2,
                   help="per such task, predictions under that many random LoRAs")
    g.add_argument("--lora-scale", type=float, default=0.05,
                   help="the random LoRAs' lora_B entries are normal with a standard deviation drawn "
                        "uniformly up to this")
    g.add_argument("--eval-tasks", type=int, default=10,
                   help="test and ood tasks per family for the card's verdict agreement (0: skip)")
    g = p.add_argument_group("model and training")
    g.add_argument("--init-from", type=Path, default=None,
                   help="start from this surrogate file (e.g. the one distilled from the reasoner's previous VAE; "
                        "its widths are used) instead of a random init")
    g.add_argument("--widths", default="64,32,16,16", help="TinyWanDecoder channel widths, 4 comma-separated")
    g.add_argument("--steps", type=int, default=3000, help="most steps (fewer when --minutes runs out first)")
    g.add_argument("--batch", type=int, default=4, help="latents per step")
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--object-weight", type=float, default=8.0,
                   help="extra loss weight on agent, box and target pixels (as in the VAE recipe)")
    g.add_argument("--cell-weight", type=float, default=4.0,
                   help="weight of the cell-colour term: each cell's mean centre and ring colour, where the "
                        "grid verifier reads (0: off)")
    g.add_argument("--checkpoint-every", type=int, default=200)
    g = p.add_argument_group("second round: latents the test-time loop visits through the surrogate")
    g.add_argument("--oracle-tasks", type=int, default=16,
                   help="train tasks on which the oracle-driven loop runs through the first-round surrogate "
                        "(0: no second round)")
    g.add_argument("--oracle-steps", type=int, default=30, help="loop steps per such task")
    g.add_argument("--oracle-every", type=int, default=2, help="keep every N-th latent the loop previews")
    g.add_argument("--tune-steps", type=int, default=800, help="steps on all the data after the second round")
    g.add_argument("--tune-minutes", type=float, default=2.5, help="wall-clock budget of those steps")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: as if killed


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        widths = ()
    if len(widths) != 4 or min(widths) < 1:
        raise UserError(f"--widths must be 4 positive integers like 64,32,16,16, got {text!r}")
    return widths


def _check_args(args) -> None:
    parse_widths(args.widths)
    for key in ("train_tasks", "steps", "batch", "checkpoint_every", "threads"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    for key in ("videos", "reasoner_videos", "lora_variants", "eval_tasks"):
        if getattr(args, key) < 0:
            raise UserError(f"--{key.replace('_', '-')} must be >= 0, got {getattr(args, key)}")
    if args.videos + args.reasoner_videos < 1:
        raise UserError("--videos and --reasoner-videos are both 0: there is nothing to learn from")
    if args.minutes <= 0 or args.lora_scale < 0 or args.lr <= 0:
        raise UserError("--minutes and --lr must be > 0 and --lora-scale >= 0")
    if args.reasoner is not None and not (Path(args.reasoner) / "model_index.json").is_file():
        raise UserError(f"--reasoner {args.reasoner} is not a Wan pipeline folder (no model_index.json)")


def _file_record(path: Path) -> dict[str, Any]:
    """What a surrogate file's metadata says it was distilled from."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return {k: meta.get(k) for k in ("vae_id", "reasoner")}


def reasoner_folder(path: Path | None) -> Path:
    from ..embedded import reasoner_path

    return Path(path) if path is not None else reasoner_path()


def vae_identity(folder: Path) -> str:
    """sha256 (first 16 hex digits) of the reasoner's ``vae/`` files, config and weights: which VAE
    decoder a surrogate was distilled from."""
    h = hashlib.sha256()
    files = sorted(p for p in (Path(folder) / "vae").glob("*") if p.suffix in (".json", ".safetensors"))
    if not files:
        raise UserError(f"{folder} has no vae/ folder")
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build_surrogate(reasoner, widths: tuple[int, ...], seed: int):
    """A fresh TinyWanDecoder with the reasoner's latent channels and time and space factors."""
    from ..reasoner.surrogate import TinyWanDecoder

    vcfg = reasoner.vae.config
    patch = int(getattr(vcfg, "patch_size", None) or 1)
    if reasoner.scale_spatial != 8 * patch:
        raise UserError(f"the surrogate decoder upsamples 8 x patch; this VAE is {reasoner.scale_spatial}x "
                        f"spatially with patch {patch}")
    grows = {1: (1, 1), 2: (2, 1), 4: (2, 2)}.get(reasoner.scale_temporal)
    if grows is None:
        raise UserError(f"the surrogate decoder supports 1x, 2x or 4x time factors, not {reasoner.scale_temporal}x")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyWanDecoder(reasoner.z_dim, patch, widths, grows)


# ---------------------------------------------------------------------------- data
def latent_stats(reasoner) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (1, C, 1, 1, 1), of the VAE's latent space: raw = normalised * std + mean."""
    cfg = reasoner.vae.config
    return (torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1),
            torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1))


@torch.no_grad()
def encode_videos(reasoner, videos: list[np.ndarray]) -> torch.Tensor:
    """uint8 (T, H, W, 3) videos -> raw VAE latents (what the decoder takes), float32 on the CPU."""
    from .grid_reasoner import _to_pixels

    x = _to_pixels(videos, reasoner.device).to(reasoner.vae.dtype)
    return reasoner.vae.encode(x).latent_dist.mode().float().cpu()


@torch.no_grad()
def vae_frames(reasoner, latents: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Raw latents (N, C, T, h, w) -> the full VAE decode as uint8 (N, F, 3, H, W)."""
    out = []
    for i in range(0, latents.shape[0], batch):
        z = latents[i:i + batch].to(reasoner.device, reasoner.vae.dtype)
        video = reasoner.vae.decode(z, return_dict=False)[0].float()  # (B, 3, F, H, W) in [-1, 1]
        out.append((((video + 1) / 2).clamp(0, 1) * 255 + 0.5).to(torch.uint8).transpose(1, 2).cpu())
    return torch.cat(out)


def randomise_lora(reasoner, scale: float, generator: torch.Generator) -> None:
    """Attach a LoRA whose ``lora_B`` entries are N(0, scale^2): a reasoner the test-time loop
    could have moved to (peft's fresh ``lora_B`` is zero, the base model itself)."""
    reasoner.add_lora(rank=16, seed=int(torch.randint(1 << 30, (1,), generator=generator)))
    with torch.no_grad():
        for name, param in reasoner.transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


@torch.no_grad()
def reasoner_latents(reasoner, tasks, seeds: list[int], *, lora: float | None, generator: torch.Generator | None,
                     ) -> torch.Tensor:
    """Raw first-step predictions (N, C, T, h, w) of the reasoner on ``tasks`` with ``seeds``; with
    ``lora`` each under a fresh random LoRA of scale U(0, lora) (``randomise_lora``)."""
    mean, std = latent_stats(reasoner)
    out = []
    for task, seed in zip(tasks, seeds):
        if lora is not None:
            randomise_lora(reasoner, lora * float(torch.rand((), generator=generator)), generator)
        cond = reasoner.prepare(task.prompt, task.first_frame(), int(seed), **task.video_shape())
        out.append(reasoner.predict_x0(cond, mode="first").float().cpu() * std + mean)
        reasoner.remove_lora()
    return torch.cat(out)


def build_data(reasoner, args, log: JsonlLog, path: Path) -> dict[str, torch.Tensor]:
    """The training latents and their VAE decodes, made once per run (``cache/data.safetensors``)."""
    from safetensors.torch import load_file

    from .grid_videos import train_tasks, vae_video

    if path.is_file():
        return load_file(str(path))
    t0 = time.time()
    frames = reasoner.defaults.num_frames
    tasks = [t for t in train_tasks(args.train_tasks, seed=0) if t.num_frames == frames]
    if not tasks:
        raise UserError(f"no train task has the reasoner's {frames} frames; use a grid reasoner")
    rng = np.random.default_rng([args.seed, 1])
    gen = torch.Generator().manual_seed(args.seed)
    parts, source = [], []
    for i in range(0, args.videos, 16):
        z = encode_videos(reasoner, [vae_video(tasks, rng)[0] for _ in range(min(16, args.videos - i))])
        parts.append(z)
    source += [0] * args.videos
    picks = [tasks[int(k)] for k in rng.integers(len(tasks), size=args.reasoner_videos)]
    seeds = [int(s) for s in rng.integers(1 << 20, size=args.reasoner_videos)]
    if picks:
        parts.append(reasoner_latents(reasoner, picks, seeds, lora=None, generator=None))
        source += [1] * len(picks)
        for _ in range(args.lora_variants):
            parts.append(reasoner_latents(reasoner, picks, seeds, lora=args.lora_scale, generator=gen))
            source += [2] * len(picks)
    latents = torch.cat(parts)
    data = {"latents": latents, "targets": vae_frames(reasoner, latents), "source": torch.tensor(source)}
    save_safetensors(data, path)
    log.write(stage="data", event="built", samples=len(source), seconds=round(time.time() - t0, 1),
              **{s: source.count(i) for i, s in enumerate(SOURCES)})
    return data


# ---------------------------------------------------------------------------- training
def cell_colours(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) -> (B, 3, F, n, 2n): the mean colour of each cell's centre and border ring
    side by side, the pixels whose median colours the grid verifier reads (``suites.grid.verify``)."""
    from ..suites.grid.render import CELL
    from ..suites.grid.verify import _masks

    b, c, f, h, w = frames.shape
    cells = frames.reshape(b, c, f, h // CELL, CELL, w // CELL, CELL)
    means = [torch.einsum("bcfiyjx,yx->bcfij", cells, m) / m.sum()
             for m in (torch.from_numpy(m.astype(np.float32)).to(frames) for m in _masks())]
    return torch.cat(means, dim=-1)


def distil_loss(decoder, latents: torch.Tensor, targets: torch.Tensor, object_weight: float,
                cell_weight: float) -> torch.Tensor:
    """Weighted squared + absolute error (in [-1, 1]) of the surrogate's frames to the VAE's, plus
    ``cell_weight`` x the weighted absolute error of the cells' centre and ring colours (what the
    verifier reads), on the unclamped output (measured: with the clamp, pixels that start out of
    range never learn)."""
    from .grid_reasoner import salience_weights

    pred = decoder.decode(latents, clamp=False).transpose(1, 2) * 2 - 1  # (B, 3, F, H, W)
    target = targets.transpose(1, 2).float() / 127.5 - 1
    w = salience_weights(target, object_weight)
    loss = (torch.sum(w * (pred - target) ** 2) + torch.sum(w * torch.abs(pred - target))) / w.sum()
    if cell_weight:
        pc, tc = cell_colours(pred), cell_colours(target)
        wc = salience_weights(tc, object_weight)
        loss = loss + cell_weight * torch.sum(wc * torch.abs(pc - tc)) / (wc.sum() * 3)
    return loss


def train(decoder, data: dict[str, torch.Tensor], args, ckpt: ModuleCheckpoint, log: JsonlLog, device, *,
          stage: str, steps: int, lr: float, budget_s: float, next_stage: str) -> dict | None:
    """One distillation stage from the checkpoint's state (a fresh AdamW at a stage's start); the
    state after it, or None when --stop-after cut it (checkpoint written)."""
    from tqdm.auto import tqdm

    decoder.to(device).train().requires_grad_(True)
    params = list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    state = ckpt.load(decoder, opt) if ckpt.exists() else {"stage": stage, "step": 0}
    if state["stage"] != stage:
        return state
    step = int(state["step"])
    plan = StepPlan(steps, budget_s, state.get("planned"), calibration=CALIBRATION_STEPS, replan_every=REPLAN_EVERY)
    n, warmup = data["latents"].shape[0], min(50, steps // 10 + 1)
    keep = {k: v for k, v in state.items() if k.startswith("train_")}  # the first stage's summary
    elapsed0, t0, done_here, reason = float(state.get("elapsed", 0.0)), time.time(), 0, "steps"
    elapsed = lambda: elapsed0 + time.time() - t0  # noqa: E731
    snapshot = lambda: {**keep, "stage": stage, "step": step, "planned": plan.planned,  # noqa: E731
                        "elapsed": elapsed()}
    bar = tqdm(total=plan.total, initial=step, desc=f"surrogate {stage}", unit="step", dynamic_ncols=True)
    while step < plan.total:
        if elapsed() > 1.15 * plan.budget_s:
            reason = "time"
            break
        if args.stop_after is not None and done_here >= args.stop_after:
            ckpt.save(decoder, opt, snapshot())
            bar.close()
            return None
        rate = warmup_cosine(step, (step - warmup) / max(1, plan.total - warmup), lr, warmup, floor=0.05)
        for g in opt.param_groups:
            g["lr"] = rate
        idx = torch.from_numpy(np.random.default_rng([args.seed, 2 + STAGES.index(stage), step]).integers(
            n, size=args.batch))
        loss = distil_loss(decoder, data["latents"][idx].to(device), data["targets"][idx].to(device),
                           args.object_weight, args.cell_weight)
        gnorm = apply_update(loss, opt, params)
        step += 1
        done_here += 1
        bar.update(1)
        log.write(stage=stage, step=step, loss=loss.item(), grad_norm=float(gnorm), lr=rate)
        if plan.update(step, elapsed()):
            bar.total = plan.planned
            log.write(stage=stage, event="plan", step=step, planned=plan.planned,
                      seconds_per_step=round(elapsed() / step, 3))
        if step % args.checkpoint_every == 0 and step < plan.total:
            ckpt.save(decoder, opt, snapshot())
    bar.close()
    if plan.cut_by_time(step):
        reason = "time"
    final = {**keep, "stage": next_stage, "step": 0, f"{stage}_steps": step, f"{stage}_stop": reason,
             f"{stage}_seconds": elapsed()}
    log.write(stage=stage, event="end", step=step, reason=reason, seconds=round(elapsed(), 1))
    ckpt.save(decoder, None, final)
    return final


class PreviewRecorder:
    """Keeps every latent the reasoner's preview is asked to decode (normalised, on the CPU)."""

    def __init__(self, reasoner) -> None:
        self.reasoner, self.latents = reasoner, []

    def __enter__(self) -> "PreviewRecorder":
        original = type(self.reasoner).preview

        def preview(latent, frame_indices):
            self.latents.append(latent.detach().float().cpu().clone())
            return original(self.reasoner, latent, frame_indices)

        self.reasoner.preview = preview
        return self

    def __exit__(self, *exc) -> None:
        del self.reasoner.preview


def optimised_latents(reasoner, decoder, folder: Path, tasks, seeds: list[int], steps: int,
                      every: int) -> torch.Tensor:
    """Raw latents the test-time loop visits when the grid oracle (``suites.grid.oracle``, the loss
    whose optimum is the ground truth) drives it through ``decoder`` as the preview: every
    ``every``-th of ``steps`` previews per task. Measured: latents optimised through a surrogate
    trained on the other sources alone decode right through it and wrong through the VAE."""
    import copy
    from dataclasses import replace

    from ..optimize import teach, tto_config
    from ..reasoner.base import uniform_frame_indices
    from ..suites.grid.oracle import OracleTeacher

    mean, std = latent_stats(reasoner)
    reasoner.use_preview_decoder(copy.deepcopy(decoder))
    cfg = replace(tto_config({}, folder), fixed_steps=steps)
    out = []
    for task, seed in zip(tasks, seeds):
        t = task.to_task()
        cond = reasoner.prepare(t.prompt, t.first_frame, seed, **task.video_shape())
        idx = uniform_frame_indices(cond.num_frames, cfg.num_frames_shown)
        with torch.no_grad():
            frozen = reasoner.preview(reasoner.predict_x0(cond), idx)
        oracle = OracleTeacher(task, idx, device=frozen.device).calibrated(frozen)
        with PreviewRecorder(reasoner) as rec:
            teach(reasoner, oracle, t, cfg, seed=seed, queries=oracle.propose_queries(t.prompt, None),
                  progress=False, **task.video_shape())
        reasoner.remove_lora()
        out += [z * std + mean for z in rec.latents[every - 1::every]]
    reasoner.preview_decoder = None
    return torch.cat(out)


def oracle_data(reasoner, decoder, folder: Path, args, log: JsonlLog, path: Path) -> dict[str, torch.Tensor]:
    """The second round's latents (``optimised_latents`` on train tasks) and their VAE decodes, cached."""
    from safetensors.torch import load_file

    from .grid_videos import train_tasks

    if path.is_file():
        return load_file(str(path))
    t0 = time.time()
    tasks = [t for t in train_tasks(args.train_tasks, seed=0) if t.num_frames == reasoner.defaults.num_frames]
    rng = np.random.default_rng([args.seed, 3])
    picks = [tasks[int(k)] for k in rng.integers(len(tasks), size=args.oracle_tasks)]
    seeds = [int(s) for s in rng.integers(1 << 20, size=args.oracle_tasks)]
    latents = optimised_latents(reasoner, decoder, folder, picks, seeds, args.oracle_steps, args.oracle_every)
    data = {"latents": latents, "targets": vae_frames(reasoner, latents),
            "source": torch.full((latents.shape[0],), SOURCES.index("oracle_tto"))}
    save_safetensors(data, path)
    log.write(stage="oracle_data", event="built", samples=latents.shape[0], seconds=round(time.time() - t0, 1))
    return data


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def surrogate_frames(decoder, latents: torch.Tensor, device) -> torch.Tensor:
    """Raw latents -> the surrogate's frames as uint8 (N, F, 3, H, W)."""
    out = [(decoder.decode(latents[i:i + 1].to(device)).cpu() * 255 + 0.5).to(torch.uint8)
           for i in range(latents.shape[0])]
    return torch.cat(out)


def compare(task, vae_video: torch.Tensor, surrogate_video: torch.Tensor) -> dict[str, Any]:
    """The verifier on both decodes of one latent (uint8 (F, 3, H, W) each) and their PSNR."""
    from ..suites.grid import verify

    a, b = verify(task, vae_video.permute(0, 2, 3, 1).numpy()), verify(task, surrogate_video.permute(0, 2, 3, 1).numpy())
    mse = float(((vae_video.float() - surrogate_video.float()) / 255).pow(2).mean())
    return {"task": task.id, "vae_passed": bool(a.passed), "surrogate_passed": bool(b.passed),
            "vae_score": float(a.score), "surrogate_score": float(b.score),
            "psnr_db": float(10 * np.log10(1 / max(mse, 1e-10)))}


def held_out_latents(reasoner, split: str, per_family: int, seed: int, lora_scale: float) -> list[tuple[str, Any, torch.Tensor]]:
    """(source, task, raw latent (1, C, T, h, w)) of a held-out split: each task's ground truth
    encoded, the frozen first-step prediction (seed 0) and one under a random LoRA."""
    from ..suites.grid import grid_tasks

    gen = torch.Generator().manual_seed(10_000 + seed)
    out = []
    for task in grid_tasks(split, n=per_family):
        out.append(("ground_truth", task, encode_videos(reasoner, [task.video()])))
        out.append(("reasoner", task, reasoner_latents(reasoner, [task], [0], lora=None, generator=None)))
        out.append(("reasoner_lora", task, reasoner_latents(reasoner, [task], [1], lora=lora_scale, generator=gen)))
    return out


def agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Verdict agreement and the other summaries of ``compare`` rows."""
    if not rows:
        return {"n": 0}
    agree = [r["vae_passed"] == r["surrogate_passed"] for r in rows]
    passing = [a for a, r in zip(agree, rows) if r["vae_passed"]]
    return {"n": len(rows), "agreement": float(np.mean(agree)),
            "vae_pass_rate": float(np.mean([r["vae_passed"] for r in rows])),
            "surrogate_pass_rate": float(np.mean([r["surrogate_passed"] for r in rows])),
            "agreement_where_vae_passes": float(np.mean(passing)) if passing else None,
            "mean_abs_score_diff": float(np.mean([abs(r["vae_score"] - r["surrogate_score"]) for r in rows])),
            "psnr_db": float(np.mean([r["psnr_db"] for r in rows]))}


def evaluate(reasoner, decoder, per_family: int, seed: int, lora_scale: float, device) -> dict[str, Any]:
    """Both decoders on the held-out latents of grid:test and grid:ood, judged by the verifier."""
    result: dict[str, Any] = {"tasks_per_family": per_family}
    for split in ("test", "ood"):
        rows = []
        for source, task, z in held_out_latents(reasoner, split, per_family, seed, lora_scale):
            rows.append({"source": source, **compare(task, vae_frames(reasoner, z)[0],
                                                     surrogate_frames(decoder, z, device)[0])})
        result[split] = {"all": agreement(rows), **{s: agreement([r for r in rows if r["source"] == s])
                                                    for s in ("ground_truth", "reasoner", "reasoner_lora")},
                         "per_latent": rows}
    return result


# ---------------------------------------------------------------------------- card
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def model_card(metrics: dict[str, Any]) -> str:
    """MODEL_CARD.md text, every figure read from ``metrics`` (written by this recipe)."""
    tr, src, size, ev = metrics["training"], metrics["source"], metrics["size"], metrics.get("evaluation")
    lines = [
        "# Surrogate preview decoder for the grid reasoner",
        "",
        f"A `TinyWanDecoder` (`vlm_teacher.reasoner.surrogate`) distilled from the VAE decoder of "
        f"`{src['reasoner']}` by `vlm-teacher train surrogate`: the same raw latent in, RGB frames in [0, 1] out, "
        "differentiable. It stands in for the full VAE in the teacher's preview only; the final video is "
        "always decoded by the VAE. Load it with "
        f"`reasoner.load_preview_decoder(\"<this folder>/{FILE_NAME}\")`.",
        "",
        "All figures below were written by the recipe into `metrics.json` (this card is generated from it).",
        "",
        "## Distilled from",
        f"- reasoner folder: `{src['reasoner']}` ({src['reasoner_id']})",
        f"- VAE identity (sha256 of vae/ config and weights, first 16 hex digits): `{src['vae_id']}`; "
        "a surrogate only fits the VAE it was distilled from: after retraining the VAE, run the command again",
        f"- VAE: {src['vae_params'] / 1e6:.2f} M parameters ({src['vae_decoder_params'] / 1e6:.2f} M in its "
        f"decoder), {src['scale_spatial']}x spatial, {src['scale_temporal']}x temporal",
        "",
        "## Training run",
        f"- command: `{tr['command']}`",
        *(["- invocations (the run was resumed): " + "; ".join(f"`{c}`" for c in tr["invocations"])]
          if len(tr.get("invocations", [])) > 1 else []),
        f"- machine: {tr['machine']}; torch {tr['torch']}",
        f"- data: {tr['samples']} latents with their full VAE decodes ("
        + ", ".join(f"{tr['by_source'][s]} {s}" for s in SOURCES) + "): `videos` are grid videos of the train "
        "split encoded by the VAE (ground truth, counterfactual goals, corruptions, random walks), `reasoner` "
        "the frozen reasoner's first-step predictions, `reasoner_lora` the same under random LoRAs "
        f"(lora_B std up to {tr['lora_scale']}), `oracle_tto` the latents the test-time loop previewed when the "
        f"grid oracle drove it through the first-round surrogate ({tr['oracle_tasks']} train tasks, "
        f"{tr['oracle_steps']} steps each)",
        *([f"- started from `{tr['init_from']['file']}` (distilled from VAE `{tr['init_from']['vae_id']}` of "
           f"{tr['init_from']['reasoner']}), not from a random init"] if tr.get("init_from") else []),
        f"- first round: {tr['train_steps']} steps of batch {tr['batch']} (stopped by: {tr['train_stop']}), "
        f"{tr['train_seconds'] / 60:.1f} min"
        + (f"; second round on all the data: {tr['tune_steps']} steps (stopped by: {tr['tune_stop']}), "
           f"{tr['tune_seconds'] / 60:.1f} min" if "tune_steps" in tr else ""),
        f"- the last invocation took {tr['invocation_minutes']:.1f} min in all "
        f"({tr['invocation_cpu_minutes']:.1f} min of CPU time)",
        "",
        "## Size",
        f"- widths {size['widths']}, time factors {size['time_upscale']}, patch {size['patch']}: "
        f"{size['params'] / 1e6:.3f} M parameters, file {size['file_mb']:.2f} MB",
    ]
    if ev:
        lines += [
            "",
            f"## Verdict agreement (held out: {ev['tasks_per_family']} tasks per family per split)",
            "",
            "Each latent is decoded by the VAE and by the surrogate and the grid verifier judges both. "
            "Sources: `ground_truth` = the task's true video encoded by the VAE; `reasoner` = the frozen "
            "reasoner's first-step prediction (seed 0); `reasoner_lora` = the same under a random LoRA.",
            "",
            "| split | source | latents | agreement | VAE pass | surrogate pass | agreement where VAE passes | "
            "mean abs score diff | PSNR vs VAE |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for split in ("test", "ood"):
            for source in ("all", "ground_truth", "reasoner", "reasoner_lora"):
                a = ev[split][source]
                if not a.get("n"):
                    continue
                lines.append(f"| {split} | {source} | {a['n']} | {_pct(a['agreement'])} | {_pct(a['vae_pass_rate'])} | "
                             f"{_pct(a['surrogate_pass_rate'])} | {_pct(a['agreement_where_vae_passes'])} | "
                             f"{a['mean_abs_score_diff']:.3f} | {a['psnr_db']:.1f} dB |")
        lines += ["", "ood = the out-of-domain split (a goal colour never named in training, the longest "
                  "solutions, more walls, new layouts); the recipe's data are train-split videos only."]
    lines += ["", "Speed against the full VAE: `benchmarks/grid_surrogate.py` (results in "
              "`benchmarks/results/grid_surrogate.md`)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- run
def _command(args) -> str:
    """The command line that reproduces this run (--export last, as the recipes write it)."""
    export = [] if args.export is None else ["--export", str(args.export)]
    return " ".join([command_record("vlm-teacher train surrogate", args, add_arguments, {"out": str(args.out)},
                                    leave_out=("resume", "stop_after", "export")), *export])


def _start(args, ckpt: ModuleCheckpoint) -> None:
    """Refuse a fresh run over an old one and a resume with other model-shaping settings."""
    config_path = args.out / "config.json"
    if not args.resume:
        if ckpt.exists() or (args.out / "log.jsonl").exists():
            raise UserError(f"{args.out} already holds a run; pass --resume to continue it or choose another --out")
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(config_path, config_record(args))
        return
    if not config_path.is_file():
        raise UserError(f"--resume: no run in {args.out}; run without --resume first")
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    changed = changed_settings(saved, config_record(args), ARCH_KEYS)
    if changed:
        raise UserError(f"--resume with different settings than the run in {args.out}: {', '.join(changed)}; "
                        "use the original arguments or another --out")


def run(args) -> int:
    """The whole recipe, on ``--threads`` torch threads (the caller's count is restored: tests run it)."""
    _check_args(args)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        code = _run(args)
    finally:
        torch.set_num_threads(before)
    return code


def _run(args) -> int:
    from ..identity import model_id
    from ..reasoner import load_reasoner

    t_start, cpu_start = time.time(), time.process_time()
    device = torch.device(args.device)
    folder = reasoner_folder(args.reasoner)
    reasoner = load_reasoner(folder, device=device, dtype=torch.float32)
    decoder = build_surrogate(reasoner, parse_widths(args.widths), args.seed)
    if args.init_from is not None:
        from ..reasoner.surrogate import TinyWanDecoder

        start = TinyWanDecoder.from_file(args.init_from)
        if start.widths != decoder.widths or start.temporal_scale != decoder.temporal_scale:
            raise UserError(f"--init-from {args.init_from}: widths {start.widths}, time {start.temporal_scale}x; this "
                            f"run builds {decoder.widths}, {decoder.temporal_scale}x (pass --widths to match)")
        decoder.load_state_dict(start.state_dict())
    ckpt = ModuleCheckpoint(args.out / "checkpoint" / "surrogate.safetensors")
    with WorkLock(args.out, "`vlm-teacher train surrogate`"):
        _start(args, ckpt)
        log = JsonlLog(args.out / "log.jsonl")
        if args.resume and ckpt.exists():
            saved = ckpt.state()
            log.keep_until(int(saved["step"]), saved["stage"])  # drop what was logged after the checkpoint
        log.write(event="start", resume=bool(args.resume), command=_command(args) + (" --resume" if args.resume else ""))
        data = build_data(reasoner, args, log, args.out / "cache" / "data.safetensors")
        state = train(decoder, data, args, ckpt, log, device, stage="train", steps=args.steps, lr=args.lr,
                      budget_s=args.minutes * 60, next_stage="tune" if args.oracle_tasks else "done")
        if state is not None and state["stage"] in ("tune", "done") and args.oracle_tasks:
            if state["stage"] == "tune":
                ckpt.load(decoder, None)  # the first round's surrogate drives the loop
            extra = oracle_data(reasoner, decoder, folder, args, log, args.out / "cache" / "oracle.safetensors")
            data = {k: torch.cat([data[k], extra[k]]) for k in data}
            state = train(decoder, data, args, ckpt, log, device, stage="tune", steps=args.tune_steps, lr=args.lr / 2,
                          budget_s=args.tune_minutes * 60, next_stage="done")
        if state is None:
            print(f"stopped in training; continue with --resume (checkpoint in {ckpt.path.parent})")
            return 0
        ckpt.load(decoder, None)  # the trained weights, also when a finished run is resumed
        decoder.to(device).eval().requires_grad_(False)
        model_dir = args.out / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        vae_id = vae_identity(folder)
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()},
                         model_dir / FILE_NAME, metadata={"format": "vlm_teacher_tiny_wan_decoder", "vae_id": vae_id,
                                                          "reasoner": model_id(folder)})
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        source = data["source"].tolist()
        metrics: dict[str, Any] = {
            "source": {"reasoner": (str(folder) if args.reasoner is not None
                                    else "src/vlm_teacher/embedded/grid-wan (the embedded reasoner)"), "reasoner_id": model_id(folder), "vae_id": vae_id,
                       "vae_params": count(reasoner.vae), "vae_decoder_params": count(reasoner.vae.decoder),
                       "scale_spatial": reasoner.scale_spatial, "scale_temporal": reasoner.scale_temporal},
            "training": {
                "command": _command(args),
                "invocations": [r["command"] for r in log.records() if r.get("event") == "start" and r.get("command")],
                "machine": machine_line(args.device), "torch": torch.__version__, "seed": args.seed,
                "samples": len(source), "by_source": {s: source.count(i) for i, s in enumerate(SOURCES)},
                "lora_scale": args.lora_scale, "batch": args.batch,
                **{k: v for k, v in state.items() if k.startswith(("train_", "tune_"))},
                "oracle_tasks": args.oracle_tasks, "oracle_steps": args.oracle_steps,
                "init_from": None if args.init_from is None else {"file": str(args.init_from),
                                                                   **_file_record(args.init_from)},
            },
            "size": {"widths": list(decoder.widths), "time_upscale": list(decoder.time_upscale), "patch": decoder.patch,
                     "params": count(decoder), "file_mb": (model_dir / FILE_NAME).stat().st_size / 1e6},
        }
        if args.eval_tasks > 0:
            metrics["evaluation"] = evaluate(reasoner, decoder, args.eval_tasks, args.seed, args.lora_scale, device)
            log.write(event="evaluation", **{s: metrics["evaluation"][s]["all"] for s in ("test", "ood")})
        metrics["training"]["invocation_minutes"] = (time.time() - t_start) / 60
        metrics["training"]["invocation_cpu_minutes"] = (time.process_time() - cpu_start) / 60
        write_json(model_dir / METRICS_NAME, metrics)
        write_text(model_dir / "MODEL_CARD.md", model_card(metrics))
        if args.export is not None:
            export_folder(model_dir, Path(args.export))
        if args.eval_tasks > 0:
            ev = metrics["evaluation"]
            print(f"verdict agreement with the VAE: test {ev['test']['all']['agreement']:.2f}, "
                  f"ood {ev['ood']['all']['agreement']:.2f}")
        print(f"surrogate: {model_dir / FILE_NAME} ({metrics['size']['params'] / 1e6:.3f} M parameters)")
        return 0
