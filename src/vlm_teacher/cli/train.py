"""`vlm-teacher train reasoner | teacher | surrogate`: the recipes that build the embedded models."""

from __future__ import annotations

import importlib

from ..errors import UserError

RECIPES = {
    "reasoner": ("vlm_teacher.recipes.grid_reasoner", "small Wan pipeline (VAE, text encoder, transformer) on grid videos"),
    "teacher": ("vlm_teacher.recipes.grid_teacher", "small Qwen-VL: yes/no answers about grid videos and query writing"),
    "surrogate": ("vlm_teacher.recipes.grid_surrogate", "small surrogate preview decoder distilled from a reasoner's VAE"),
}


def _missing(module: str):
    def fail(args) -> int:
        raise UserError(f"the recipe {module} is not part of this installation; reinstall vlm-teacher from a full clone")

    return fail


def add_train_commands(sub) -> None:
    train = sub.add_parser("train", help="train the embedded models (recipes)")
    tsub = train.add_subparsers(dest="train_command", required=True)
    for name, (module, help_text) in RECIPES.items():
        p = tsub.add_parser(name, help=help_text)
        try:
            recipe = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p.set_defaults(func=_missing(module))
            continue
        recipe.add_arguments(p)
        p.set_defaults(func=recipe.run)
