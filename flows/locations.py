"""Where a job reads and writes, as the user meant it: local paths resolved, the output kept out of the input.

- ``~`` is expanded and a relative local path made absolute (against the working directory)
  when the job is read, so the run, its manifest and its messages all name the same place — and
  ``~/out`` is the home folder's ``out``, not a folder called ``~`` here.
- An input folder or glob that contains the output (or is it) would list the tool's own parts as
  prompt sets: the files a run writes into its output folder are never inputs.
- An output that is an existing file is a settings error, said in one line before anything runs.
"""

from __future__ import annotations

import os

import structlog

from flows.parts import part_shard
from flows.storage import redact_location
from schemas import JobSpec

log = structlog.get_logger(__name__)

_REMOTE = ("az://", "http://", "https://")


def resolve_local(location: str) -> str:
    """A local path with ``~`` expanded, made absolute; a blob location unchanged."""
    if location.startswith(_REMOTE):
        return location
    return os.path.abspath(os.path.expanduser(location))


def resolved(spec: JobSpec) -> JobSpec:
    """The job with its local ``input`` and ``output`` resolved (placeholders such as ``{date}`` kept)."""
    return spec.model_copy(update={"input": resolve_local(spec.input), "output": resolve_local(spec.output)})


def inside(location: str, folder: str) -> bool:
    """Whether ``location`` is ``folder`` or lies under it (query strings ignored)."""
    if location.startswith(_REMOTE) != folder.startswith(_REMOTE):
        return False
    path, root = redact_location(location).rstrip("/"), redact_location(folder).rstrip("/")
    if not location.startswith(_REMOTE):
        path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root + "/")


def written_by_us(location: str, output: str) -> bool:
    """Whether ``location`` is one of the files a run writes into ``output`` (a part, the manifest, …)."""
    if not inside(location, output):
        return False
    path, root = redact_location(location).rstrip("/"), redact_location(output).rstrip("/")
    if not location.startswith(_REMOTE):
        path, root = os.path.realpath(path), os.path.realpath(root)
    names = path[len(root) + 1:].split("/")
    return part_shard(names[-1]) is not None or any(n.startswith(("_", ".")) for n in names)


def without_output(files: list[str], output: str) -> list[str]:
    """The input files, less the output's own (logged when there were some): the output may be the input folder."""
    kept = [f for f in files if not written_by_us(f, output)]
    if len(kept) != len(files):
        log.warning("inputs_excluded", files=len(files) - len(kept), output=redact_location(output),
                    reason="they are inside the output folder")
    return kept


def output_problem(output: str) -> str | None:
    """Why a local ``output`` cannot be a folder of results, or ``None``."""
    if output.startswith(_REMOTE):
        return None
    path = output
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if path and os.path.exists(path) and not os.path.isdir(path):
        which = "is" if path == output.rstrip("/") else f"is inside {path}, which is"
        return f"output {output} {which} a file, not a folder: choose another --output"
    return None
