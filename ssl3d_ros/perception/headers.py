"""What is wrong with an input cloud's ``std_msgs/Header``, without ROS: :func:`header_problems`.

Policy (the node's): a frame with a questionable header is still processed, and every output keeps
the input's stamp unchanged, the per-point clouds its ``frame_id`` too, an empty one included (the grid
and the obstacles are in the base frame: the input's unless ``frame.base_frame`` is set). Subscribers
match outputs to their input by header (stamp and frame, e.g. message_filters), so a restamped or
renamed output would match nothing, and a frame name made up here would place the data in a frame its
sender never meant. What the node adds is a sign: one throttled warning per kind of problem naming the field and its value,
and a ``/diagnostics`` counter per kind (``frames_header_<kind>``).
"""
from __future__ import annotations

from dataclasses import dataclass

FRAME_ID_MAX_CHARS = 256  # tf frame names are short; a longer one is a sender's bug (or a hostile one)
LOGGED_FRAME_ID_CHARS = 64  # how much of a frame_id a log line shows
# A stamp further ahead of the node's clock than this is not clock drift but a broken stamp
# (2^31 - 1 seconds, a time in nanoseconds written as seconds): a day, far beyond any NTP or PTP error.
FUTURE_TOLERANCE_S = 86_400
NANOSEC_PER_SEC = 1_000_000_000

# Every kind header_problems reports, in a fixed order: the /diagnostics counters are frames_header_<kind>.
HEADER_PROBLEM_KINDS = ("frame_id_empty", "frame_id_too_long", "stamp_zero", "stamp_sec_negative",
                        "stamp_nanosec_out_of_range", "stamp_in_future")
# The kinds that make the stamp meaningless as a time (the node keeps such frames out of its latency figures).
STAMP_PROBLEM_KINDS = frozenset(k for k in HEADER_PROBLEM_KINDS if k.startswith("stamp_"))

_KEPT = "processed; the outputs keep the input's stamp and frame_id unchanged"


@dataclass(frozen=True)
class HeaderProblem:
    """One problem of a header: ``kind`` (one of :data:`HEADER_PROBLEM_KINDS`) and its log line."""

    kind: str
    message: str


def loggable_frame_id(frame_id: str, limit: int = LOGGED_FRAME_ID_CHARS) -> str:
    """``frame_id`` as a log line shows it: quoted with its control characters escaped (a newline in it
    cannot forge a log line), cut to ``limit`` characters with its full length named."""
    if len(frame_id) <= limit:
        return repr(frame_id)
    return f"{frame_id[:limit]!r}... ({len(frame_id)} characters)"


def header_problems(frame_id: str, sec: int, nanosec: int, now_ns: int | None) -> list[HeaderProblem]:
    """The problems of an input header, in :data:`HEADER_PROBLEM_KINDS` order (empty when it is fine).

    ``now_ns`` is the node's clock (ROS time, simulated or not); None or 0 (a simulated clock before its
    first /clock message) skips the check of stamps in the future."""
    out: list[HeaderProblem] = []
    shown = loggable_frame_id(frame_id)
    if not frame_id:
        out.append(HeaderProblem("frame_id_empty", (
            f"input cloud with an empty header.frame_id: {_KEPT} (an empty frame_id too: a name made up "
            "here would put the data in a frame its sender never meant); set the sender's frame_id, "
            "or tf and RViz cannot place the outputs")))
    elif len(frame_id) > FRAME_ID_MAX_CHARS:
        out.append(HeaderProblem("frame_id_too_long", (
            f"input cloud with a header.frame_id of {len(frame_id)} characters (more than {FRAME_ID_MAX_CHARS}): "
            f"{shown}; {_KEPT}")))
    where = f"input cloud in frame {shown}"
    if sec == 0 and nanosec == 0:
        out.append(HeaderProblem("stamp_zero", (
            f"{where} has header.stamp 0 (sec 0, nanosec 0): {_KEPT}; its sender does not stamp its clouds, "
            "so time-based lookups (tf, message_filters) and the pipeline latency mean nothing for it")))
    if sec < 0:
        out.append(HeaderProblem("stamp_sec_negative", (
            f"{where} has a negative header.stamp.sec = {sec} (a time before 1970): {_KEPT}")))
    if nanosec >= NANOSEC_PER_SEC:
        out.append(HeaderProblem("stamp_nanosec_out_of_range", (
            f"{where} has header.stamp.nanosec = {nanosec}, not below 10^9 (not a valid time; the sender "
            f"should carry whole seconds into sec): {_KEPT}")))
    if now_ns and sec >= 0:
        ahead_s = (sec * NANOSEC_PER_SEC + nanosec - now_ns) / NANOSEC_PER_SEC
        if ahead_s > FUTURE_TOLERANCE_S:
            out.append(HeaderProblem("stamp_in_future", (
                f"{where} has header.stamp.sec = {sec}, {ahead_s:.3g} s ({ahead_s / 86_400 / 365.25:.3g} years) "
                f"ahead of the node's clock: {_KEPT}; the sender's clock or stamp is broken")))
    return out


__all__ = [
    "FRAME_ID_MAX_CHARS", "LOGGED_FRAME_ID_CHARS", "FUTURE_TOLERANCE_S", "NANOSEC_PER_SEC", "HEADER_PROBLEM_KINDS",
    "STAMP_PROBLEM_KINDS", "HeaderProblem", "loggable_frame_id", "header_problems",
]
