"""A LoRA adapter made servable: merged into its base model, with its conditioning (and, when
asked, the conditioning written into the chat template) and a model card.

`transformers serve` and vLLM load full model directories, not PEFT adapters; this is what
`prefkit models merge-lora ADAPTER -o DIR [--export-chat-template]` runs (docs/relabel.md,
"Serving").
"""

from __future__ import annotations

import json
from pathlib import Path

from prefkit.errors import ConfigError
from prefkit.model_card import write_model_card
from prefkit.models import is_conditioned_template, merge_lora
from prefkit.relabel.conditioning import load_conditioning
from prefkit.relabel.serving import export_chat_template


def merge_lora_for_serving(adapter_dir, out_dir, *, base=None, export_template: bool = False,
                           goal=None) -> tuple[Path, bool]:
    """Merge `adapter_dir` into its base and save it to `out_dir` (see prefkit.models.merge_lora);
    with `export_template` write the conditioning into the chat template (a ConfigError when the
    adapter has no prefkit_conditioning.json). Returns (out_dir, whether the chat template
    conditions)."""
    out = merge_lora(adapter_dir, out_dir, base)
    spec = load_conditioning(out)
    if export_template:
        if spec is None:

            raise ConfigError(f"{adapter_dir}: no prefkit_conditioning.json, so there is no conditioning to "
                              "export (was the adapter trained on relabeled data?)")
        export_chat_template(out, spec=spec, goal=goal)
    write_model_card(out, merged_from=str(adapter_dir))
    return out, _template_conditions(out)


def _template_conditions(model_dir: Path) -> bool:

    for name in ("chat_template.jinja", "tokenizer_config.json"):
        f = Path(model_dir) / name
        if not f.is_file():
            continue
        text = f.read_text(encoding="utf-8")
        if name.endswith(".json"):
            text = json.loads(text).get("chat_template") or ""
        if is_conditioned_template(text if isinstance(text, str) else None):
            return True
    return False
