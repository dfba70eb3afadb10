"""The task registry: which function runs which task name, with which options."""

from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import attrs

from walq import cron as walq_cron
from walq.core.job import Job
from walq.core.jobspec import check_seconds, check_task
from walq.core.retry import Backoff, CircuitBreaker, RateLimit, TaskPolicy
from walq.core.schedule import Schedule
from walq.core.text import excerpt
from walq.errors import ArgumentError, TaskModuleError

Handler = Callable[[Any, Job], Any]
H = TypeVar("H", bound=Handler)

_DEFAULT = object()


@attrs.frozen(kw_only=True)
class Task:
    """A registered handler and its options."""

    name: str
    fn: Handler
    timeout: float
    policy: TaskPolicy
    is_async: bool = False  # an `async def` handler: run on the worker process's event loop

    @property
    def max_attempts(self) -> int:
        return self.policy.max_attempts


# (test, name) for functions whose call only builds an object whose body never runs
# (an `async def` function is not one: the worker awaits its coroutine)...
_DEFERRED_FUNCTIONS: tuple[tuple[Callable[[Any], bool], str], ...] = (
    (inspect.isasyncgenfunction, "an async generator function"),
    (inspect.isgeneratorfunction, "a generator function"),
)
# ...and for what such a call returns: work not yet done.
_DEFERRED_RESULTS: tuple[tuple[Callable[[Any], bool], str], ...] = (
    (inspect.iscoroutine, "a coroutine"),
    (inspect.isasyncgen, "an async generator"),
    (inspect.isgenerator, "a generator"),
)


def deferred_kind(fn: object) -> str | None:
    """What kind of not-yet-run work calling `fn` returns ("a generator function"...), or None.

    A worker calls a handler and takes its return as "the work is done": a
    generator function only builds an object whose body never runs. (An
    `async def` handler is awaited on the worker process's event loop.)
    """
    # Not unwrapped: a plain wrapper around an async function may well run it
    # (asyncio.run); what it returns is checked in the worker all the same.
    return next((kind for test, kind in _DEFERRED_FUNCTIONS if test(fn)), None)


def deferred_result(value: object) -> str | None:
    """What kind of not-yet-done work a handler returned (a coroutine...), or None."""
    kind = next((kind for test, kind in _DEFERRED_RESULTS if test(value)), None)
    if kind is None and inspect.isawaitable(value):
        kind = f"an awaitable ({type(value).__qualname__})"
    if kind is None and isinstance(value, concurrent.futures.Future):
        kind = "a concurrent.futures.Future"
    return kind


class Tasks:
    """A set of task handlers, registered with `@tasks.task(...)`.

    Handlers take `(payload, job)`. They run in worker processes, so they
    must be importable module-level functions (the registry is pickled to
    each worker by reference).
    """

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._schedules: dict[str, Schedule] = {}

    def periodic(
        self,
        name: str,
        *,
        cron: str | None = None,
        every: float | None = None,
        payload: Any = None,
        misfire: str = "once",
        tz: str = "UTC",
        task: str | None = None,
    ) -> Callable[[H], H]:
        """Register schedule `name`: a job of task `task` (default: `name`) at each tick.

        cron: a cron expression (in zone `tz`; needs `walq[cron]`), or every:
        seconds (ticks at whole multiples of it since the epoch). The worker
        enqueues each due tick once, with key "schedule:NAME@TICK" (UTC ISO);
        after downtime, misfire: "skip" (only ticks on time), "once" (one
        catch-up run) or "all" (every missed tick, the newest 100 at most).
        As a decorator it also registers the function as task `name`.
        """
        sched = walq_cron.schedule(
            name, task or name, cron=cron, every=every, payload=payload, misfire=misfire, tz=tz
        )
        if name in self._schedules:
            raise ArgumentError(f"schedule {name!r} is already registered")
        self._schedules[name] = sched

        def register(fn: H) -> H:
            return self.task(sched.task)(fn)

        return register

    def schedules(self) -> list[Schedule]:
        """The registered schedules."""
        return list(self._schedules.values())

    def with_policies(self, policy: Callable[[Task], TaskPolicy]) -> Tasks:
        """A copy whose every task has the policy `policy(task)` (the shared gates of a server)."""
        out = Tasks()
        out._tasks = {name: attrs.evolve(t, policy=policy(t)) for name, t in self._tasks.items()}
        out._schedules = dict(self._schedules)
        return out

    def task(
        self,
        name: str | None = None,
        *,
        max_attempts: int | None = None,
        timeout: float = 300.0,
        retry: Backoff | None = None,
        retry_on: Iterable[type[BaseException]] = (),
        no_retry: Iterable[type[BaseException]] = (),
        concurrency: int | None = None,
        rate: RateLimit | float | None = None,
        breaker: CircuitBreaker | object | None = _DEFAULT,
    ) -> Callable[[H], H]:
        """Register the decorated function as task `name` (default: the function's name).

        An `async def` handler runs on an event loop in the worker process, up to
        the Worker's `async_concurrency` jobs at once per process.

        timeout: seconds before the worker kills the handler's process (an
        `async def` handler's coroutine is cancelled first; its process is
        killed if it has not ended `kill_grace` seconds later).
        retry/max_attempts/retry_on/no_retry/concurrency/rate/breaker: the
        retry policy (docs/RETRY.md); the defaults are storm-safe.
        """
        timeout = check_seconds("timeout", timeout, positive=True)
        policy_args: dict[str, Any] = {
            "retry_on": tuple(retry_on),
            "no_retry": tuple(no_retry),
            "concurrency": concurrency,
            "rate": rate,
        }
        if retry is not None:
            policy_args["retry"] = retry
        if max_attempts is not None:
            policy_args["max_attempts"] = max_attempts
        if breaker is not _DEFAULT:
            policy_args["breaker"] = breaker
        try:
            policy = TaskPolicy(**policy_args)
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f"task {name or ''}: {exc}") from None

        def register(fn: H) -> H:
            task_name = check_task(name or fn.__name__)
            kind = deferred_kind(fn)
            if kind is not None:
                raise ArgumentError(
                    f"task {task_name!r}: {getattr(fn, '__qualname__', fn)!r} is {kind}; "
                    "its body would never run in a worker: define the handler with def "
                    "or async def, returning its result"
                )
            if task_name in self._tasks:
                raise ArgumentError(f"task {task_name!r} is already registered")
            self._tasks[task_name] = Task(
                name=task_name, fn=fn, timeout=timeout, policy=policy,
                is_async=inspect.iscoroutinefunction(fn),
            )  # fmt: skip
            return fn

        return register

    def __getitem__(self, name: str) -> Task:
        return self._tasks[name]

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> list[str]:
        return list(self._tasks)

    @property
    def has_coroutines(self) -> bool:
        """Whether any handler is `async def` (its worker processes run an event loop)."""
        return any(t.is_async for t in self._tasks.values())


def load_tasks(spec: str) -> Tasks:
    """The Tasks object named by "module:attribute" (for `walq worker --tasks`).

    ArgumentError, one line, if the spec is malformed, the module does not
    exist, it has no such attribute or the attribute is not a walq.Tasks;
    TaskModuleError (with the traceback of the module's code) if importing
    the module raised.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ArgumentError(
            f"--tasks takes module:attribute (say myapp.jobs:tasks), not {excerpt(spec)}"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_prefix(exc.name, module_name):
            raise ArgumentError(
                f"no module named {exc.name!r} (--tasks {spec}; looked in the current "
                "directory and sys.path)"
            ) from None
        raise _import_error(module_name, exc) from None  # the module's own import failed
    except Exception as exc:  # whatever the user's module raises is theirs to see
        raise _import_error(module_name, exc) from None
    if not hasattr(module, attr):
        raise ArgumentError(f"module {module_name!r} has no attribute {attr!r} (--tasks {spec})")
    obj = getattr(module, attr)
    if not isinstance(obj, Tasks):
        raise ArgumentError(
            f"{spec} is of type {type(obj).__name__}, not a walq.Tasks (the object whose "
            "@tasks.task registers the handlers)"
        )
    return obj


def _is_prefix(missing: str, module_name: str) -> bool:
    """Whether the missing module is `module_name` or a package on its path."""
    return module_name == missing or module_name.startswith(missing + ".")


def _import_error(module_name: str, exc: BaseException) -> TaskModuleError:
    """The error for a tasks module that raised at import, its traceback from its own frames."""
    tb = exc.__traceback__
    while tb is not None and _machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    detail = "".join(traceback.format_exception(type(exc), exc, tb))
    what = f"{type(exc).__name__}: {exc}".split("\n", 1)[0]
    return TaskModuleError(f"cannot import tasks module {module_name!r}: {what}", detail)


def _machinery(filename: str) -> bool:
    """Whether a frame belongs to the import machinery or this module, not the user's code."""
    return filename.startswith("<frozen importlib") or filename in (
        importlib.__file__,
        __file__,
    )
