"""A Qwen-style tokenizer built offline (no hub access is possible here).

Tiny Qwen-VL models for tests and the embedded default need a tokenizer that
behaves like Qwen's where it matters to the teacher adapter:

- the same pre-tokenisation (Qwen2's split regex + byte-level BPE, NFC), so any
  text round-trips and digits are single characters;
- Qwen's special tokens (``<|im_start|>``, ``<|vision_start|>``, ``<|video_pad|>``...)
  as atomic added tokens;
- a Qwen-style chat template whose image/video content items render as
  ``<|vision_start|><|image_pad|><|vision_end|>`` / ``...<|video_pad|>...``;
- "Yes" and "No" are single tokens (the teacher's answer is teacher-forced).

The BPE is trained in milliseconds on a small English corpus written below
(grid-task words, questions, JSON), so a small vocabulary (1-4k) still encodes
the task language compactly. The vocabulary size is a parameter because a later
engineer trains a small Qwen-VL on grid tasks with this tokenizer.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterable

#: Qwen2/2.5/3-VL special tokens, in Qwen's order (ids follow the trained vocabulary's
#: first slots here, which is fine: the tiny model's config is written from the tokenizer).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Qwen2's pre-tokenisation regex (letters runs, single digits, punctuation runs, newlines).
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: A Qwen-style chat template. Content may be a string or a list of items
#: {"type": "text", "text": ...} / {"type": "image"} / {"type": "video"}.
QWEN_STYLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'video' or 'video' in item %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in item %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "cyan", "black", "white", "gray", "brown")
OBJECTS = ("agent", "box", "wall", "target", "cell", "square", "goal", "maze", "grid", "path", "block", "circle")
VERBS = ("move", "push", "reach", "enter", "leave", "cross", "touch", "follow", "stay", "stop", "draw", "fill")
DIRECTIONS = ("up", "down", "left", "right", "north", "south", "east", "west")

#: Common English words, so merges grow into whole words for a vocabulary of a few thousand.
COMMON_WORDS = """\
the of and to in is it that for was on are as with his they at be this from have or by one had not but
what all were when we there can an your which their said if do will each about how up out them then she
many some so these would other into has more her two like him see time could no make than first been its
who now people my made over did down only way find use may water long little very after words called just
where most know get through back much before go good new write our used me man too any day same right look
think also around another came come work three word must because does part even place well such here take
why things help put years different away again off went old number great tell men say small every found
still between name should home big give air line set own under read last never us left end along while
might next sound below saw something thought both few those always looked show large often together asked
house don world going want school important until form food keep children feet land side without boy once
animals life enough took sometimes four head above kind began almost live page got earth need far hand
high year mother light parts country father let night following picture being study second eyes soon times
story boys since white days ever paper hard near sentence better best across during today others however
sure means knew try told young miles sun ways thing whole hear example heard several change answer room sea
against top turned learn point city play toward five using himself usually money seen car morning open
question judge video frame frames image first last final state rule rules legal illegal valid invalid
correct incorrect complete completed reaches reached moves moved pushes pushed stays stayed enters entered
collision collide collides overlap overlaps overlapping continuous continuity smooth smoothly temporal
consistent consistency integrity intact shape colour color position positions object objects requirement
instruction task process processes objective supervision propose questions goal_query process_queries
row column rows columns corner center edge border adjacent neighbour diagonal horizontal vertical straight
shortest longest route solution solve solved puzzle board game piece pieces token tokens start end finish
system user assistant json yes no true false null answer answers single word
"""

_PARAGRAPHS = """\
The blue agent moves one cell per step through the maze until it reaches the green target.
Walls are black cells; the agent must never enter a wall or leave the grid.
Push the brown box onto the red target without pulling it. A box moves only when the agent pushes it.
Does the agent reach the goal? Yes. Does the agent pass through a wall? No.
Is the final frame consistent with the instruction? Answer Yes or No.
Does every object keep its shape and colour in every frame? Yes.
Do objects move smoothly without teleporting between frames? No, the agent jumps two cells.
Is the motion continuous in time and physically plausible? Does anything collide or overlap?
Is the state of the board consistent from one frame to the next? Are the walls unchanged?
Propose supervision questions on the processes and final objective of this task.
Write one goal question and one to three process questions whose answer Yes means the requirement is met.
Reply with JSON only: {"goal": "...", "process": ["...", "..."]}
You are a careful video judge. Watch the video and answer the question with a single word.
The video shows a grid of coloured squares. Step by step, the agent walks along the shortest path.
Draw a line from the start cell to the end cell. Fill the empty cells with the matching colour.
The first frame shows the initial state; the last frame shows the final state of the puzzle.
Count the steps: one, two, three, four, five, six, seven, eight, nine, ten.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 24 32 48 64 89 100 0.5 1.0 2.5 seconds frames.
"""


def training_corpus(extra: Iterable[str] = ()) -> list[str]:
    """The deterministic English corpus the BPE is trained on (one string per line)."""
    lines = [line for line in _PARAGRAPHS.splitlines() if line.strip()]
    for colour, obj, verb in itertools.product(COLOURS, OBJECTS, VERBS):
        lines.append(f"Does the {colour} {obj} {verb} correctly? Yes")
        lines.append(f"The {colour} {obj} does not {verb}. No")
    for colour, direction in itertools.product(COLOURS, DIRECTIONS):
        lines.append(f"Move the {colour} agent {direction} to the {colour} target cell.")
        lines.append(f'{{"goal": "Does the {colour} agent reach the target?", '
                     f'"process": ["Does the agent move {direction} one cell per step?", '
                     f'"Does the agent avoid the walls?"]}}')
    words = COMMON_WORDS.split()
    for i in range(0, len(words), 7):  # each word both sentence-initial and after a space, twice
        chunk = words[i:i + 7]
        lines.extend([" ".join(chunk), " ".join(w.capitalize() for w in chunk)] * 2)
        lines.extend(chunk)
    for answer in ("Yes", "No"):
        lines.extend([f"Answer: {answer}", f"{answer}.", answer] * 50)
    lines.extend(extra)
    return lines


def build_offline_tokenizer(vocab_size: int = 1536, extra_corpus: Iterable[str] = ()):
    """Train a byte-level BPE with Qwen's special tokens and chat template.

    Returns a ``transformers.PreTrainedTokenizerFast`` (``eos`` = ``<|im_end|>``,
    ``pad`` = ``<|endoftext|>``). "Yes" and "No" are checked to be single tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not 300 <= vocab_size <= 65536:
        raise ValueError(f"vocab_size must be in [300, 65536] (256 bytes + specials + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(extra_corpus), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.chat_template = QWEN_STYLE_CHAT_TEMPLATE
    for word in ("Yes", "No"):
        ids = fast.encode(word, add_special_tokens=False)
        if len(ids) != 1:  # pragma: no cover - guarded by the corpus; fail loudly if it ever changes
            raise RuntimeError(f"offline tokenizer: {word!r} is not a single token ({ids}); enlarge the corpus")
    return fast


def save_offline_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 1536) -> Path:
    """Build and save (tokenizer.json + tokenizer_config.json with the chat template)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_offline_tokenizer(vocab_size).save_pretrained(out)
    return out
