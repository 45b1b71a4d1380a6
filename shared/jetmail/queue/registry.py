"""Task registration: a name, a pydantic model for its payload, and the handler that runs it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import JobValidationError
from .subjects import check_task_name

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class TaskDef:
    name: str
    handler: Handler
    model: type[BaseModel] | None
    is_async: bool

    def parse(self, payload: Mapping[str, Any]) -> Any:
        """The handler's first argument: the validated model, or the plain dict when the task has no model."""
        if self.model is None:
            return dict(payload)
        return self.model.model_validate(payload)

    def normalise(self, payload: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
        """Validate a payload for enqueueing and return the JSON-ready dict that goes on the wire. An instance
        of the task's own model was validated when it was made: it is dumped, not validated again."""
        if self.model is not None and type(payload) is self.model:
            return payload.model_dump(mode="json")
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        if self.model is None:
            return dict(payload)
        try:
            return self.model.model_validate(payload).model_dump(mode="json")
        except ValidationError as exc:
            problems = describe_validation(exc)
            raise JobValidationError(f"invalid payload for task {self.name!r}: {problems}") from None


def describe_validation(exc: ValidationError) -> str:
    """Field locations and messages only: a payload may hold secrets, so never echo input values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


class Registry:
    """Task name -> handler. A worker runs the tasks of the registry it is given."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskDef] = {}

    def register(self, name: str, handler: Handler, *, model: type[BaseModel] | None = None) -> TaskDef:
        check_task_name(name)
        if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"task {name!r}: model must be a pydantic BaseModel subclass")
        existing = self._tasks.get(name)
        # importing the same module twice (e.g. under two names) re-registers the same function; allow that
        if existing is not None and _origin(existing.handler) != _origin(handler):
            raise ValueError(f"task {name!r} is already registered by {_origin(existing.handler)}")
        definition = TaskDef(name=name, handler=handler, model=model,
                             is_async=inspect.iscoroutinefunction(handler))
        self._tasks[name] = definition
        return definition

    def task(self, name: str, *, model: type[BaseModel] | None = None) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.register(name, handler, model=model)
            return handler

        return decorate

    def get(self, name: str) -> TaskDef | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[TaskDef]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)


def _origin(handler: Handler) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"


registry = Registry()
"""The process-wide registry that ``@task`` fills and ``jetmail worker`` runs."""


def task(name: str, *, model: type[BaseModel] | None = None) -> Callable[[Handler], Handler]:
    """Register ``async def handler(job: model, ctx: JobContext)`` (or a plain function) by name."""
    return registry.task(name, model=model)
