"""Prompt templates are data files under ``prompts/<kind>/``; this module loads, hashes and renders them.

Every kind's templates share one YAML layout (``prompts/README.md`` has the whole of it)::

    # What this prompt is for (comments are free text).
    task: swap_obj                # the task the kind loads this file for
    system: |                     # the system prompt, the same in every mode ...
      ...
    systems:                      # ... or, instead, one per mode the kind renders in (negatives: edit, rewrite)
      edit: |
        ...
      rewrite: |
        ...
    edit_format: swap             # only for a kind that reads edits (negatives: swap, replace or rewrite)
    user: "Caption: {caption}"    # the user message: each of the kind's named slots exactly once
    examples:                     # optional few-shot turns: a value for each slot and the answer
      - caption: A cat sleeps on top of a suitcase.
        answer: cat <-> suitcase

The kind names the slots (negatives ``caption``; pairs ``sentence``, ``candidate``, ``topic``; ...) and the
modes; the file holds only text. :meth:`Template.messages` renders the system prompt of the mode, each example
as a user turn and an assistant turn (the kind may rewrite an example's answer, as negatives do in rewrite mode:
the edit applied to the caption), then the user message. Why this and no more: the kinds differ only in their
slot names and in negatives' two modes, so kind-named slots, a system prompt that may be split per mode, and
examples as slot values plus an answer cover every kind with one rule each and no template language.

Rendering never evaluates anything: each slot is filled by plain string splitting, so a value that contains
braces, another slot's name (``{caption}``), template syntax or instructions ("ignore the above ...") stays inert
text inside its slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.errors import TemplateError

SLOT = "{caption}"  # the negatives' caption slot as a user text spells it
FIELDS = ("task", "system", "systems", "edit_format", "user", "examples")
LAYOUT = "fix: see the template layout in prompts/README.md"


@dataclass(frozen=True)
class Example:
    """One few-shot turn: the value of each slot (the user turn) and the answer (the assistant turn)."""

    values: dict[str, str]
    answer: str  # negatives: in the template's edit format (the full sentence for rewrite templates)


@dataclass(frozen=True)
class Template:
    """One prompt file: a system prompt (``system``, or one per mode in ``systems``), a user message with the
    kind's named ``slots``, optional few-shot ``examples``, and ``edit_format`` where the kind reads edits."""

    task: str
    system: str | None  # None: ``systems`` holds one per mode
    systems: dict[str, str]  # mode -> system prompt; empty when ``system`` is set
    user: str
    slots: tuple[str, ...]
    examples: tuple[Example, ...]
    edit_format: str  # "" where the kind reads no edits
    sha256: str  # of the file's bytes: recorded on every row, hashed into unit keys
    path: Path

    def system_for(self, mode: str | None = None) -> str:
        """The system prompt for ``mode`` (the file's one ``system`` whatever the mode, else ``systems[mode]``)."""
        if self.system is not None:
            return self.system
        if mode not in self.systems:
            raise TemplateError(
                f"{self.path}: field 'systems' has no {mode!r} prompt, got {sorted(self.systems)}; "
                f"fix: add systems.{mode}"
            )
        return self.systems[mode]

    def render_user(self, values: dict[str, str]) -> str:
        """The user text with each slot replaced by its value, by splitting: values are never scanned."""
        pieces: list[str] = []
        rest = self.user
        while True:
            found = [(rest.find("{" + s + "}"), s) for s in self.slots if "{" + s + "}" in rest]
            if not found:
                return "".join(pieces) + rest
            at, slot = min(found)
            pieces += [rest[:at], values[slot]]
            rest = rest[at + len(slot) + 2 :]

    def messages(
        self, values: dict[str, str], mode: str | None = None, answer: Callable[[Example], str] | None = None
    ) -> tuple[tuple[str, str], ...]:
        """The system prompt of ``mode``, each example as a user/assistant turn (``answer(example)`` where the kind
        rewrites example answers, else the example's own), then the user message for ``values``."""
        msgs = [("system", self.system_for(mode).strip())]
        for ex in self.examples:
            msgs += [("user", self.render_user(ex.values)), ("assistant", ex.answer if answer is None else answer(ex))]
        return (*msgs, ("user", self.render_user(values)))


def _read_mapping(path: Path) -> tuple[bytes, dict]:
    """The file's bytes (hashed as the template's identity) and its YAML mapping; errors name the file."""
    if not path.exists():
        raise TemplateError(f"{path}: expected a template file, found no file; fix: create it or fix the folder")
    try:
        raw = path.read_bytes()
        data = yaml.safe_load(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TemplateError(f"{path}: expected a UTF-8 YAML template, could not read it: {exc}") from exc
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a YAML mapping, got {type(data).__name__}; {LAYOUT}")
    return raw, data


def _text(path: Path, field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        got = repr(value) if isinstance(value, str) else "nothing" if value is None else type(value).__name__
        raise TemplateError(f"{path}: field '{field}' must be a non-empty string, got {got}; {LAYOUT}")
    return value


def load_template(
    path: Path,
    slots: tuple[str, ...],
    *,
    task: str | None = None,
    modes: tuple[str, ...] = (),
    edit_formats: tuple[str, ...] = (),
) -> Template:
    """Load one template whose user message holds each of ``slots`` exactly once. ``task``: the task the file must
    name. ``modes``: the modes the kind renders in; the file gives either one ``system`` or ``systems`` with a
    prompt for each of them (no modes: ``system`` only). ``edit_formats``: the values ``edit_format`` may take,
    then required (none: the field is not allowed). Every error names the file and the field."""
    path = Path(path)
    raw, data = _read_mapping(path)
    for key in data:
        if key not in FIELDS:
            old = " (the old negatives layout: they go under systems.edit and systems.rewrite)"
            hint = old if key in ("system_edit", "system_rewrite") else ""
            raise TemplateError(
                f"{path}: field {key!r} is not a template field{hint}, expected {list(FIELDS)}; {LAYOUT}"
            )
    name = _text(path, "task", data.get("task"))
    if task is not None and name != task:
        raise TemplateError(f"{path}: field 'task' says {name!r}, expected {task!r}; fix: task: {task}")
    system, systems = data.get("system"), data.get("systems")
    if (system is None) == (systems is None):
        given = "both" if system is not None else "neither"
        raise TemplateError(f"{path}: expected field 'system' or field 'systems' (one per mode), got {given}; {LAYOUT}")
    if systems is not None:
        if not modes:
            raise TemplateError(f"{path}: field 'systems' is for kinds that render in modes; fix: use 'system'")
        if not isinstance(systems, dict) or sorted(map(str, systems)) != sorted(modes):
            got = sorted(map(str, systems)) if isinstance(systems, dict) else type(systems).__name__
            raise TemplateError(
                f"{path}: field 'systems' must give one prompt for each of {list(modes)}, got {got}; "
                f"fix: one key per mode ({', '.join(modes)}), or a single 'system' for every mode"
            )
        systems = {m: _text(path, f"systems.{m}", systems[m]) for m in modes}
    else:
        system = _text(path, "system", system)
    fmt = data.get("edit_format")
    if edit_formats and fmt not in edit_formats:
        raise TemplateError(
            f"{path}: field 'edit_format' must be {', '.join(edit_formats)}, got {fmt!r}; fix: set it to one of them"
        )
    if not edit_formats and fmt is not None:
        raise TemplateError(f"{path}: field 'edit_format' is not used by this kind, got {fmt!r}; fix: remove it")
    user = _text(path, "user", data.get("user"))
    for slot in slots:
        if (n := user.count("{" + slot + "}")) != 1:
            raise TemplateError(
                f"{path}: field 'user' must contain the slot {{{slot}}} exactly once, got {n}; "
                f"fix: the kind fills the slots {['{' + s + '}' for s in slots]}, each written once"
            )
    examples = []
    fields = [*slots, "answer"]
    for i, ex in enumerate(data.get("examples") or []):
        if (
            not isinstance(ex, dict)
            or sorted(map(str, ex)) != sorted(fields)
            or not all(isinstance(ex[f], str) for f in fields)
        ):
            got = sorted(map(str, ex)) if isinstance(ex, dict) else type(ex).__name__
            raise TemplateError(
                f"{path}: examples[{i}] needs string fields {fields}, got {got}; "
                "fix: a value for each slot and the answer, nothing else"
            )
        examples.append(Example({s: ex[s].strip() for s in slots}, ex["answer"].strip()))
    return Template(
        task=name,
        system=system,
        systems=systems or {},
        user=user,
        slots=tuple(slots),
        examples=tuple(examples),
        edit_format=fmt or "",
        sha256=hashlib.sha256(raw).hexdigest(),
        path=path,
    )
