"""`prefkit models`: import a GGUF file into a Hugging Face directory, list the bundled models
(calls prefkit.models), export a trained model's conditioning as its chat template
(prefkit.relabel.export_chat_template), merge a LoRA adapter for serving (prefkit.lora_merge)."""

from __future__ import annotations

import sys


def register(sub, name, help_text):
    p = sub.add_parser(name, help=help_text, description=help_text + ".")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    imp = msub.add_parser(
        "import-gguf", help="turn a GGUF file (or a bundled model's name) into a normal model directory",
        description="Dequantise a GGUF file into a Hugging Face model directory (safetensors weights, "
        "tokenizer, chat template), once; later calls with the same file reuse it. Prints the directory.")
    imp.add_argument("gguf", help="a .gguf file, or a bundled model's name (see `prefkit models list`)")
    imp.add_argument("-o", "--output", default=None, metavar="DIR",
                     help="directory to write (default: <PREFKIT_CACHE>/models/<name>-<hash>, the cache "
                          "that --model shortcuts use)")
    imp.add_argument("--force", action="store_true", help="import again even when DIR already holds this file")
    imp.set_defaults(func=_import, _parser=imp)
    lst = msub.add_parser("list", help="bundled models and whether they are installed and imported",
                          description="Models that ship inside Python packages; any stage takes their name "
                          "as --model (for example --model smollm2).")
    lst.set_defaults(func=_list, _parser=lst)
    exp = msub.add_parser(
        "export-chat-template", help="write a trained model's reward conditioning into its chat template",
        description="Write the conditioning of a model trained on relabeled data (its "
        "prefkit_conditioning.json) into the tokenizer's chat template in DIR, so that servers "
        "(transformers serve, vLLM, any OpenAI-compatible endpoint) condition plain messages exactly as "
        "prefkit.generate does. See docs/relabel.md.")
    exp.add_argument("model_dir", metavar="DIR", help="the trained model directory")
    exp.add_argument("--goal", type=float, default=None,
                     help="goal score to condition on (default: the top of the spec's scale)")
    exp.set_defaults(func=_export_template, _parser=exp)
    mrg = msub.add_parser(
        "merge-lora", help="merge a LoRA adapter into its base model, for servers",
        description="Merge a LoRA adapter directory (prefkit train --use-peft) into its base model and write "
        "a full model directory that `transformers serve` and vLLM load, with the adapter's tokenizer, "
        "prefkit_conditioning.json and a model card. See docs/relabel.md, Serving.")
    mrg.add_argument("adapter", metavar="ADAPTER", help="the LoRA adapter directory")
    mrg.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write (replaced)")
    mrg.add_argument("--base", default=None,
                     help="base model (default: the adapter's base_model_name_or_path)")
    mrg.add_argument("--export-chat-template", action="store_true",
                     help="also write the reward conditioning into the merged model's chat template")
    mrg.add_argument("--goal", type=float, default=None,
                     help="with --export-chat-template: goal score (default: the top of the spec's scale)")
    mrg.set_defaults(func=_merge_lora, _parser=mrg)
    p.set_defaults(func=None, _parser=p)


def _import(args) -> int:
    from prefkit.models import BUNDLED_MODELS, bundled_gguf, import_gguf

    src = bundled_gguf(args.gguf) if args.gguf in BUNDLED_MODELS else args.gguf
    out = import_gguf(src, args.output, force=args.force, log=lambda m: print(m, file=sys.stderr))
    print(out)
    return 0


def _export_template(args) -> int:
    from prefkit.relabel import export_chat_template, load_conditioning

    out = export_chat_template(args.model_dir, goal=args.goal)
    spec = load_conditioning(out)
    print(f"{out}: chat template now conditions on {spec.render(args.goal)!r} ({spec.placement} placement)")
    return 0


def _merge_lora(args) -> int:
    from prefkit.lora_merge import merge_lora_for_serving

    out, conditions = merge_lora_for_serving(args.adapter, args.output, base=args.base,
                                             export_template=args.export_chat_template, goal=args.goal)
    note = "; its chat template applies the reward conditioning" if conditions else ""
    print(f"merged {args.adapter} into its base model: {out}{note}")
    return 0


def _list(args) -> int:
    from prefkit.errors import ConfigError
    from prefkit.models import BUNDLED_MODELS, bundled_gguf, import_gguf_target

    for name, spec in BUNDLED_MODELS.items():
        try:
            gguf = bundled_gguf(name)
        except ConfigError:
            print(f"{name:<10} {spec.description}\n{'':<10} not installed: {spec.install}")
            continue
        target, imported = import_gguf_target(gguf)
        state = f"imported at {target}" if imported else f"installed at {gguf}; imported on first use"
        print(f"{name:<10} {spec.description}\n{'':<10} {state}")
    return 0
