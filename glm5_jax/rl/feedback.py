"""User-feedback scorers: the lowest-priority term of the hierarchical reward.

A scorer maps (task, completion) to a score in [0, 1]. It is pluggable because real feedback
comes from wherever users leave it (ratings, edits, a preference model); the default reads
labels attached to the task, which is how a curated data set records what its users asked
for. Register more with ``register_feedback_scorer``.
"""

from __future__ import annotations

from typing import Callable, Protocol

from glm5_jax.rl.tasks import CodeTask


class FeedbackScorer(Protocol):
    def __call__(self, task: CodeTask, completion: str) -> float: ...


def label_feedback(task: CodeTask, completion: str) -> float:
    """Mean over the task's labels of how well the completion honours each (1.0 with no labels).

    ``max_chars=N``: 1 within N characters, falling linearly to 0 at 2N.
    ``avoid=TEXT``: 0 if TEXT appears in the completion, else 1.
    Unknown labels are an error: a silently ignored label is feedback nobody acts on.
    """
    scores = []
    for label in task.feedback_labels:
        kind, _, value = label.partition("=")
        if kind == "max_chars":
            limit = int(value)
            excess = max(0, len(completion) - limit)
            scores.append(max(0.0, 1.0 - excess / limit))
        elif kind == "avoid":
            scores.append(0.0 if value in completion else 1.0)
        else:
            raise ValueError(f"task {task.task_id} has feedback label {label!r}; known kinds: "
                             "max_chars=N, avoid=TEXT")
    return sum(scores) / len(scores) if scores else 1.0


def no_feedback(task: CodeTask, completion: str) -> float:
    del task, completion
    return 1.0


_SCORERS: dict[str, FeedbackScorer] = {"labels": label_feedback, "none": no_feedback}


def register_feedback_scorer(name: str, scorer: Callable[[CodeTask, str], float]) -> None:
    _SCORERS[name] = scorer


def get_feedback_scorer(name: str) -> FeedbackScorer:
    if name not in _SCORERS:
        raise ValueError(f"feedback scorer {name!r} is unknown; registered: {sorted(_SCORERS)}")
    return _SCORERS[name]
