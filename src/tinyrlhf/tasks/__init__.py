"""Built-in tasks with a known gold reward, and the registry that names them.

    get_task("family_tree", generations=4)   -> a FamilyTreeTask with that config
    task_names()                              -> ["family_tree", "positive_review", "summarize"]

    base.py  family_tree.py  positive_review.py   prompts, gold reward, demonstrations, splits
    summarize.py  summarize_posts.py             TL;DR of synthetic posts (summarize-from-feedback shape)
    annotators.py                                simulated annotators with calibrated agreement
    generate.py                                  `tinyrlhf data TASK`: the task's data files
    baselines.py                                 degenerate and rule-based policies (the gold's sanity battery)

May import: data, config, errors; no model code (tests/test_layout.py checks it).
"""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from .base import Task
from .family_tree import FamilyTreeConfig, FamilyTreeTask
from .positive_review import PositiveReviewConfig, PositiveReviewTask
from .summarize import SummarizeConfig, SummarizeTask

TASKS = {FamilyTreeTask.name: FamilyTreeTask, PositiveReviewTask.name: PositiveReviewTask,
         SummarizeTask.name: SummarizeTask}
"""Registry name -> task class. Each class has `config_class` (a frozen dataclass) and takes it as its only argument."""


def task_names() -> list[str]:
    return sorted(TASKS)


def answer_tokens(name: str) -> int:
    """New tokens a study samples for one answer of this task (every policy, baseline and label alike)."""
    return getattr(_task_class(name), "answer_tokens", 24)


def task_config_keys(name: str) -> list[str]:
    """The override keys `get_task(name, ...)` accepts."""
    return [f.name for f in dataclasses.fields(_task_class(name).config_class)]


def _task_class(name: str):
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}' (valid: {', '.join(task_names())})")
    return TASKS[name]


def get_task(name: str, **config_overrides) -> Task:
    cls = _task_class(name)
    valid = task_config_keys(name)
    bad = sorted(k for k in config_overrides if k not in valid)
    if bad:
        raise ConfigError(f"unknown {name} config key(s) {', '.join(bad)} (valid: {', '.join(valid)})")
    try:
        config = cls.config_class(**config_overrides)
    except TypeError as e:  # e.g. a string where a number belongs: '<' between str and int
        raise ConfigError(f"{name} config: bad value type ({e})") from None
    return cls(config)


__all__ = ["TASKS", "Task", "get_task", "task_names", "task_config_keys", "FamilyTreeTask",
           "FamilyTreeConfig", "PositiveReviewTask", "PositiveReviewConfig", "SummarizeTask", "SummarizeConfig"]
