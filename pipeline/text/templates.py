"""Prompt templates are data files under ``prompts/``; this module loads, hashes and renders them.

Rendering never evaluates anything: the caption is placed into the single ``{caption}`` slot of the
user message by plain string splitting, so a caption that contains braces, template syntax or
instructions ("ignore the above ...") stays inert text inside its slot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from pipeline.errors import TemplateError

SLOT = "{caption}"
EditFormat = Literal["swap", "replace", "rewrite"]


@dataclass(frozen=True)
class Example:
    caption: str
    answer: str  # in the template's edit format (or a full sentence for rewrite templates)


@dataclass(frozen=True)
class Template:
    task: str
    edit_format: EditFormat
    system_edit: str | None
    system_rewrite: str
    user: str
    examples: tuple[Example, ...]
    sha256: str
    path: Path

    def render_user(self, caption: str) -> str:
        before, after = self.user.split(SLOT, 1)
        return before + caption + after


def _read_mapping(path: Path) -> tuple[bytes, dict]:
    """The file's bytes (hashed as the template's identity) and its YAML mapping; errors name the file."""
    try:
        raw = path.read_bytes()
        data = yaml.safe_load(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TemplateError(f"{path}: expected a UTF-8 YAML template, could not read it: {exc}") from exc
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return raw, data


def load_template(path: Path) -> Template:
    """Load one template file, checking every field; errors name the file and field."""
    raw, data = _read_mapping(path)
    fmt = data.get("edit_format")
    if fmt not in ("swap", "replace", "rewrite"):
        raise TemplateError(f"{path}: field 'edit_format' must be swap, replace or rewrite, got {fmt!r}")
    for name in ("task", "system_rewrite", "user") + (("system_edit",) if fmt != "rewrite" else ()):
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise TemplateError(f"{path}: field '{name}' must be a non-empty string")
    if data["user"].count(SLOT) != 1:
        raise TemplateError(f"{path}: field 'user' must contain the slot {SLOT} exactly once")
    key = "answer" if fmt == "rewrite" else "edit"
    examples = []
    for i, ex in enumerate(data.get("examples") or []):
        if not isinstance(ex, dict) or not isinstance(ex.get("caption"), str) or not isinstance(ex.get(key), str):
            raise TemplateError(f"{path}: examples[{i}] needs string fields 'caption' and '{key}'")
        examples.append(Example(ex["caption"].strip(), ex[key].strip()))
    return Template(
        task=data["task"],
        edit_format=fmt,
        system_edit=data.get("system_edit"),
        system_rewrite=data["system_rewrite"],
        user=data["user"],
        examples=tuple(examples),
        sha256=hashlib.sha256(raw).hexdigest(),
        path=path,
    )


def load_templates(folder: Path, tasks: list[str]) -> dict[str, Template]:
    """Load ``folder/<task>.yaml`` for each task; a missing file is a clear error."""
    out = {}
    for task in tasks:
        path = Path(folder) / f"{task}.yaml"
        if not path.exists():
            raise TemplateError(f"{path}: expected a template for task '{task}', found no file")
        tpl = load_template(path)
        if tpl.task != task:
            raise TemplateError(f"{path}: field 'task' says {tpl.task!r}, expected {task!r}")
        out[task] = tpl
    return out


@dataclass(frozen=True)
class ChatTemplate:
    """A system prompt, a user message with named slots (``{question}``...), and few-shot examples whose
    fields fill the same slots plus the assistant's ``answer``. Slots are filled by splitting the template
    text, never by formatting, so a value that contains ``{choices}`` or braces stays inert text."""

    task: str
    system: str
    user: str
    slots: tuple[str, ...]
    examples: tuple[dict[str, str], ...]
    sha256: str
    path: Path

    def render_user(self, values: dict[str, str]) -> str:
        pieces: list[str] = []
        rest = self.user
        while True:
            found = [(rest.find("{" + s + "}"), s) for s in self.slots if "{" + s + "}" in rest]
            if not found:
                return "".join(pieces) + rest
            at, slot = min(found)
            pieces += [rest[:at], values[slot]]
            rest = rest[at + len(slot) + 2 :]

    def messages(self, values: dict[str, str]) -> tuple[tuple[str, str], ...]:
        """System prompt, each example as a user/assistant turn, then the user message for ``values``."""
        msgs = [("system", self.system.strip())]
        for ex in self.examples:
            msgs += [("user", self.render_user(ex)), ("assistant", ex["answer"])]
        return (*msgs, ("user", self.render_user(values)))


def load_chat_template(path: Path, slots: tuple[str, ...]) -> ChatTemplate:
    """Load a chat template whose user message holds each of ``slots`` exactly once; errors name file and field."""
    raw, data = _read_mapping(path)
    for name in ("task", "system", "user"):
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise TemplateError(f"{path}: field '{name}' must be a non-empty string")
    for slot in slots:
        if data["user"].count("{" + slot + "}") != 1:
            raise TemplateError(f"{path}: field 'user' must contain the slot {{{slot}}} exactly once")
    examples = []
    for i, ex in enumerate(data.get("examples") or []):
        if not isinstance(ex, dict) or not all(isinstance(ex.get(f), str) for f in (*slots, "answer")):
            raise TemplateError(f"{path}: examples[{i}] needs string fields {[*slots, 'answer']}")
        examples.append({f: ex[f].strip() for f in (*slots, "answer")})
    return ChatTemplate(
        data["task"], data["system"], data["user"], slots, tuple(examples), hashlib.sha256(raw).hexdigest(), path
    )
