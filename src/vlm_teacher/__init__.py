"""vlm-teacher: a frozen VLM teaches a video generation model at test time.

The Reasoner (a diffusers Wan pipeline) predicts a video; the Teacher (a
transformers Qwen-VL model) answers yes/no questions about its frames; the
negative log-probability of "Yes" is backpropagated into a LoRA created fresh
for each instance. See ``vlm_teacher.optimize`` for the loop.
"""

__version__ = "0.1.0"

from .errors import UserError
from .task import Queries, Task

__all__ = ["Queries", "Task", "UserError", "__version__"]
