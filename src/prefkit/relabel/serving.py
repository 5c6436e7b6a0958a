"""Conditioning outside prefkit: the model's chat template conditions prompts itself.

A model trained on reward-augmented data answers well only when its prompt carries S(g*), the
conditioning text for the best goal (docs/methods.md section 1). `prefkit.generate` adds it from
`prefkit_conditioning.json`; a server (`transformers serve`, vLLM, any OpenAI-compatible
endpoint) knows nothing of that file but applies the tokenizer's chat template to the messages a
client sends. `export_chat_template(model_dir)` therefore writes a chat template that inserts
S(g*) exactly where `prefkit.relabel.condition` does, in front of the model's own template:

- system placement: a new system message first, or S(g*) + "\\n\\n" + the content of the system
  message the conversation opens with;
- user placement: S(g*) + "\\n\\n" + the first user turn (a conversation without one is an error,
  as in `condition`).

Messages that already carry the spec's conditioning (its template's longest fixed text, for any
goal) are left alone, so prompts conditioned by prefkit are not conditioned twice. The model's
own template stays inside the exported one (`base_chat_template` gives it back) and
`prefkit.generate` renders with that, conditioning as before.

    from prefkit.relabel import export_chat_template
    export_chat_template("runs/ra-dpo")      # then: transformers serve runs/ra-dpo / vllm serve runs/ra-dpo
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from prefkit.errors import ConfigError
from prefkit.models import HEADER_BEGIN, HEADER_END, base_chat_template, load_tokenizer
from prefkit.relabel.columns import SEPARATOR
from prefkit.relabel.conditioning import PLACEHOLDER, ConditioningSpec, load_conditioning

_MIN_MARK = 12   # a fixed text shorter than this could occur in a user's own prompt


def _literal(s: str) -> str:
    """A Jinja string literal for `s` (Jinja reads Python-style escapes)."""
    return json.dumps(s, ensure_ascii=False)


def conditioning_mark(spec: ConditioningSpec) -> str | None:
    """The longest fixed text of the spec's template (what every S(g) contains, whatever g), or
    None when it has none long enough to recognise."""
    pieces, last = [], 0
    for m in PLACEHOLDER.finditer(spec.template):
        if m.group(1) is not None:
            pieces.append(spec.template[last:m.start()])
            last = m.end()
    pieces.append(spec.template[last:])
    literals = [p.replace("{{", "{").replace("}}", "}") for p in pieces]
    best = max((p.strip() for p in literals), key=len, default="")
    return best if len(best) >= _MIN_MARK else None


def conditioned_chat_template(spec: ConditioningSpec, base_template: str,
                              goal: float | Mapping[str, float] | None = None) -> str:
    """A chat template that conditions on `goal` (default: the spec's best) as
    `prefkit.relabel.condition` does, then renders `base_template`."""
    base = base_chat_template(base_template)
    if not base:
        raise ConfigError("exporting the conditioning needs the model's chat template; the tokenizer has none")
    if spec.placement not in ("system", "user"):
        raise ConfigError(f"conditioning spec placement {spec.placement!r} is not resolved (system or user)")
    text = spec.render(goal)
    mark = conditioning_mark(spec)
    summary = json.dumps({"placement": spec.placement, "goal": list(spec.goal_vector(goal)),
                          "attributes": spec.attributes})
    lines = [
        f"{HEADER_BEGIN} {summary} -#}}",
        f"{{%- set prefkit_text = {_literal(text)} -%}}",
        f"{{%- set prefkit_sep = {_literal(SEPARATOR)} -%}}",
        "{%- set prefkit = namespace(done=false, first_user=true, out=[]) -%}",
    ]
    if mark is not None:
        lines += [
            f"{{%- set prefkit_mark = {_literal(mark)} -%}}",
            "{%- for m in messages -%}",
            "{%- if m['content'] is string and prefkit_mark in m['content'] -%}{%- set prefkit.done = true -%}"
            "{%- endif -%}",
            "{%- endfor -%}",
        ]
    if spec.placement == "system":
        lines += [
            "{%- if not prefkit.done -%}",
            "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] is string -%}",
            "{%- set messages = [{'role': 'system', 'content': prefkit_text + prefkit_sep + messages[0]['content']}]"
            " + messages[1:] -%}",
            "{%- else -%}",
            "{%- set messages = [{'role': 'system', 'content': prefkit_text}] + messages -%}",
            "{%- endif -%}",
            "{%- endif -%}",
        ]
    else:
        lines += [
            "{%- if not prefkit.done -%}",
            "{%- for m in messages -%}",
            "{%- if prefkit.first_user and m['role'] == 'user' and m['content'] is string -%}",
            "{%- set prefkit.out = prefkit.out + [{'role': 'user', 'content': prefkit_text + prefkit_sep + "
            "m['content']}] -%}",
            "{%- set prefkit.first_user = false -%}",
            "{%- else -%}",
            "{%- set prefkit.out = prefkit.out + [m] -%}",
            "{%- endif -%}",
            "{%- endfor -%}",
            "{%- if prefkit.first_user -%}"
            "{{- raise_exception('user placement needs a user turn in the prompt, found none') -}}"
            "{%- endif -%}",
            "{%- set messages = prefkit.out -%}",
            "{%- endif -%}",
        ]
    return "\n".join(lines) + "\n" + HEADER_END + base


def export_chat_template(model_dir: str | os.PathLike, *, goal: float | Mapping[str, float] | None = None,
                         spec: ConditioningSpec | None = None) -> Path:
    """Write the conditioning of the model in `model_dir` into its tokenizer's chat template, so
    that servers condition plain messages as `prefkit.generate` does. Returns the directory.

    spec: default, the directory's `prefkit_conditioning.json` (written by `prefkit train` for
    relabeled data). goal: default, the spec's best goal. Exporting again replaces the earlier
    export (the model's own template is kept inside)."""

    d = Path(model_dir)
    if spec is None:
        spec = load_conditioning(d)
        if spec is None:
            raise ConfigError(f"{d}: no prefkit_conditioning.json (was this model trained on relabeled data?)")
    tok = load_tokenizer(str(d))
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):
        raise ConfigError(f"{d}: the tokenizer has several named chat templates; export supports one")
    tok.chat_template = conditioned_chat_template(spec, template, goal)
    tok.save_pretrained(str(d))
    return d

