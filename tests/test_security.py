"""Security: weights load only from safetensors (a pickle checkpoint is refused, never
unpickled), and remote code shipped in a model folder is never executed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vlm_teacher.errors import UserError
from vlm_teacher.reasoner import load_reasoner
from vlm_teacher.teacher import load_teacher


def _pickle_only(folder):
    """Replace every .safetensors file under folder by a torch.save pickle of the same tensors."""
    for st in list(folder.rglob("*.safetensors")):
        torch.save(load_file(st), st.with_suffix(".bin"))
        st.unlink()
    for idx in folder.rglob("*.safetensors.index.json"):
        idx.unlink()


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.load was called: a pickle checkpoint was opened")

    monkeypatch.setattr(torch, "load", refuse)


def test_reasoner_refuses_pickle_weights(tiny_wan_dir, tmp_path, no_unpickling):
    folder = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, folder)
    _pickle_only(folder)
    with pytest.raises(UserError, match="safetensors"):
        load_reasoner(folder)


def test_teacher_refuses_pickle_weights(tiny_qwen25_dir, tmp_path, no_unpickling):
    folder = tmp_path / "qwen"
    shutil.copytree(tiny_qwen25_dir, folder)
    _pickle_only(folder)
    with pytest.raises(UserError, match="safetensors"):
        load_teacher(folder)


def test_teacher_never_runs_remote_code(tiny_qwen25_dir, tmp_path):
    folder = tmp_path / "qwen"
    shutil.copytree(tiny_qwen25_dir, folder)
    marker = tmp_path / "PWNED"
    (folder / "evil_model.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil_model.EvilConfig", "AutoModelForImageTextToText": "evil_model.Evil"}
    (folder / "config.json").write_text(json.dumps(cfg))
    try:
        load_teacher(folder)
    except UserError:
        pass  # refusing the folder is fine too; running its code is not
    assert not marker.exists(), "code from the model folder was executed"


def test_reasoner_never_runs_remote_code(tiny_wan_dir, tmp_path):
    folder = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, folder)
    marker = tmp_path / "PWNED"
    (folder / "transformer" / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cfg_path = folder / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoModel": "evil.Evil"}
    cfg_path.write_text(json.dumps(cfg))
    try:
        load_reasoner(folder)
    except UserError:
        pass
    assert not marker.exists(), "code from the model folder was executed"
