"""The conditioning text S(g) of reward-augmented data, and where it goes in a prompt.

A `ConditioningSpec` holds everything needed to condition a prompt on a goal score the same
way at training and at inference: the template text, the placement (system message or
prefix of the first user turn), the attributes that carry goals, the score scale (its maximum
is the goal used at inference) and the rounding applied to goals.

Template format (a plain text file or string):
  {goal}        the overall goal (single-attribute specs, or when 'overall' is an attribute)
  {goal_lines}  one line per attribute, e.g. "Overall score: 8." or "Helpfulness score: 4.5."
  {<attr>}      the goal of one attribute by name, e.g. {helpfulness}
  {scale_min} {scale_max}   the ends of the score scale
  {{ and }}     literal braces
Any other {name} is an error when the template is loaded. One trailing newline of a template
file is dropped. Goals print as integers when whole (8) and with their decimals otherwise (8.5).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from prefkit.errors import ConfigError
from prefkit.models import load_tokenizer

CONDITIONING_FILE = "prefkit_conditioning.json"
BESIDE_SUFFIX = ".conditioning.json"
PLACEMENTS = ("system", "user", "auto")
OVERALL = "overall"

# Our own wording of the method's instruction (docs/methods.md section 1): answer while aiming,
# implicitly, at the target scores on the scale, then one line per goal.
DEFAULT_TEMPLATE = (
    "Write a response to the instruction below. Without referring to them, aim for the quality "
    "targets listed here; each is rated from {scale_min} (lowest) to {scale_max} (highest).\n"
    "{goal_lines}"
)

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def format_goal(value: float) -> str:
    """8.0 -> '8', 8.5 -> '8.5' (shortest decimal form that round-trips)."""
    v = float(value)
    if math.isnan(v):
        raise ValueError("goal score is NaN")
    if v.is_integer():
        return str(int(v))
    return repr(v)


def attribute_label(attr: str) -> str:
    """'overall' -> 'Overall score'; 'instruction_following' -> 'Instruction following score'."""
    words = attr.replace("_", " ").replace("-", " ").strip()
    return (words[:1].upper() + words[1:] + " score") if words else "Score"


def parse_attributes(attributes: str | Sequence[str] | None) -> list[str]:
    if attributes is None:
        return [OVERALL]
    if isinstance(attributes, str):
        attributes = [a for a in (p.strip() for p in attributes.split(",")) if a]
    attrs = [str(a) for a in attributes]
    if not attrs:
        raise ConfigError("attributes: give at least one attribute name")
    if len(set(attrs)) != len(attrs):
        raise ConfigError(f"attributes: duplicate names in {attrs}")
    return attrs


def load_template(template: str | os.PathLike | None) -> tuple[str, str | None]:
    """(template text, source file or None). A str naming an existing file is read as a file."""
    if template is None:
        return DEFAULT_TEMPLATE, None
    if isinstance(template, os.PathLike) or (isinstance(template, str) and "\n" not in template
                                             and os.path.isfile(template)):
        path = Path(template)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"template file {path}: {exc.strerror or exc}") from exc
        if text.endswith("\n"):
            text = text[:-1]
        return text, str(path)
    return str(template), None


def check_template(text: str, attributes: Sequence[str], source: str | None = None) -> None:
    """Raise ConfigError for unknown placeholders or a template that shows no goal."""
    where = f"template file {source}" if source else "template"
    allowed = {"goal_lines", "scale_min", "scale_max", *attributes}
    if OVERALL in attributes or len(attributes) == 1:
        allowed.add("goal")
    shows_goal = False
    for m in PLACEHOLDER.finditer(text):
        name = m.group(1)
        if name is None:
            continue
        if name not in allowed:
            hint = "" if name != "goal" else " ({goal} needs a single attribute or 'overall'; use {goal_lines})"
            raise ConfigError(f"{where}: unknown placeholder {{{name}}}{hint}; "
                              f"known: {', '.join('{' + a + '}' for a in sorted(allowed))}")
        if name not in ("scale_min", "scale_max"):
            shows_goal = True
    if not shows_goal:
        raise ConfigError(f"{where}: no goal placeholder ({{goal}}, {{goal_lines}} or an attribute name); "
                          f"if you meant a template file, it does not exist: {text[:80]!r}")


@dataclass
class ConditioningSpec:
    """How prompts were conditioned on goal scores; saved as prefkit_conditioning.json."""

    template: str = DEFAULT_TEMPLATE
    placement: str = "system"          # 'system' or 'user' (resolved; 'auto' only before resolving)
    attributes: list[str] = field(default_factory=lambda: [OVERALL])
    scale_min: float = 1.0
    scale_max: float = 10.0
    round_scores: int | None = None
    prompt_format: str | None = None   # 'string' or 'conversational', as trained
    version: int = 1

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        self.attributes = parse_attributes(self.attributes)
        if not float(self.scale_min) < float(self.scale_max):
            raise ConfigError(f"scale: min {self.scale_min} must be below max {self.scale_max}")
        if self.round_scores is not None and int(self.round_scores) < 0:
            raise ConfigError(f"round_scores must be >= 0, got {self.round_scores}")
        check_template(self.template, self.attributes)

    @property
    def best_goal(self) -> float:
        """The goal used at inference: the top of the scale (10 for UltraFeedback)."""
        return float(self.scale_max)

    @property
    def multi_attribute(self) -> bool:
        return self.attributes != [OVERALL]

    def goal_vector(self, goal: float | Mapping[str, float] | None = None) -> tuple[float, ...]:
        """A goal for every attribute: None -> best goal; a number -> that goal for all; a mapping by name."""
        if goal is None:
            goal = self.best_goal
        if isinstance(goal, Mapping):
            missing = [a for a in self.attributes if a not in goal]
            extra = [k for k in goal if k not in self.attributes]
            if missing or extra:
                raise ConfigError(f"goal: expected attributes {self.attributes}, missing {missing}, unknown {extra}")
            vals = [float(goal[a]) for a in self.attributes]
        else:
            vals = [float(goal)] * len(self.attributes)
        if self.round_scores is not None:
            vals = [round(v, int(self.round_scores)) for v in vals]
        return tuple(vals)

    def render(self, goal: float | Mapping[str, float] | Sequence[float] | None = None) -> str:
        """S(g): the conditioning text for one goal (number, {attr: number}, or a vector in attribute order)."""
        if isinstance(goal, (list, tuple)):
            if len(goal) != len(self.attributes):
                raise ConfigError(f"goal vector has {len(goal)} values for attributes {self.attributes}")
            vec = tuple(float(v) for v in goal)
        else:
            vec = self.goal_vector(goal)
        return self._render_vector(vec)

    def _render_vector(self, vec: Sequence[float]) -> str:
        texts = {a: format_goal(v) for a, v in zip(self.attributes, vec)}
        values = dict(texts)
        values["goal_lines"] = "\n".join(f"{attribute_label(a)}: {t}." for a, t in texts.items())
        values["scale_min"] = format_goal(self.scale_min)
        values["scale_max"] = format_goal(self.scale_max)
        if OVERALL in texts:
            values["goal"] = texts[OVERALL]
        elif len(self.attributes) == 1:
            values["goal"] = texts[self.attributes[0]]

        def sub(m: re.Match) -> str:
            tok = m.group(0)
            if tok == "{{":
                return "{"
            if tok == "}}":
                return "}"
            return values[m.group(1)]

        return PLACEHOLDER.sub(sub, self.template)

    # -- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> "ConditioningSpec":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source or 'conditioning spec'}: unknown fields {unknown}")
        return cls(**dict(d))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `<directory>/prefkit_conditioning.json` (a model or dataset directory)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / CONDITIONING_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def write_beside(self, output: str | os.PathLike) -> Path:
        """Beside a dataset: `<dir>/prefkit_conditioning.json` for a directory, else `<file>.conditioning.json`."""
        out = Path(output)
        if out.is_dir():
            return self.save(out)
        path = out.with_name(out.name + BESIDE_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def _read_spec(path: Path) -> ConditioningSpec:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read conditioning spec: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: conditioning spec must be a JSON object")
    return ConditioningSpec.from_dict(data, source=str(path))


def load_conditioning(directory: str | os.PathLike) -> ConditioningSpec | None:
    """The spec saved in a model/dataset directory (or a direct path to the JSON file), else None."""
    p = Path(directory)
    if p.is_file():
        return _read_spec(p)
    path = p / CONDITIONING_FILE
    return _read_spec(path) if path.is_file() else None


def find_conditioning(data_path: str | os.PathLike) -> ConditioningSpec | None:
    """The spec written beside a relabeled dataset (file or directory), else None."""
    p = Path(data_path)
    if p.is_dir():
        return load_conditioning(p)
    beside = p.with_name(p.name + BESIDE_SUFFIX)
    return _read_spec(beside) if beside.is_file() else None


# -- placement ---------------------------------------------------------------------------------
_PROBE_SYSTEM = "prefkit-probe-system-7f3a"


def accepts_system_role(tokenizer) -> bool:
    """True when the tokenizer's chat template renders a system message (and shows its text).

    Probes `apply_chat_template` with a system + user conversation: templates that raise (Gemma)
    or silently drop the system text count as not accepting it."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError("placement 'auto' needs a tokenizer with a chat template")
    probe = [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": "hello"}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja2 TemplateError / raise_exception in the template: no system role
        return False
    return isinstance(text, str) and _PROBE_SYSTEM in text


def resolve_placement(placement: str, tokenizer=None) -> str:
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement != "auto":
        return placement
    return "system" if accepts_system_role(load_tokenizer(tokenizer)) else "user"


def make_spec(*, placement: str = "system", tokenizer=None, template=None, attributes=None,
              scale: tuple[float, float] = (1, 10), round_scores: int | None = None,
              prompt_format: str | None = None) -> ConditioningSpec:
    """Build a resolved spec from user options (template: text or a file path)."""
    attrs = parse_attributes(attributes)
    text, source = load_template(template)
    check_template(text, attrs, source)
    return ConditioningSpec(template=text, placement=resolve_placement(placement, tokenizer), attributes=attrs,
                            scale_min=float(scale[0]), scale_max=float(scale[1]), round_scores=round_scores,
                            prompt_format=prompt_format)
