"""A model card (README.md in the Hub's format: YAML front matter, then Markdown) for every model
prefkit trains, written from the run's `prefkit_train_report.json` and, for a model trained on
reward-augmented data, its `prefkit_conditioning.json`.

The card says what the model was trained on (data file and its SHA-256), with which loss, β/ε
and steps, and, when it has one, the conditioning and how to apply it (prefkit.generate,
`prefkit models export-chat-template`, or the text to put in front of a prompt by hand). It
replaces the empty card PEFT writes beside a LoRA adapter; `prefkit models merge-lora` writes a
card for the merged model too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from prefkit import __version__
from prefkit.files import atomic_write_text
from prefkit.relabel.conditioning import ConditioningSpec

CARD_FILE = "README.md"
TRAIN_REPORT_FILE = "prefkit_train_report.json"
CONDITIONING_FILE = "prefkit_conditioning.json"


def data_fingerprint(source) -> str | None:
    """SHA-256 of a data file (or of every file in a dataset directory, by relative path); None for
    in-memory data or a hub id."""
    p = Path(str(source)) if source else None
    if p is None or not p.exists():
        return None
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _front_matter(report: dict[str, Any], *, lora: bool, conditioned: bool, merged_from: str | None) -> dict:
    cfg = report.get("config") or {}
    kind = report.get("kind", "dpo")
    tags = ["prefkit", kind if kind != "rm" else "reward-model"]
    if kind == "dpo":
        tags.append(str(cfg.get("loss_type", "sigmoid")))
    if conditioned:
        tags.append("reward-augmented")
    if lora:
        tags.append("lora")
    meta: dict[str, Any] = {"library_name": "peft" if lora else "transformers", "tags": tags}
    base = cfg.get("model_name_or_path")
    if base and not str(base).startswith("<"):
        meta["base_model"] = str(base)
    meta["pipeline_tag"] = "text-classification" if kind == "rm" else "text-generation"
    if merged_from:
        meta["tags"].append("merged-lora")
    return meta


def render_card(report: dict[str, Any], conditioning: dict[str, Any] | None, *, lora: bool = False,
                data_sha256: str | None = None, merged_from: str | None = None) -> str:
    """The card's text from a train report and an optional conditioning spec (as dicts)."""
    cfg = report.get("config") or {}
    kind = report.get("kind", "dpo")
    meta = _front_matter(report, lora=lora, conditioned=conditioning is not None, merged_from=merged_from)
    title = "reward model" if kind == "rm" else "policy"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# A {title} trained with prefkit", ""]
    if merged_from:
        lines += [f"The LoRA adapter `{merged_from}` merged into its base model (`prefkit models merge-lora`).", ""]
    elif lora:
        lines += ["A LoRA adapter (PEFT) on the base model below.", ""]
    data = report.get("data") or {}
    rows = []

    def row(name, value):
        if value is not None and value != "":
            rows.append(f"| {name} | {value} |")

    row("base model", f"`{cfg.get('model_name_or_path')}`" if cfg.get("model_name_or_path") else None)
    row("training data", f"`{cfg.get('train_file')}`" if cfg.get("train_file") else None)
    row("data SHA-256", f"`{data_sha256}`" if data_sha256 else "not recorded (in-memory data or a hub id)")
    row("pairs trained on", data.get("rows_out"))
    if kind == "dpo":
        row("loss", f"`{cfg.get('loss_type')}`")
        row("beta", cfg.get("beta"))
        if cfg.get("loss_type") == "eps-dpo":
            row("eps", cfg.get("eps"))
            row("final base beta", report.get("final_base_beta"))
    else:
        row("loss", "Bradley-Terry (`prefkit train rm`)")
    row("optimizer steps", report.get("global_step"))
    row("learning rate", cfg.get("learning_rate"))
    row("train loss (mean)", f"{report['train_loss']:.4g}" if isinstance(report.get("train_loss"), float) else None)
    row("LoRA", f"r={cfg.get('lora_r')}, alpha={cfg.get('lora_alpha')}" if cfg.get("use_peft") else None)
    row("trained", report.get("written"))
    row("prefkit version", __version__)
    lines += ["| | |", "|---|---|", *rows, ""]
    if conditioning is not None:
        lines += _conditioning_section(conditioning)
    lines += ["## Files", "",
              f"- `{TRAIN_REPORT_FILE}`: the full config, per-step metrics, dropped and truncated pairs.",
              *([f"- `{CONDITIONING_FILE}`: the conditioning spec (see above)."] if conditioning else []),
              "", "See prefkit's README.md and docs/train.md for what each setting means.", ""]
    return "\n".join(lines)


def _conditioning_section(spec_dict: dict[str, Any]) -> list[str]:
    spec = ConditioningSpec.from_dict(spec_dict)
    text = spec.render(None)
    where = ("as a system message" if spec.placement == "system"
             else "in front of the first user message, followed by a blank line")
    return ["## Conditioning (reward-augmented training)", "",
            "This model was trained on reward-augmented data (Zhang et al. 2024, arXiv 2410.08067): every "
            f"prompt carried a goal score, and at inference it should be conditioned on the best goal "
            f"({spec.best_goal:g} on the scale {spec.scale_min:g}-{spec.scale_max:g}). Put this text {where}:",
            "", "```text", text, "```", "",
            "How to apply it:", "",
            "- `prefkit.generate.generate` and `prefkit eval policy` read "
            f"`{CONDITIONING_FILE}` and condition prompts themselves.",
            "- For a server (`transformers serve`, vLLM, any OpenAI-compatible endpoint): "
            "`prefkit models export-chat-template DIR` writes the conditioning into the chat template, "
            "so plain messages are conditioned as in training (for a LoRA adapter, "
            "`prefkit models merge-lora ADAPTER -o DIR --export-chat-template` first).", ""]


def write_model_card(model_dir, *, merged_from: str | None = None) -> Path | None:
    """Write `model_dir/README.md` from the run's files there; None when the directory holds no
    train report (not a prefkit-trained model)."""
    d = Path(model_dir)
    report_path = d / TRAIN_REPORT_FILE
    if not report_path.is_file():
        return None
    report = json.loads(report_path.read_text(encoding="utf-8"))
    cond_path = d / CONDITIONING_FILE
    conditioning = json.loads(cond_path.read_text(encoding="utf-8")) if cond_path.is_file() else None
    lora = merged_from is None and (d / "adapter_config.json").is_file()
    sha = report.get("data_sha256")
    if sha is None:
        sha = data_fingerprint((report.get("config") or {}).get("train_file"))
    text = render_card(report, conditioning, lora=lora, data_sha256=sha, merged_from=merged_from)
    return Path(atomic_write_text(d / CARD_FILE, text))


def card_front_matter(path) -> dict[str, Any]:
    """The YAML front matter of a card file, as a dict (for tests and tools)."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]) or {}


__all__ = ["CARD_FILE", "card_front_matter", "data_fingerprint", "render_card", "write_model_card"]
