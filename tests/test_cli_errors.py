"""One-line errors, never a traceback: damaged weights, every optimisation setting checked before
any model loads, devices, output paths, video lengths, videos too short for a grid task; and a
property test over the CLI's arguments."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlm_teacher.cli import main


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _cut_in_half(path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def _run(reasoner, teacher, out, *extra):
    return main(["run", "--reasoner", str(reasoner), "--teacher", str(teacher), "--prompt", "Move the agent.",
                 "--out", str(out), "--quiet", *extra])


# ---------------------------------------------------------------- damaged weights

def test_teacher_weights_cut_in_half_are_named_damaged(tiny_wan_dir, tiny_qwen25_dir, tmp_path, capsys):
    qwen = tmp_path / "qwen"
    shutil.copytree(tiny_qwen25_dir, qwen)
    _cut_in_half(qwen / "model.safetensors")
    err = _one_line_error(capsys, _run(tiny_wan_dir, qwen, tmp_path / "out"))
    assert "model.safetensors is damaged" in err and "cut short" in err


@pytest.mark.parametrize("component", ["transformer", "vae", "text_encoder"])
def test_reasoner_weights_cut_in_half_are_named_damaged(component, tiny_wan_dir, tiny_qwen25_dir, tmp_path,
                                                        capsys):
    wan = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, wan)
    (weights,) = (wan / component).glob("*.safetensors")
    _cut_in_half(weights)
    err = _one_line_error(capsys, _run(wan, tiny_qwen25_dir, tmp_path / "out"))
    assert f"{weights.name} is damaged" in err and component in err


def test_a_safetensors_header_that_is_garbage_is_damaged(tmp_path):
    from vlm_teacher.errors import UserError
    from vlm_teacher.weights import check_safetensors

    path = tmp_path / "model.safetensors"
    path.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}")
    with pytest.raises(UserError, match="header is not readable"):
        check_safetensors(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match="too short"):
        check_safetensors(path)


# ---------------------------------------------------------------- settings before any model loads

@pytest.mark.parametrize("flags, field", [
    (["--lr", "nan"], "lr"), (["--lr", "-1"], "lr"), (["--lr", "0"], "lr"), (["--lr", "inf"], "lr"),
    (["--tau", "nan"], "tau"), (["--lam", "nan"], "lam"), (["--lam", "1.5"], "lam"), (["--rank", "0"], "lora_rank"),
    (["--k", "0"], "num_frames_shown"), (["--steps", "-1"], "max_steps"), (["--fixed-steps", "-3"], "fixed_steps"),
    (["--lr", "3e37"], "lr"),
])
@pytest.mark.parametrize("command", ["run", "bench"])
def test_every_tto_setting_is_checked_before_any_model_loads(command, flags, field, tmp_path, capsys):
    """The model folders do not exist: a check that ran after loading would name them instead."""
    missing = tmp_path / "no-such-model"
    if command == "run":
        code = _run(missing, missing, tmp_path / "out", *flags)
    else:
        code = main(["bench", "--suite", "grid:test", "--methods", "tto", "--limit", "1", "--out",
                     str(tmp_path / "out"), "--reasoner", str(missing), "--teacher", str(missing), "--quiet",
                     *flags])
    err = _one_line_error(capsys, code)
    assert err.startswith("error: bad optimisation setting") and field in err
    assert not (tmp_path / "out" / "results.sqlite").exists()


@pytest.mark.parametrize("changes", [{"grad_clip": 0.0}, {"weight_decay": -1.0}, {"lora_alpha": 0.0},
                                     {"lora_targets": ()}, {"lora_targets": "to_q"}, {"max_steps": 2.5},
                                     {"lr": True}, {"lam": "0.5"}])
def test_tto_config_refuses_every_bad_field(changes):
    from vlm_teacher.errors import UserError
    from vlm_teacher.optimize import tto_config

    with pytest.raises(UserError, match=next(iter(changes))):
        tto_config(changes)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a torch without a usable GPU")
@pytest.mark.parametrize("command", ["run", "bench"])
def test_cuda_device_on_a_cpu_only_torch(command, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    if command == "run":
        code = _run(missing, missing, tmp_path / "out", "--device", "cuda")
    else:
        code = main(["bench", "--suite", "grid:test", "--methods", "frozen", "--limit", "1", "--out",
                     str(tmp_path / "out"), "--reasoner", str(missing), "--quiet", "--device", "cuda"])
    err = _one_line_error(capsys, code)
    assert "--device cuda" in err and "CUDA" in err


@pytest.mark.parametrize("dtype", ["nn", "int8", "__class__", "float64x"])
def test_unknown_dtype(dtype, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    err = _one_line_error(capsys, _run(missing, missing, tmp_path / "out", "--dtype", dtype))
    assert "--dtype" in err


@pytest.mark.parametrize("command", ["run", "bench", "demo", "grid"])
@pytest.mark.parametrize("inside", [False, True])
def test_out_naming_an_existing_file(command, inside, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    out = afile / "sub" if inside else afile
    missing = tmp_path / "no-such-model"
    argv = {"run": ["run", "--reasoner", str(missing), "--teacher", str(missing), "--prompt", "p"],
            "bench": ["bench", "--suite", "grid:test", "--methods", "frozen", "--limit", "1"],
            "demo": ["demo", "--tasks", "1"],
            "grid": ["grid", "make", "--n", "1"]}[command]
    err = _one_line_error(capsys, main([*argv, "--out", str(out), *(["--quiet"] if command != "grid" else [])]))
    assert "--out" in err and "is a file" in err
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize("frames", ["100001", "4097"])
def test_frames_beyond_the_bound_are_refused_up_front(frames, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    err = _one_line_error(capsys, _run(missing, missing, tmp_path / "out", "--frames", frames))
    assert "--frames" in err and "4093" in err


def test_frames_the_models_rotary_table_cannot_hold(tiny_wan_dir, tmp_path):
    """A reasoner whose rope table is shorter than the global bound says so up front, in prepare,
    not diffusers in the middle of a forward pass."""
    import json

    from vlm_teacher.errors import UserError
    from vlm_teacher.reasoner import load_reasoner

    wan = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, wan)
    config_path = wan / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_max_seq_len"] = 4
    config_path.write_text(json.dumps(config))
    reasoner = load_reasoner(wan)
    with pytest.raises(UserError, match="rope_max_seq_len"):
        reasoner.prepare("p", None, 0, num_frames=4 * 4 + 1)
    assert reasoner.prepare("p", None, 0, num_frames=4 * 3 + 1).num_frames == 13  # 4 latent frames fit


# ---------------------------------------------------------------- grid verify

@pytest.fixture(scope="module")
def grid_task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    assert main(["grid", "make", "--split", "test", "--n", "1", "--families", "maze", "--out", str(root)]) == 0
    (d,) = (root / "test").iterdir()
    return d


def test_grid_verify_refuses_a_png(grid_task_dir, capsys):
    err = _one_line_error(capsys, main(["grid", "verify", "--task", str(grid_task_dir), "--video",
                                        str(grid_task_dir / "first_frame.png")]))
    assert "1 frame(s)" in err and "needs a video of" in err


def test_grid_verify_refuses_a_video_shorter_than_the_task(grid_task_dir, tmp_path, capsys):
    from vlm_teacher.video import read_video, write_video

    truth = read_video(grid_task_dir / "ground_truth.mp4")
    short = write_video(tmp_path / "short.mp4", truth[:-1])
    err = _one_line_error(capsys, main(["grid", "verify", "--task", str(grid_task_dir), "--video", str(short)]))
    assert f"{len(truth) - 1} frame(s)" in err
    longer = write_video(tmp_path / "long.mp4", np.concatenate([truth, truth[-1:]]))  # holding the end: fine
    capsys.readouterr()
    assert main(["grid", "verify", "--task", str(grid_task_dir), "--video", str(longer)]) == 0


# ---------------------------------------------------------------- no traceback, whatever the arguments

_NUMBERS = st.one_of(st.integers(-10**7, 10**7), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "", " ", "1_000", "--"]),
                     st.text(max_size=6))
_RUN_FLAGS = ["--steps", "--fixed-steps", "--tau", "--lam", "--k", "--rank", "--lr", "--x0-mode", "--frames",
              "--seed", "--device", "--dtype"]
_BENCH_FLAGS = _RUN_FLAGS[:-3] + ["--seeds", "--limit", "--workers", "--instance-timeout", "--methods",
                                  "--suite"]


#: flags whose arbitrary values could ask for a huge run (millions of seeds or tasks): drawn from these
_SPECIAL = {"--seeds": st.sampled_from(["0", "0,1", "1-0", "-1", ",", "a", "", "0-1,1"]),
            "--limit": st.sampled_from(["0", "-1", "1", "2", "x", ""]),
            "--suite": st.sampled_from(["grid:test", "grid:ood8", "grid:", "grid:nowhere", "vbvr:", "ruler:", "x"]),
            "--methods": st.sampled_from(["frozen", "tto", "tto_oracle", "best_of_n:0", "best_of_n:x", "nope",
                                          "frozen,frozen", "", "all"])}


def _flags(names):
    flag_and_value = st.sampled_from(names).flatmap(
        lambda f: st.tuples(st.just(f), _SPECIAL.get(f, _NUMBERS.map(str))))
    return st.lists(flag_and_value, max_size=4, unique_by=lambda t: t[0])


def _assert_no_traceback(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors: a usage line and one error line
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, (argv, err)
    assert code in (1, 2), (argv, code, err)
    return code, err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=_flags(_RUN_FLAGS), prompt=st.text(max_size=8))
def test_run_never_shows_a_traceback(flags, prompt, tmp_path, first_frame_png, capsys):
    """Whatever the settings: a one-line error before anything loads; the model folders do not
    exist, so settings that pass end at the one-line 'not found'."""
    missing = tmp_path / "no-such-model"
    argv = ["run", "--reasoner", str(missing), "--teacher", str(missing), "--prompt", prompt, "--image",
            str(first_frame_png), "--out", str(tmp_path / "out"), "--quiet"]
    for flag, value in flags:
        argv.append(f"{flag}={value}")
    code, err = _assert_no_traceback(argv, capsys)
    if "usage:" not in err:
        assert err.strip().startswith("error: ") and "\n" not in err.strip(), err


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=_flags(_BENCH_FLAGS))
def test_bench_never_shows_a_traceback(flags, tmp_path_factory, capsys):
    """bench with the same arbitrary settings; instances that fail (no model folder) make exit 1
    with the failure summary, never a traceback."""
    tmp = tmp_path_factory.mktemp("bench")
    missing = tmp / "no-such-model"
    given_flags = dict(flags)
    argv = ["bench", "--suite", given_flags.pop("--suite", "grid:test"), "--methods",
            given_flags.pop("--methods", "frozen"), "--limit", given_flags.pop("--limit", "1"), "--out",
            str(tmp / "out"), "--reasoner", str(missing), "--teacher", str(missing), "--quiet", "--no-teacher-eval"]
    for flag, value in given_flags.items():
        argv.append(f"{flag}={value}")
    code, err = _assert_no_traceback(argv, capsys)
    if code == 2 and "usage:" not in err:
        assert err.strip().startswith("error: ") and "\n" not in err.strip(), err


_VALUES = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none(), st.text(max_size=4))


@settings(max_examples=200, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(["lr", "weight_decay", "grad_clip", "lora_rank", "lora_alpha", "lam",
                                                "tau", "num_frames_shown", "max_steps", "fixed_steps"]),
                               _VALUES, max_size=4))
def test_settings_that_pass_validation_are_accepted_by_the_loop(changes):
    """Whatever tto_config accepts, the loop's parts accept too (AdamW, gradient clipping, the
    peft LoRA, the frame choice, the loss): so no accepted setting fails after the models loaded."""
    import math

    import torch
    from peft import LoraConfig

    from vlm_teacher.errors import UserError
    from vlm_teacher.objective import weighted_loss
    from vlm_teacher.optimize import tto_config
    from vlm_teacher.reasoner.base import uniform_frame_indices

    try:
        cfg = tto_config(changes)
    except UserError:
        return
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param], lr=cfg.lr, weight_decay=cfg.weight_decay)
    param.grad = torch.ones(2)
    norm = torch.nn.utils.clip_grad_norm_([param], cfg.grad_clip)
    optimizer.step()
    assert torch.isfinite(param).all() and math.isfinite(float(norm))
    LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank, target_modules=list(cfg.lora_targets))
    assert len(uniform_frame_indices(9, cfg.num_frames_shown)) >= 1
    assert math.isfinite(float(weighted_loss(torch.tensor([-0.5, -0.7]), cfg.lam)))
    assert isinstance(cfg.budget, int) and not isinstance(cfg.budget, bool) and cfg.budget >= 0
