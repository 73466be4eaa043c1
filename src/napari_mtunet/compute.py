"""The compute process: workflows run in a separate Python process, so a GUI process never imports torch.

Why a process and not a thread: a thread of napari's process that imports
torch, builds a model or loads a dataset holds the GIL for long stretches
(C-extension initialisation alone held it for 0.1-1.9 s at a time, measured
with py-spy in ``benchmarks/bench_napari_responsiveness.py``), and napari's
GUI thread needs the GIL for every event it handles: the window froze for up
to a second while the widgets "warmed up", and for more on a loaded machine.
Here the scientific stack (torch, the model, the data pipeline) lives in one
child process that the widgets share: napari's process only sends requests
and receives events, results and errors.

One child per session (:func:`client`), started when the first widget opens
(its imports are the warm-up), restarted on the next request if it died.
Jobs run in threads of the child, so training and predicting can overlap;
each job's :class:`~napari_mtunet.events.CancelToken` lives in the child and
is set by :meth:`RemoteJob.cancel`.  The child exits when napari's process
goes away (its stdin reaches end-of-file), whatever the reason.

Protocol: length-prefixed pickles over the child's stdin / stdout (the
child's own prints go to stderr)::

    parent -> child   ("run", job_id, func, args, kwargs, cancellable) | ("cancel", job_id) | ("quit",)
    child -> parent   ("ready", info) | ("event", job_id, blob) | ("result", job_id, blob)
                      | ("error", job_id, blob)

where ``blob`` is the pickled event, result or :class:`RemoteError`, unpickled
for its job only (a value that cannot be unpickled fails that job, not the
connection).

``func`` is a ``"module:function"`` string (the GUI never imports the
module) or a module-level function.  Arguments, events and results must
pickle, and unpickling them must not import torch in the GUI process: the
widgets' jobs (:mod:`napari_mtunet.jobs`) return small summaries.  Errors
arrive as :class:`RemoteError` (the message, the class name and its bases),
whatever their class: unpickling e.g. a training error would import the
module that defines it, torch included.  Qt-free and napari-free.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

#: Imported by the child when it starts (the warm-up): everything the widgets' jobs use, so that no job
#: pays a first import (tests/test_widgets_responsiveness.py checks it).
WARM_MODULES = (
    "torch",
    "torchvision.transforms.v2",
    "safetensors.torch",
    "segmentation_models_pytorch",
    "timm",
    "huggingface_hub",
    "sklearn.model_selection",
    "sklearn.metrics",
    "skimage.io",
    "skimage.transform",
    "napari_mtunet.model",
    "napari_mtunet.checkpoint",
    "napari_mtunet.data",
    "napari_mtunet.data.dataset",
    "napari_mtunet.data.loading",
    "napari_mtunet.data.writer",
    "napari_mtunet.training",
    "napari_mtunet.training.engine",
    "napari_mtunet.workflows",
    "napari_mtunet.workflows.predict_layers",
    "napari_mtunet.inference",
    "napari_mtunet.explain",
    "napari_mtunet.previews",
)
#: ``module:function`` run in the child before anything else (tests use it to patch the child).
SETUP_ENV = "MTUNET_COMPUTE_SETUP"
#: How much lower the compute process's CPU priority is than napari's (POSIX ``nice``; 0 keeps it equal).
#: When the cores are busy (a shared workstation), napari's GUI then gets a core before the computation
#: does, instead of waiting hundreds of ms; on an idle machine it changes nothing.
NICE_ENV = "MTUNET_COMPUTE_NICE"
DEFAULT_NICE = 5
_HEADER = struct.Struct("<Q")


class RemoteError(RuntimeError):
    """An exception raised in the compute process: its message, its class name and the names of its bases."""

    def __init__(self, message: str, type_name: str = "Exception", bases: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.bases = tuple(bases) or (type_name,)

    def __reduce__(self):
        return (RemoteError, (str(self), self.type_name, self.bases))

    def is_a(self, *names: str) -> bool:
        """Whether the original exception was an instance of a class with one of these names."""
        return any(n in self.bases for n in names)


class ComputeProcessDied(RuntimeError):
    """The compute process ended while a job ran (crash, killed, out of memory)."""


# --------------------------------------------------------------------------- framing


def _send(fh: Any, lock: threading.Lock, message: tuple) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    with lock:
        fh.write(_HEADER.pack(len(data)))
        fh.write(data)
        fh.flush()


def _recv(fh: Any) -> tuple:
    head = fh.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    n = _HEADER.unpack(head)[0]
    data = fh.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def resolve(func: str | Callable) -> Callable:
    """``"package.module:function"`` -> the function (callables are returned as they are)."""
    if callable(func):
        return func
    module, _, name = str(func).partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def remote_error(exc: BaseException) -> RemoteError:
    """``exc`` as a :class:`RemoteError` (its message and the names of its classes)."""
    if isinstance(exc, RemoteError):
        return exc
    return RemoteError(str(exc), type(exc).__name__, tuple(c.__name__ for c in type(exc).__mro__))


# --------------------------------------------------------------------------- the parent's side


class RemoteJob:
    """A job running in the compute process: iterate :meth:`events`, which returns the job's result."""

    def __init__(self, process: ComputeProcess, job_id: int) -> None:
        self.process = process
        self.id = job_id
        self.queue: queue.Queue = queue.Queue()
        self._cancel_sent = False

    def cancel(self) -> None:
        if not self._cancel_sent:
            self._cancel_sent = True
            self.process._post(("cancel", self.id))

    def events(self, cancel: Any = None, poll_s: float = 0.05) -> Iterator[Any]:
        """Yield the job's events as they come; return its result or raise its error.

        ``cancel``: a local :class:`~napari_mtunet.events.CancelToken`, forwarded to the child when set.
        """
        while True:
            if cancel is not None and getattr(cancel, "cancelled", False):
                self.cancel()
            try:
                kind, value = self.queue.get(timeout=poll_s)
            except queue.Empty:
                continue
            if kind == "event":
                yield value
            elif kind == "result":
                return value
            else:  # "error"
                raise value

    def run(self, cancel: Any = None) -> Any:
        """Wait for the job and return its result (its events are dropped)."""
        gen = self.events(cancel)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value


class ComputeProcess:
    """The child process and the thread that reads what it sends."""

    def __init__(self, setup: str | None = None) -> None:
        env = dict(os.environ)
        if setup:
            env[SETUP_ENV] = setup
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "napari_mtunet.compute"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env, close_fds=True,
        )
        self._wlock = threading.Lock()
        self._jobs: dict[int, RemoteJob] = {}
        self._ids = itertools.count(1)
        self.info: dict[str, Any] = {}
        self.ready = threading.Event()
        self.dead = threading.Event()
        self.started = time.perf_counter()
        self._reader = threading.Thread(target=self._read, name="napari-mtunet compute reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return not self.dead.is_set() and self.proc.poll() is None

    def _post(self, message: tuple) -> bool:
        try:
            _send(self.proc.stdin, self._wlock, message)
            return True
        except (OSError, ValueError):  # the child is gone (broken pipe) or the pipe was closed
            return False

    def submit(self, func: str | Callable, args: tuple = (), kwargs: dict | None = None,
               cancellable: bool = False) -> RemoteJob:
        job = RemoteJob(self, next(self._ids))
        self._jobs[job.id] = job
        if self.dead.is_set() or not self._post(("run", job.id, func, tuple(args), dict(kwargs or {}), cancellable)):
            self._jobs.pop(job.id, None)
            job.queue.put(("error", self._died_error()))
        return job

    def _died_error(self) -> ComputeProcessDied:
        rc = self.proc.poll()
        how = f"exit code {rc}" if rc is not None and rc >= 0 else f"signal {-rc}" if rc is not None else "no reply"
        hint = " (killed: out of memory?)" if rc in (-9, 137) else ""
        return ComputeProcessDied(
            f"the napari-mtunet compute process stopped unexpectedly ({how}{hint}); nothing of yours was changed "
            "by it. The next action starts a new one."
        )

    def _read(self) -> None:
        try:
            while True:
                msg = _recv(self.proc.stdout)
                kind = msg[0]
                if kind == "ready":
                    self.info = dict(msg[1])
                    self.ready.set()
                    continue
                job = self._jobs.get(msg[1])
                if job is None:
                    continue
                try:
                    value = pickle.loads(msg[2])
                except Exception as exc:  # noqa: BLE001 - this job's value only; the connection is fine
                    kind, value = "error", RemoteError(f"the job's {kind} could not be read back ({exc})")
                if kind == "event":
                    job.queue.put(("event", value))
                else:
                    self._jobs.pop(msg[1], None)
                    job.queue.put((kind, value))
        except Exception as exc:  # noqa: BLE001 - EOF or a broken pipe: the child is gone
            if os.environ.get("MTUNET_DEBUG"):
                print(f"napari-mtunet compute reader: {exc!r}", file=sys.stderr)
        self.dead.set()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        err = self._died_error()
        for job in list(self._jobs.values()):
            job.queue.put(("error", err))
        self._jobs.clear()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Ask the child to stop its jobs and exit; kill it after ``timeout``."""
        self._post(("quit",))
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.dead.set()


_CLIENT: dict[str, Any] = {"process": None, "setup": None}
_CLIENT_LOCK = threading.Lock()


def client(start: bool = True) -> ComputeProcess | None:
    """The session's compute process (started, or restarted after a crash, when ``start``)."""
    with _CLIENT_LOCK:
        proc = _CLIENT["process"]
        if (proc is None or not proc.alive) and start:
            proc = ComputeProcess(setup=_CLIENT["setup"])
            _CLIENT["process"] = proc
        return proc


def shutdown(timeout: float = 5.0) -> None:
    """Stop the session's compute process (a later :func:`client` starts a new one)."""
    with _CLIENT_LOCK:
        proc, _CLIENT["process"] = _CLIENT["process"], None
    if proc is not None:
        proc.shutdown(timeout)


def set_setup(setup: str | None) -> None:
    """Run ``"module:function"`` first thing in every compute process started from now on (tests)."""
    _CLIENT["setup"] = setup


def run_job(func: str | Callable, *args: Any, cancel: Any = None, cancellable: bool = False, **kwargs: Any):
    """A generator that runs ``func(*args, **kwargs)`` in the compute process, yields its events and returns
    its result (``cancel``: a local token; setting it stops the job at its next check)."""
    job = client().submit(func, args, kwargs, cancellable=cancellable or cancel is not None)
    return (yield from job.events(cancel))


# --------------------------------------------------------------------------- the child's side


def _lower_priority() -> None:  # pragma: no cover - runs in the child
    """Yield the CPU to napari's process when both want it (:data:`NICE_ENV`)."""
    try:
        nice = int(os.environ.get(NICE_ENV, DEFAULT_NICE))
    except ValueError:
        nice = DEFAULT_NICE
    if nice <= 0:
        return
    try:
        if hasattr(os, "nice"):
            os.nice(min(nice, 19))
        elif sys.platform == "win32":
            import ctypes

            below_normal = 0x00004000
            ctypes.windll.kernel32.SetPriorityClass(ctypes.windll.kernel32.GetCurrentProcess(), below_normal)
    except (OSError, AttributeError):
        pass


def _serve() -> None:  # pragma: no cover - runs in the child (tests drive it through the widgets)
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in napari's terminal is napari's; we follow its stdin
    _lower_priority()
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # anything printed (Python or C) goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    lock = threading.Lock()
    setup = os.environ.get(SETUP_ENV)
    if setup:
        resolve(setup)()

    from .events import CancelToken

    tokens: dict[int, CancelToken] = {}
    threads: list[threading.Thread] = []

    def send(message: tuple) -> None:
        try:
            _send(proto_out, lock, message)
        except (OSError, ValueError):
            pass  # the parent is gone; the main loop sees EOF and exits

    def reply(kind: str, job_id: int, value: Any) -> None:
        """Send ``value`` pickled on its own (a value that does not pickle becomes the job's error)."""
        try:
            blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001
            blob = pickle.dumps(RemoteError(f"the job's {kind} could not be sent back ({exc})"))
            kind = "error"
        send((kind, job_id, blob))

    def warm() -> None:
        for name in WARM_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a missing optional module is reported where it is used
                pass
        info: dict[str, Any] = {"pid": os.getpid(), "devices": ["cpu"]}
        try:
            import torch

            from .device import available_devices

            info["devices"] = available_devices()
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # one core stays with the user interface
            info["threads"] = torch.get_num_threads()
        except Exception:  # noqa: BLE001 - "cpu" stays the choice
            pass
        send(("ready", info))

    def run(job_id: int, func: Any, args: tuple, kwargs: dict, cancellable: bool) -> None:
        try:
            fn = resolve(func)
            if cancellable:
                kwargs["cancel"] = tokens[job_id]
            if inspect.isgeneratorfunction(fn):
                gen = fn(*args, **kwargs)
                while True:
                    try:
                        ev = next(gen)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    reply("event", job_id, ev)
            else:
                result = fn(*args, **kwargs)
            reply("result", job_id, result)
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the widget
            reply("error", job_id, remote_error(exc))
        finally:
            tokens.pop(job_id, None)

    threading.Thread(target=warm, name="warm-up", daemon=True).start()
    try:
        while True:
            msg = _recv(proto_in)
            if msg[0] == "run":
                _, job_id, func, args, kwargs, cancellable = msg
                tokens[job_id] = CancelToken()
                t = threading.Thread(target=run, args=(job_id, func, args, kwargs, cancellable),
                                     name=f"job {job_id}", daemon=True)
                threads.append(t)
                t.start()
            elif msg[0] == "cancel":
                token = tokens.get(msg[1])
                if token is not None:
                    token.cancel()
            elif msg[0] == "quit":
                break
    except (EOFError, OSError):
        pass  # the parent went away
    for token in list(tokens.values()):
        token.cancel()
    deadline = time.monotonic() + 10.0  # let cancelled jobs reach their next check (checkpoints stay whole)
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    # run the module's own copy, not this __main__ one: what it pickles (RemoteError ...) must name the module
    from napari_mtunet.compute import _serve as serve

    serve()
