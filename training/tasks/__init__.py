"""The tasks of the command-line programs (Model Garden's tasks): each owns its data, its
model, its evaluation and its run-folder records, so the CLIs never branch on a task name.

`python -m training.finetune --task=...` runs a FINETUNING task; `python -m training.export`
rebuilds any task's model to restore a checkpoint into.
"""

from training.tasks.base import Inputs, TrainingTask
from training.tasks.classification import ClassificationTask
from training.tasks.pretraining import PretrainingTask
from training.tasks.span import SpanTask

TASKS = {task.name: task for task in (PretrainingTask, ClassificationTask, SpanTask)}
FINETUNING = tuple(name for name, task in TASKS.items() if task.finetuning)


def get(name, flag="--task"):
    """The task class called `name`; a ValueError naming the flag otherwise."""
    if name not in TASKS:
        raise ValueError(f"{flag} must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]
