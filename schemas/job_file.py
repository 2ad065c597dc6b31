"""Reading a job file's YAML: one mapping of keys, or a ``JobFileError`` that says what is wrong.

PyYAML keeps the last of a key given twice; here it is an error naming both lines. Aliases
are counted where they are used, so a "billion laughs" of aliases is refused before it is
built. ``JobFileError`` is the one error an invalid job file raises, in reading or in
validation (``schemas.job``).
"""

from __future__ import annotations

from typing import Any

import yaml

#: The most YAML nodes a job file may expand to (aliases counted each time they are used): a job file
#: is a few dozen keys; a "billion laughs" of aliases is refused before it is built.
MAX_JOB_NODES = 10_000


class JobFileError(ValueError):
    """The job file is not valid; the message names each bad key."""


class _JobLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if key in seen:
                raise JobFileError(f"duplicate key `{key}` (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_nodes(node: yaml.Node, limit: int) -> int:
    """How many nodes ``node`` stands for once its aliases are expanded, counting no further than ``limit``."""
    count, stack = 0, [node]
    while stack:
        current = stack.pop()
        count += 1
        if count > limit:
            break
        if isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.extend((key, value))
    return count


def load_job_mapping(text: str, source: str = "job file") -> dict[str, Any]:
    """The top-level mapping of YAML job text, not yet validated; ``JobFileError`` if it is not one.

    A key given twice in a mapping is an error, and so is a file whose aliases expand past
    ``MAX_JOB_NODES`` nodes.
    """
    try:
        loader = _JobLoader(text)
        try:
            node = loader.get_single_node()  # type: ignore[no-untyped-call]
            if node is not None and _expanded_nodes(node, MAX_JOB_NODES) > MAX_JOB_NODES:
                raise JobFileError(f"{source}: expands to more than {MAX_JOB_NODES:,} YAML nodes (aliases "
                                   "counted where they are used); a job file is a few dozen keys")
            data = None if node is None else loader.construct_document(node)  # type: ignore[no-untyped-call]
        finally:
            loader.dispose()  # type: ignore[no-untyped-call]
    except JobFileError as exc:
        message = str(exc)
        raise JobFileError(message if message.startswith(source) else f"{source}: {message}") from None
    except yaml.YAMLError as exc:
        raise JobFileError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise JobFileError(f"{source}: expected a mapping of keys at the top level")
    return data
