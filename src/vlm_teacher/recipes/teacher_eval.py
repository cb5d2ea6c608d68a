"""Evaluation of a trained grid teacher and its model card.

Everything is measured on the SAVED folder, loaded with ``load_teacher`` (the path
every user takes), on held-out tasks (``test`` and ``ood`` splits; training uses
``train`` only):

- accuracy per question type on rendered videos: clean ground truth (asked about
  the task and its counterfactual goals) and every corruption;
- the same on the reasoner's videos: final 4-step videos and first-step previews,
  each answer being the verifier's verdict of the final video;
- calibration on the reasoner's videos: expected calibration error and a
  10-bin reliability table of P("Yes") against the verifier's answers;
- reward hacking on the reasoner's videos: how often P("Yes") > 0.5 while the
  verifier says No (per question, and per video: every question answered Yes
  although the video fails);
- query writing: how often ``propose_queries`` parses, names the task's goal
  colour and family, and matches the intended questions exactly.

``write_model_card`` renders MODEL_CARD.md from that JSON only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..files import write_text
from ..suites.grid import CORRUPTIONS, TARGET_COLOURS, corrupt, grid_tasks, verify
from ..suites.grid.questions import QUESTION_TYPES, grid_queries, question_type
from .teacher_data import Example, goal_variants, labelled

BINS = 10


def _p_yes(teacher, examples: Iterable[Example]) -> list[tuple[Example, dict[str, float]]]:
    from tqdm.auto import tqdm

    from ..video import to_float

    out = []
    for ex in tqdm(list(examples), desc="evaluate", unit="video", leave=False):
        qs = ex.questions
        kinds = list(qs)
        p = teacher.yes_prob_no_grad(to_float(ex.video), [qs[k] for k in kinds]).float().cpu().tolist()
        out.append((ex, dict(zip(kinds, p))))
    return out


def accuracy(scored) -> dict[str, Any]:
    """Accuracy (P(Yes) > 0.5 vs the verifier) per question type, with counts of each answer."""
    out: dict[str, Any] = {}
    for kind in QUESTION_TYPES:
        pairs = [(p[kind], ex.labels[kind]) for ex, p in scored if kind in p]
        if not pairs:
            continue
        right = [(pp > 0.5) == y for pp, y in pairs]
        yes = [r for (pp, y), r in zip(pairs, right) if y]
        no = [r for (pp, y), r in zip(pairs, right) if not y]
        out[kind] = {"accuracy": round(float(np.mean(right)), 3), "n": len(pairs),
                     "n_yes": len(yes), "n_no": len(no),
                     "acc_yes": round(float(np.mean(yes)), 3) if yes else None,
                     "acc_no": round(float(np.mean(no)), 3) if no else None}
    allp = [((p[k] > 0.5) == ex.labels[k]) for ex, p in scored for k in p]
    out["all"] = {"accuracy": round(float(np.mean(allp)), 3) if allp else None, "n": len(allp)}
    return out


def calibration(scored) -> dict[str, Any]:
    probs = np.array([p[k] for ex, p in scored for k in p])
    labels = np.array([ex.labels[k] for ex, p in scored for k in p], dtype=float)
    if not len(probs):
        return {"ece": None, "bins": []}
    edges = np.linspace(0, 1, BINS + 1)
    which = np.clip(np.digitize(probs, edges) - 1, 0, BINS - 1)
    bins, ece = [], 0.0
    for b in range(BINS):
        m = which == b
        if not m.any():
            continue
        conf, freq = float(probs[m].mean()), float(labels[m].mean())
        ece += m.sum() / len(probs) * abs(conf - freq)
        bins.append({"range": [round(edges[b], 1), round(edges[b + 1], 1)], "n": int(m.sum()),
                     "mean_p_yes": round(conf, 3), "frac_yes": round(freq, 3)})
    brier = float(np.mean((probs - labels) ** 2))
    return {"ece": round(float(ece), 3), "brier": round(brier, 3), "n": int(len(probs)), "bins": bins}


def hacking(scored) -> dict[str, Any]:
    """P(Yes) > 0.5 while the verifier says No: per question and per failing video."""
    no = [(p[k] > 0.5) for ex, p in scored for k in p if not ex.labels[k]]
    failing = [ex_p for ex_p in scored if not all(ex_p[0].labels.values())]
    fooled = [all(v > 0.5 for v in p.values()) for ex, p in failing]
    return {"question_rate": round(float(np.mean(no)), 3) if no else None, "questions_no": len(no),
            "video_rate": round(float(np.mean(fooled)), 3) if fooled else None, "videos_failing": len(failing)}


def render_examples(split: str, n: int) -> dict[str, list[Example]]:
    """Clean ground truth (asked about every target colour) and each corruption of it."""
    rng = np.random.default_rng([11, len(split)])
    clean, corrupted = [], []
    for task in grid_tasks(split, n):
        video = task.video()
        clean += [labelled(ask, video, "gt") for ask in goal_variants(task, TARGET_COLOURS)]
        for kind in CORRUPTIONS[task.family]:
            try:
                corrupted.append(labelled(task, corrupt(task, video, kind, rng), f"corrupt:{kind}"))
            except ValueError:
                pass
    return {"clean": clean, "corrupted": corrupted}


def query_figures(teacher, split: str, n: int) -> dict[str, Any]:
    from tqdm.auto import tqdm

    rows = []
    for task in tqdm(grid_tasks(split, n), desc=f"queries ({split})", unit="task", leave=False):
        q = teacher.propose_queries(task.prompt, task.first_frame())
        want = grid_queries(task)
        parsed = q.source == "teacher"
        goal_ok = parsed and question_type(task.family, q.goal) == "goal" and f" {task.goal_colour} " in q.goal
        rows.append({"parsed": parsed, "goal_right": goal_ok,
                     "exact": parsed and q.goal == want.goal and q.process == want.process})
    return {k: round(float(np.mean([r[k] for r in rows])), 3) for k in ("parsed", "goal_right", "exact")} | {"n": len(rows)}


@dataclass(frozen=True)
class EvalSettings:
    """What ``evaluate`` reads: tasks per family for rendered videos and for query writing, torch threads."""
    eval_tasks: int
    eval_queries: int
    threads: int = 2


def evaluate(folder: Path, reasoner_samples, ev: EvalSettings) -> dict[str, Any]:
    import torch

    from ..teacher import load_teacher

    torch.set_num_threads(max(1, ev.threads))
    teacher = load_teacher(folder)
    figures: dict[str, Any] = {"renders": {}, "reasoner": {}, "queries": {}}
    for split in ("test", "ood"):
        for group, examples in render_examples(split, ev.eval_tasks).items():
            figures["renders"][f"{split}/{group}"] = accuracy(_p_yes(teacher, examples))
        samples = [s for s in reasoner_samples if s.task.split == split]
        if samples:
            exs = [ex for s in samples for ex in s.examples()]
            scored = _p_yes(teacher, exs)
            entry = {src: accuracy([(e, p) for e, p in scored if e.source == src])
                     for src in ("reasoner_preview", "reasoner_final")}
            entry["videos"] = len(samples)
            entry["passed"] = sum(1 for s in samples if verify(s.task, s.final).passed)
            entry["calibration"] = calibration(scored)
            entry["hacking"] = hacking(scored)
            figures["reasoner"][split] = entry
        figures["queries"][split] = query_figures(teacher, split, ev.eval_queries)
    return figures


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _acc_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    kinds = [k for k in QUESTION_TYPES if any(k in r for r in rows.values())]
    lines = ["| videos | " + " | ".join(kinds) + " | all |", "|---" * (len(kinds) + 2) + "|"]
    for name, r in rows.items():
        cells = [f"{_pct(r[k]['accuracy'])} (n={r[k]['n']}: {r[k]['n_yes']} yes / {r[k]['n_no']} no)"
                 if k in r else "-" for k in kinds]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_pct(r['all']['accuracy'])} |")
    return lines


def alignment_section(al: dict[str, Any] | None) -> list[str]:
    """The card's figures on the test-time loop's own previews (``benchmarks/teacher_alignment.py --card``)."""
    if not al:
        return []
    rates = "; ".join(f"{k} {_pct(v)} ({al['false_yes'][k]})" for k, v in al["false_yes_rate"].items())
    return ["", f"### On the test-time loop's own previews ({al['tasks']} grid:test tasks, lr {al['lr']:g})", "",
            f"Command: `{al['command']}` (reasoner `{al['reasoner']}`). Judged by the pixel verifier.", "",
            f"- False Yes (P(Yes) > 0.5 where the verifier says No) on the previews the loop visited: {rates}.",
            f"- Gradient of its loss at the frozen preview, pulled back to the LoRA parameters: cosine with the "
            f"gradient of the MSE to the ground truth {al['cosine_mean']:+.3f} on average, positive on "
            f"{al['cosine_positive']} of {al['tasks']} tasks.",
            f"- Its loss along the line frozen preview -> ground truth falls all the way on {al['line_monotone']} "
            f"of {al['tasks']} tasks; mean " + ", ".join(f"{x:.2f}" for x in al["line_mean"]) + ".",
            f"- Reward hacking: {al['early_stops_failing']} of {al['early_stops']} early stops (loss <= tau) on a "
            f"video the verifier fails; the loop's final video passes on {al['tto_pass']} of {al['tasks']} "
            f"(frozen {al['frozen_pass']})."]


def write_model_card(folder: Path, figures: dict[str, Any], fallback_command: str) -> Path:
    """MODEL_CARD.md, every figure read from ``figures`` (the eval.json of this run); ``fallback_command``
    (with its reasoner option added) stands for a training record that has no command."""
    from ..suites.grid.questions import PROCESS_TYPES, goal_question, process_question

    tr = figures["training"]
    cmd = tr.get("command") or (fallback_command + (f" --reasoner {tr['reasoner']}" if tr["reasoner"]
                                                    else " --no-reasoner"))
    L = ["# grid-qwen: the embedded teacher", "",
         "A small Qwen3-VL (transformers `Qwen3VLForConditionalGeneration`, built from config, patch 16 = one "
         f"grid cell) trained {'in several runs' if tr.get('init_from') else 'from scratch'} by "
         "`vlm_teacher.recipes.grid_teacher` on the built-in grid suite. "
         "It writes the yes/no questions of a grid task and answers them about videos; the test-time loop "
         "differentiates its log P(\"Yes\") through the reasoner's preview frames. It knows nothing outside the "
         "grid suite.", "",
         "## How it was made", "",
         f"Command: `{cmd}` (2-core CPU machine shared with other jobs, torch {__import__('torch').__version__}).",
         *([f"It continued from the weights in `{tr['init_from']}`, made by (earliest first; each run "
            "continued from the one before, with `--init-from`):", "",
            *[f"{i}. `{r['command'] or r.get('note', 'unknown command')}`"
              + (f" ({r['steps']} steps, {r['train_seconds']} s of training, reasoner {r['reasoner'] or 'none'})"
                 if r.get("steps") is not None else "")
              for i, r in enumerate(reversed(tr.get("lineage", [])), 1)], ""]
           if tr.get("init_from") else []),
         f"Steps: {tr['steps']} ({tr['train_seconds']} s of training, {tr['wall_seconds']} s in all). "
         f"Weights: {tr['weights_mb']} MB (safetensors, float32). "
         f"Reasoner: {tr['reasoner'] or 'none'} ({tr['reasoner_train_videos']} training videos, "
         f"{tr['reasoner_eval_videos']} held-out evaluation videos).",
         *([f"The figures on reasoner videos come from `{tr['eval_command']}` (reasoner `{tr['eval_reasoner']}`)."]
           if tr.get("eval_command") else []), "",
         "Training data: train-split tasks only; answers come only from the pixel verifier applied to the video "
         "(for a preview, to the final video made from the same noise). Videos: ground truth asked about its own "
         "and counterfactual goal colours (red, green, yellow: magenta goals stay out-of-domain), every corruption "
         "of `suites/grid/corrupt.py`, degraded versions (blur, temporal smear, ghosting, noise; verified after "
         "degrading) and, with a reasoner, its final videos and first-step previews. Loss: cross-entropy on the "
         "Yes/No token, weighted so Yes and No count equally per question type, plus cross-entropy on the JSON "
         "of the query-writing answer. Each video is also asked the goal question for every other in-domain "
         "target colour of its first frame (`grid_teacher.goal_contrast`): Yes and No answers on the same video "
         "tokens, the signal that got a from-scratch model off the Yes/No prior. A training-only linear probe "
         "(discarded) predicts each cell's colour classes from the vision tokens, read from the pixels by the "
         "verifier's reader; digit-answer where-questions (`--where-loss`) exist but are off by default."
         + (f" A share {tr['blend_share']:g} of the videos are blends (`teacher_data.blend_example`): a failing "
            "video moved a random fraction of the way to its ground truth, labelled by the verifier of the blend."
            if tr.get("blend_share") else "")
         + (f" Gradient alignment (`grid_teacher.align_loss`, weight {tr['align_loss']:g}): on failing videos, "
            "1 - cosine of the input gradient of the test-time loss with the direction to the ground truth, "
            "trained by double backpropagation." if tr.get("align_loss") else "")
         + (f" Latent attacks (`teacher_data.attack_example`, {tr['attack']['batch']} per step): a train "
            f"task's first-step reasoner latent moved up to {tr['attack']['steps']} normalised gradient steps "
            f"(RMS up to {tr['attack']['step_size']:g}) down the teacher's own test-time loss as it is at "
            "that step, decoded and labelled by the verifier." if tr.get("attack") else "")
         + (f" Test-time-loop videos: {tr['tto_train_videos']} runs of the loop against the previous teacher "
            f"at lr {tr['tto_lr']:g}, labelled by the verifier." if tr.get("tto_train_videos") else ""), "",
         "## The questions it writes and answers", ""]
    for fam, kinds in PROCESS_TYPES.items():
        L.append(f"- {fam}: goal \"{goal_question(fam, '<colour>')}\"; process " +
                 "; ".join(f"{k}: \"{process_question(fam, k)}\"" for k in kinds))
    L += ["", "Together the questions cover every rule of the verifier: Yes to all of them holds exactly when "
          "the verifier passes the video.", "",
          "## Figures (held-out test and ood tasks; from eval.json of the run above)", "",
          "Accuracy = P(Yes) > 0.5 agrees with the verifier.", "", "### Rendered videos", ""]
    L += _acc_table(figures["renders"])
    for split, r in figures["reasoner"].items():
        L += ["", f"### Reasoner videos, {split} split ({r['videos']} videos, {r['passed']} pass the verifier)", ""]
        L += _acc_table({"first-step previews": r["reasoner_preview"], "final videos": r["reasoner_final"]})
        c, h = r["calibration"], r["hacking"]
        L += ["", f"Calibration over all its answers (n={c['n']}): ECE {c['ece']}, Brier {c['brier']}.", "",
              "| P(Yes) bin | n | mean P(Yes) | fraction verifier-Yes |", "|---|---|---|---|"]
        L += [f"| {b['range'][0]}-{b['range'][1]} | {b['n']} | {b['mean_p_yes']} | {b['frac_yes']} |" for b in c["bins"]]
        L += ["", f"Reward hacking: P(Yes) > 0.5 on {_pct(h['question_rate'])} of the {h['questions_no']} questions "
              f"the verifier answers No; every question above 0.5 on {_pct(h['video_rate'])} of the "
              f"{h['videos_failing']} (video, goal) pairs that fail."]
    if not figures["reasoner"]:
        L += ["", "No reasoner was available for this run: no figures on reasoner videos."]
    L += alignment_section(figures.get("alignment"))
    L += ["", "### Query writing (`propose_queries`)", "", "| split | n | parses | goal colour and family right | "
          "exactly the intended questions |", "|---|---|---|---|---|"]
    L += [f"| {s} | {q['n']} | {_pct(q['parsed'])} | {_pct(q['goal_right'])} | {_pct(q['exact'])} |"
          for s, q in figures["queries"].items()]
    acc = [r["all"]["accuracy"] for r in figures["renders"].values() if r["all"]["accuracy"] is not None]
    if acc and max(acc) < 0.75:
        L += ["", "## Status", "", "Not yet a useful judge: on every group of rendered videos above its overall "
              "accuracy is below 75%, close to always answering one way. The folder loads and runs through every "
              "code path of a real teacher (queries, differentiable P(Yes)), but its gradient carries little "
              "information about the grid rules; retrain it (`vlm-teacher train teacher`, longer, with the "
              "reasoner's videos) before drawing conclusions from test-time optimisation with it."]
    L += ["", "## Limits", "",
          "- Grid suite only, 6x6 (96 px) training videos; the ood split (8x8, 128 px, longer, magenta goals) "
          "measures how far that stretches.",
          "- Its gradient is only as honest as its answers: the reward-hacking figures above are the ones to watch "
          "when the reasoner changes; retrain with the new reasoner's outputs.", ""]
    path = folder / "MODEL_CARD.md"
    write_text(path, "\n".join(L))
    return path
