"""HunyuanVideo15Reasoner against diffusers' HunyuanVideo15Pipeline / HunyuanVideo15ImageToVideoPipeline,
over tiny random folders (8 latent channels, 1 double-stream block, 9 frames, 64x64 I2V and 48x80 T2V
(the pipeline's 9:16 bucket of target_size 64), 3 steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm_teacher.errors import UserError
from vlm_teacher.reasoner import load_reasoner
from vlm_teacher.reasoner.hunyuan15 import HunyuanVideo15Reasoner
from vlm_teacher.testing.tiny_hunyuan15 import build_tiny_hunyuan15_pipeline

#: quoted text, so the ByT5 glyph branch runs too
PROMPT = 'Move the red agent to the sign "GOAL".'


def _image(seed: int = 0, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hunyuan15")
    return {"t2v": build_tiny_hunyuan15_pipeline(root / "t2v"),
            "i2v": build_tiny_hunyuan15_pipeline(root / "i2v", image_to_video=True, use_meanflow=True)}


@pytest.fixture(scope="module")
def reasoners(folders):
    return {name: load_reasoner(path) for name, path in folders.items()}


def _pipeline_run(folder, reasoner, cond, image, output_type):
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline

    cls = HunyuanVideo15ImageToVideoPipeline if image is not None else HunyuanVideo15Pipeline
    pipe = cls.from_pretrained(folder)
    pipe.tokenizer_max_length = reasoner.defaults.max_sequence_length  # 1000 in the pipeline; 32 here
    size = {"image": Image.fromarray(image)} if image is not None else {"height": cond.height, "width": cond.width}
    return pipe(prompt=PROMPT, num_frames=cond.num_frames, num_inference_steps=len(cond.extra["sigmas"]) - 1,
                latents=cond.noise.clone(), output_type=output_type, **size).frames


@pytest.mark.parametrize("name", ["t2v", "i2v"])
def test_sampler_and_decode_equal_the_diffusers_pipeline(folders, reasoners, name):
    r = reasoners[name]
    assert type(r) is HunyuanVideo15Reasoner and r.image_to_video == (name == "i2v")
    image = _image() if name == "i2v" else None
    cond = r.prepare(PROMPT, image, seed=3)
    assert (cond.height, cond.width) == ((64, 64) if image is not None else (48, 80))
    latent = r.sample(cond)
    ref = _pipeline_run(folders[name], r, cond, image, "latent")
    assert latent.shape == ref.shape == (1, 8, 3, cond.height // 16, cond.width // 16)
    assert torch.allclose(latent, ref.float(), atol=1e-5), (latent - ref).abs().max()
    video = r.decode(latent).permute(0, 2, 3, 1).numpy()
    ref_video = _pipeline_run(folders[name], r, cond, image, "np")[0]
    assert video.shape == ref_video.shape == (9, cond.height, cond.width, 3)
    assert np.abs(video - ref_video).max() < 1e-5
    other = r.sample(r.prepare(PROMPT, image, seed=4))
    assert not torch.allclose(other, ref, atol=1e-3)


@pytest.mark.parametrize("name", ["t2v", "i2v"])
def test_preview_equals_the_decode_and_gradient_reaches_only_the_lora(reasoners, name):
    r = reasoners[name]
    cond = r.prepare(PROMPT, _image() if name == "i2v" else None, seed=1)
    params = r.add_lora(rank=2, targets=["all"], seed=0)
    names = [n for n, _ in r.transformer.named_parameters() if "lora_" in n]
    assert names and not any("context_embedder" in n for n in names)  # the text refiner is left alone
    assert any(".attn.add_q_proj." in n for n in names) and any(".ff_context." in n for n in names)
    try:
        x0 = r.predict_x0(cond)
        frames = r.preview(x0, [0, 3, 8])
        assert frames.shape == (3, 3, cond.height, cond.width)
        assert torch.allclose(frames.detach(), r.decode(x0.detach())[[0, 3, 8]], atol=1e-5)
        if name == "t2v":  # the checkpointed decode once (diffusers' per-block checkpointing)
            r.vae_checkpointing = True
            again = r.preview(x0, [0, 3, 8])
            assert torch.allclose(again, frames, atol=1e-5)
        (frames - 0.5).square().mean().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        assert not any(t.grad is not None for t in r.base_state_dict().values())
        assert {k.split(".")[0] for k in r.base_state_dict()} >= {"transformer", "vae", "text_encoder",
                                                                  "text_encoder_2"}
    finally:
        r.vae_checkpointing = False
        r.remove_lora()


def test_preview_decodes_only_the_latent_frames_it_needs(reasoners):
    r = reasoners["t2v"]
    latent = r.prepare(PROMPT, None, seed=0).noise
    calls = []
    hook = r.vae.decoder.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[2]))
    try:
        r.preview(latent, [0, 4])
    finally:
        hook.remove()
    assert calls == [2]  # pixel frame 4 is in latent frame 1 of 3


def test_first_frame_changes_the_video_and_wrong_inputs_are_refused(reasoners):
    i2v, t2v = reasoners["i2v"], reasoners["t2v"]
    a = i2v.prepare(PROMPT, _image(0), seed=0)
    assert torch.equal(a.extra["cond_mask"][:, :, 0], torch.ones_like(a.extra["cond_mask"][:, :, 0]))
    assert not a.extra["cond_mask"][:, :, 1:].any() and not a.extra["cond_latents"][:, :, 1:].any()
    b = i2v.prepare(PROMPT, _image(1), seed=0)
    assert not torch.allclose(i2v.sample(a), i2v.sample(b), atol=1e-3)
    with pytest.raises(UserError, match="give a first frame"):
        i2v.prepare(PROMPT, None, seed=0)
    with pytest.raises(UserError, match="takes no first frame"):
        t2v.prepare(PROMPT, _image(), seed=0)
    with pytest.raises(UserError, match="prompt_embeds"):
        t2v.prepare(PROMPT, None, seed=0, prompt_embeds=torch.zeros(1, 4, 32))


def test_broken_folder_is_a_user_error(folders, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(folders["i2v"], folder)
    shutil.rmtree(folder / "image_encoder")
    with pytest.raises(UserError, match="image_encoder/"):
        load_reasoner(folder)


def test_prompt_encodings_are_cached(folders):
    """Both text encoders run once per prompt (WanReasoner's prompt cache); a new prompt runs them again."""
    r = load_reasoner(folders["t2v"])
    calls = []
    for encoder in (r.text_encoder, r.text_encoder_2):
        encoder.register_forward_hook(lambda *a: calls.append(1))
    first = r.encode_text(PROMPT)
    assert len(calls) == 2
    assert r.encode_text(PROMPT) is first and len(calls) == 2
    r.encode_text('Push the box to "HOME".')  # quoted text again: ByT5 runs too
    assert len(calls) == 4
