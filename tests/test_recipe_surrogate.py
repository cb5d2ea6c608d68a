"""The surrogate-decoder recipe (`vlm-teacher train surrogate`) on a tiny Wan pipeline, and the
surrogate shipped for the embedded reasoner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlm_teacher.cli import build_parser
from vlm_teacher.errors import UserError
from vlm_teacher.recipes.grid_surrogate import FILE_NAME, SHIPPED_DIR, vae_identity

TINY = ["--train-tasks", "12", "--videos", "3", "--reasoner-videos", "2", "--lora-variants", "1", "--steps", "4",
        "--batch", "2", "--widths", "8,8,4,4", "--eval-tasks", "1", "--checkpoint-every", "1", "--oracle-tasks", "1",
        "--oracle-steps", "2", "--oracle-every", "1", "--tune-steps", "3"]


@pytest.fixture(scope="module")
def tiny_reasoner(tmp_path_factory) -> Path:
    """A random grid-sized Wan2.2-style pipeline (4x temporal VAE: the other time layout than grid-wan's)."""
    from vlm_teacher.testing.tiny_wan import build_tiny_wan_pipeline

    return build_tiny_wan_pipeline(tmp_path_factory.mktemp("wan") / "wan", num_frames=9, height=96, width=96,
                                   steps=1, vae_base_dim=4, text_dim=16, head_dim=16, ffn_dim=32)


def _train(out: Path, reasoner: Path, *extra: str) -> int:
    args = build_parser().parse_args(["train", "surrogate", "--out", str(out), "--reasoner", str(reasoner),
                                      *TINY, *extra])
    return args.func(args)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _losses(out: Path) -> list[tuple[str, int, float]]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [(r["stage"], r["step"], r["loss"]) for r in rows if "loss" in r]


def _steps(out: Path) -> list[tuple[str, int]]:
    return [(stage, step) for stage, step, _ in _losses(out)]


STEPS = [("train", 1), ("train", 2), ("train", 3), ("train", 4), ("tune", 1), ("tune", 2), ("tune", 3)]


@pytest.fixture(scope="module")
def straight_run(tiny_reasoner, tmp_path_factory):
    out = tmp_path_factory.mktemp("surrogate") / "run"
    assert _train(out, tiny_reasoner) == 0
    return out


def test_recipe_distils_a_decoder_that_loads_through_the_adapter(straight_run, tiny_reasoner):
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.reasoner.surrogate import TinyWanDecoder
    from vlm_teacher.suites.grid import grid_tasks

    folder = straight_run / "model"
    path = folder / FILE_NAME
    assert {p.name for p in folder.iterdir()} == {"MODEL_CARD.md", FILE_NAME, "metrics.json"}
    assert _steps(straight_run) == STEPS
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["source"]["vae_id"] == vae_identity(tiny_reasoner)
    # the oracle loop previews 3 latents: 2 steps and the final scoring of the last update (every one kept)
    assert metrics["training"]["by_source"] == {"videos": 3, "reasoner": 2, "reasoner_lora": 2, "oracle_tto": 3}
    assert metrics["training"]["command"] in (folder / "MODEL_CARD.md").read_text()
    assert metrics["evaluation"]["test"]["all"]["n"] == 6  # 2 tasks x (ground truth, frozen, LoRA)

    # what a user does: the adapter loads the file and the preview runs through it, with a gradient
    reasoner = load_reasoner(tiny_reasoner)
    reasoner.load_preview_decoder(path)
    assert isinstance(reasoner.preview_decoder, TinyWanDecoder) and reasoner.preview_decoder.temporal_scale == 4
    task = grid_tasks("test", n=1)[0]
    cond = reasoner.prepare(task.prompt, task.first_frame(), seed=0)
    params = reasoner.add_lora(rank=2, seed=0)
    frames = reasoner.preview(reasoner.predict_x0(cond), [0, 4, 8])
    assert tuple(frames.shape) == (3, 3, 96, 96)
    frames.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    # the surrogate is what the preview used: its frames are the decoder's own output
    z = torch.randn(1, 48, 3, 6, 6)
    decoder = TinyWanDecoder.from_file(path)
    assert torch.allclose(decoder.decode(z), reasoner.preview_decoder.decode(z))


def test_recipe_resumes_to_the_same_weights(tiny_reasoner, straight_run, tmp_path):
    out = tmp_path / "run"
    assert _train(out, tiny_reasoner, "--stop-after", "2") == 0
    assert not (out / "model").exists() and _steps(out) == STEPS[:2]
    assert _train(out, tiny_reasoner, "--resume", "--stop-after", "2") == 0  # the rest of round 1, 2 of round 2
    assert _steps(out) == STEPS[:6]
    assert _train(out, tiny_reasoner, "--resume") == 0
    assert _steps(out) == STEPS
    assert [l for *_, l in _losses(out)] == pytest.approx([l for *_, l in _losses(straight_run)], rel=1e-5)
    a, b = _weights(out / "model" / FILE_NAME), _weights(straight_run / "model" / FILE_NAME)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(UserError, match="already holds a run"):
        _train(out, tiny_reasoner)
    with pytest.raises(UserError, match="widths"):
        _train(out, tiny_reasoner, "--resume", "--widths", "8,8,8,8")


def test_recipe_refuses_bad_settings_before_loading(tmp_path):
    with pytest.raises(UserError, match="--widths"):
        _train(tmp_path / "a", tmp_path, "--widths", "8,8")
    with pytest.raises(UserError, match="not a Wan pipeline folder"):
        _train(tmp_path / "b", tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- the shipped surrogate
shipped = pytest.mark.skipif(not (SHIPPED_DIR / FILE_NAME).is_file(), reason="no surrogate shipped")


@shipped
def test_shipped_surrogate_fits_the_embedded_vae_and_its_card():
    """Loaded as a user would, the shipped surrogate reproduces its card's held-out figures on the
    ground-truth latents of the first test task of each family (verdicts and PSNR of its frames against
    the VAE's), and agrees with the VAE on the embedded reasoner's own latents for those tasks."""
    from vlm_teacher.embedded import REASONER_DIR, ROOT
    from vlm_teacher.reasoner import load_reasoner
    from vlm_teacher.recipes.grid_surrogate import compare, held_out_latents, surrogate_frames, vae_frames

    files = [f for f in ROOT.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    assert sum(f.stat().st_size for f in files) < 30e6  # every shipped folder together
    metrics = json.loads((SHIPPED_DIR / "metrics.json").read_text())
    assert metrics["training"]["command"] in (SHIPPED_DIR / "MODEL_CARD.md").read_text()
    assert metrics["source"]["vae_id"] == vae_identity(REASONER_DIR), (
        f"the shipped surrogate was distilled from VAE {metrics['source']['vae_id']}, the embedded reasoner has "
        f"{vae_identity(REASONER_DIR)}: distil it again (about 8 CPU minutes): vlm-teacher train surrogate --out "
        f"runs/surrogate --init-from {SHIPPED_DIR / FILE_NAME} --steps 1000 --minutes 30 --tune-minutes 10 "
        f"--export {SHIPPED_DIR}")
    reasoner = load_reasoner(REASONER_DIR)
    reasoner.load_preview_decoder(SHIPPED_DIR / FILE_NAME)
    card = {(r["source"], r["task"]): r for r in metrics["evaluation"]["test"]["per_latent"]}
    checked = 0
    for source, task, z in held_out_latents(reasoner, "test", 1, 0, metrics["training"]["lora_scale"]):
        if source == "reasoner_lora":  # its random LoRA depends on how many tasks the card drew
            continue
        row = compare(task, vae_frames(reasoner, z)[0], surrogate_frames(reasoner.preview_decoder, z, "cpu")[0])
        if source == "ground_truth":  # a property of the VAE alone, which vae_id pins: the card's figures
            want = card[(source, task.id)]
            assert (row["vae_passed"], row["surrogate_passed"]) == (want["vae_passed"], want["surrogate_passed"])
            assert row["psnr_db"] == pytest.approx(want["psnr_db"], abs=0.5)
        else:  # the frozen reasoner's latents follow its transformer, retrained more often than the VAE
            # (the card names the reasoner it was measured with): the two decoders must agree on them
            assert row["vae_passed"] == row["surrogate_passed"], (source, task.id, row)
        assert row["psnr_db"] > 20, (source, task.id, row)  # an untrained surrogate scores about 7 dB
        checked += 1
    assert checked == 4
    assert metrics["evaluation"]["test"]["all"]["agreement"] >= 0.95


@shipped
def test_bench_and_run_preview_through_the_surrogate_when_asked(tmp_path, capsys):
    """--preview-decoder: the TTO rows record it and get their own config hash (frozen rows are
    shared), the teacher's preview changes, and a missing file is refused before any model loads."""
    import sqlite3

    from vlm_teacher.cli import main

    surrogate = SHIPPED_DIR / FILE_NAME
    out = tmp_path / "b"
    common = ["bench", "--suite", "grid:test", "--methods", "frozen,tto", "--limit", "1", "--out", str(out),
              "--fixed-steps", "1", "--quiet", "--no-teacher-eval"]
    assert main(common) == 0
    assert main([*common, "--preview-decoder", str(surrogate)]) == 0
    rows = sqlite3.connect(out / "results.sqlite").execute(
        "select method, config_hash, json_extract(extra, '$.preview_decoder'), history_path from results").fetchall()
    tto = [r for r in rows if r[0] == "tto"]
    assert len([r for r in rows if r[0] == "frozen"]) == 1  # the preview decoder does not touch frozen
    assert len(tto) == 2 and tto[0][1] != tto[1][1]
    assert sorted(str(r[2]).split("-")[0] for r in tto) == ["None", "surrogate_decoder"]
    first_loss = [json.loads((out / r[3]).read_text())["history"][0]["loss"] for r in tto]
    assert first_loss[0] != first_loss[1]  # the teacher judged another picture of the same first prediction
    assert main([*common, "--preview-decoder", str(tmp_path / "missing.safetensors")]) != 0
    assert "is not a file" in capsys.readouterr().err
