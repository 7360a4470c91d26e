"""The error contract shared by every console script (``ssl3d-pretrain``, ``ssl3d-probe``, ...).

    bad input or configuration      one line on stderr, ``PROG: error: <file>: <problem>``, exit 2
    an output that cannot be written one line (disk full, I/O error; earlier outputs intact), exit 1
    Ctrl-C                          ``PROG: interrupted``, exit 130
    anything else                   a bug: Python's traceback, exit 1

A script's ``main(argv) -> int`` gets the contract with ``@console_script(PROG)``; its argparse
parser shows the exit codes with ``epilog=EXIT_CODES_EPILOG``. ``main`` stays callable from Python
and still returns the exit status.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, Sequence

EXIT_OK = 0
EXIT_BUG = 1  # also: an output could not be written (disk full)
EXIT_BAD_INPUT = 2  # argparse uses 2 for usage errors too
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

EXIT_CODES_EPILOG = """exit status:
  0    done
  1    internal error (a bug: a traceback is shown), or an output could not be written
       (disk full, I/O error: one line; files written earlier are unchanged)
  2    bad input or configuration: one line names the file (or config key) and the problem
  130  interrupted (Ctrl-C)"""

# The project's user-facing error types, by module. They are looked up in sys.modules rather than
# imported: an exception of a type whose module was never imported cannot have been raised, and
# importing them here would load torch (checkpoint) into every script before it parses --help.
INPUT_ERRORS: tuple[tuple[str, str], ...] = (
    ("ssl3d_ros.config", "ConfigError"),
    ("ssl3d_ros.checkpoint.meta", "CheckpointError"),
    ("ssl3d_ros.codec.layout", "CloudFormatError"),  # defined there; the codec package imports it
    ("ssl3d_ros.io.errors", "ScanReadError"),
    ("ssl3d_ros.io.errors", "TopicSelectionError"),
    ("ssl3d_ros.io.errors", "NoScansError"),
    ("ssl3d_ros.io.errors", "UnknownScanFileError"),
    ("ssl3d_ros.training.data", "UnusableDataError"),
    ("ssl3d_ros.models.novelty", "NoveltyFitError"),
)
# A missing, unreadable or wrong-kind path given by the user; other OSErrors are output failures.
INPUT_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def input_error_types() -> tuple[type[BaseException], ...]:
    types = []
    for module_name, name in INPUT_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(getattr(module, name, None), type):
            types.append(getattr(module, name))
    return tuple(types)


def one_line(text: str) -> str:
    """``text`` on one line: its non-empty lines joined with '; '."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def describe_error(exc: BaseException) -> str:
    """``<file>: <problem>`` for a user-facing error (the message alone when it names no file)."""
    path = getattr(exc, "path", None)
    reason = getattr(exc, "reason", None)
    if isinstance(path, str) and isinstance(reason, str):  # ScanReadError
        return one_line(f"{path}: {reason}")
    if isinstance(exc, OSError) and exc.filename is not None:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return one_line(f"{target}: {exc.strerror or exc}")
    if isinstance(exc, OSError) and exc.strerror:  # OSError(errno, message) without a filename
        return one_line(exc.strerror)
    return one_line(str(exc)) or type(exc).__name__


#: (logger, message start) of warnings a user can do nothing about, kept out of every command's output.
#: torch 2.13 warns once per process that ``is_fx_tracing`` also covers torch.export whenever a class of
#: its FX-proxyable kind is built (here at model construction): the first line a user saw of
#: ssl3d-pretrain and ssl3d-probe, about torch's internals, not the run.
QUIET_WARNINGS: tuple[tuple[str, str], ...] = (
    ("torch.fx._symbolic_trace", "is_fx_tracing will return true for both"),
)


class _DropMessages(logging.Filter):
    def __init__(self, starts: Sequence[str]) -> None:
        super().__init__()
        self.starts = tuple(starts)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_known_warnings() -> None:
    """Drop the :data:`QUIET_WARNINGS` (idempotent: one filter per logger)."""
    by_logger: dict[str, list[str]] = {}
    for name, start in QUIET_WARNINGS:
        by_logger.setdefault(name, []).append(start)
    for name, starts in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(starts))


def run_main(prog: str, main: Callable[..., int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` under the contract above and return the exit status."""
    quiet_known_warnings()
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        if isinstance(exc.code, str):  # raise SystemExit("message"): the scripts' way to refuse input
            message = one_line(exc.code).removeprefix(f"{prog}: ")  # some messages carry the prefix already
            print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        raise  # argparse's --help (0) and usage errors (2) keep their status
    except INPUT_OS_ERRORS as exc:
        print(f"{prog}: error: {describe_error(exc)}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except OSError as exc:  # disk full, I/O error while writing outputs: not the user's input
        print(f"{prog}: error: {describe_error(exc)}", file=sys.stderr, flush=True)
        return EXIT_BUG
    except Exception as exc:
        if not isinstance(exc, input_error_types()):
            raise
        print(f"{prog}: error: {describe_error(exc)}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    return EXIT_OK if code is None else int(code)


def console_script(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorator giving a console script's ``main(argv=None)`` the error contract of ``run_main``."""
    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            return run_main(prog, main, argv)

        wrapper.unwrapped = main  # the bare main, for callers that want its exceptions
        return wrapper

    return wrap


__all__ = ["EXIT_OK", "EXIT_BUG", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_CODES_EPILOG", "INPUT_ERRORS",
           "console_script", "run_main", "describe_error", "one_line", "quiet_known_warnings", "QUIET_WARNINGS"]
