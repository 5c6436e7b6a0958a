"""The toy world's tokenizer and base policy.

- `world_tokenizer(config)`: a real byte-level BPE `PreTrainedTokenizerFast` (chatml template,
  which has a system role) trained on the task's text plus the reward-conditioning wording, so
  the fruit names and "Overall score: 7." are a few tokens each (byte-level BPE covers any text).
- `base_policy(config)`: a 2-layer Llama (width 128) trained from scratch by `pretrain` on noisy
  demonstrations of uniformly varying quality, so its samples span the gold-reward range. The
  result is saved under the cache directory keyed by a hash of the config, so reruns load it.
- The goal prior (`ToyWorldConfig.goal_prior`, `goal_noise`): a share of the demonstrations carry
  a quality goal in the relabeler's own conditioning format (`prefkit.relabel`'s default
  template, system placement): the demonstration's gold score plus Gaussian noise, rounded to a
  half point and clipped to 1-10. It stands in for what pretraining gives an LLM: some notion
  that "Overall score: 8." asks for a better answer than "Overall score: 3.". `goal_prior=0`
  is the world without it (the same demonstrations, no goals). docs/toy.md says how the default
  was chosen.
- `gold_evaluation(policies, prompts)`: `prefkit.evaluate.policy.evaluate_policies` with the gold reward;
  `goal_following_curve(model, prompts, goals)`: mean gold reward when conditioned on each goal.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from prefkit.evaluate.goal_curve import goal_following_curve as _goal_curve
from prefkit.evaluate.policy import evaluate_policies
from prefkit.relabel import condition, make_spec
from prefkit.report import progress_enabled
from prefkit.toy import task
from prefkit.toy.tiny import build_tokenizer, tiny_causal_lm

# Bump when the task, the corpus or the training code changes what a config produces.
# 2: the tokenizer corpus holds the relabeler's own conditioning text; the goal prior.
# 3: pretraining runs each step's batch as length-sorted micro-batches (the same loss, summed in
#    another order, so the trained weights differ in rounding).
WORLD_VERSION = 3

# Each pretraining step's batch runs as this many micro-batches of similar length: goal-conditioned
# demonstrations are ~35 tokens longer than the rest, so one padded batch was ~40% padding
# (measured: 0.29 s a step instead of 0.49 s, width 128, one thread).
PRETRAIN_MICRO_BATCHES = 4

CURVE_GOALS = (2, 4, 6, 8, 10)

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a careful assistant. Follow the instruction exactly.",
)

_CONDITIONING_WORDS = [
    "You are a helpful assistant. Respond to the instruction below while implicitly achieving the "
    "target scores on a scale of 1 to 10 (1 lowest, 10 highest).",
    "Answer the user's instruction and aim for the following goal scores, rated from 1 to 10.",
] + [f"Overall score: {g}." for g in list(range(1, 11)) + [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5]] + [
    f"{a.capitalize()} score: {g}." for a in task.ASPECTS for g in range(1, 11)
]


def conditioning_spec():
    """The relabeler's default conditioning (its template, system placement, a 1-10 scale)."""

    return make_spec(placement="system")


def _conditioning_texts() -> list[str]:
    spec = conditioning_spec()
    return [spec.render(g / 2) for g in range(2, 21)]


@dataclass(frozen=True)
class ToyWorldConfig:
    """Everything that determines the base policy (and so its cache key)."""

    seed: int = 0
    min_items: int = 3
    max_items: int = 6
    vocab_size: int = 768
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    n_demos: int = 6000
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    system_prob: float = 0.3   # share of demonstrations with a generic system message
    # The goal prior (docs/toy.md, "The goal prior"): chosen on the base policy's goal-following
    # curve alone, before any method was compared. goal_prior=0 is the world without it.
    goal_prior: float = 0.5    # share of demonstrations conditioned on a goal
    goal_noise: float = 1.0    # sd of the Gaussian noise added to the gold score to make that goal

    def key(self) -> str:
        blob = json.dumps({"version": WORLD_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


QUICK_CONFIG = ToyWorldConfig(n_demos=800, steps=60, hidden=64, batch_size=32, lr=5e-3)


def default_cache_dir() -> Path:
    root = os.environ.get("PREFKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prefkit")
    return Path(root) / "toy"


def tokenizer_corpus(config: ToyWorldConfig) -> list[str]:
    """Text the world's BPE is trained on: task prompts, responses, chatter, conditioning words."""
    rng = random.Random(config.seed + 1)
    prompts = task.make_prompts(2000, seed=config.seed + 2, min_items=config.min_items,
                                max_items=config.max_items)
    texts = list(prompts)
    texts += [task.perfect_response(p) for p in prompts[:500]]
    texts += [" ".join(rng.sample(task.ITEMS, 6)) for _ in range(500)]
    texts += list(task.CHATTER) * 20 + list(SYSTEM_PROMPTS) * 20 + _CONDITIONING_WORDS * 20
    texts += _conditioning_texts() * 5
    texts += ["system user assistant", "Sort List Put words alphabetically alphabetical order these"]
    return texts


def world_tokenizer(config: ToyWorldConfig | None = None):

    config = config or ToyWorldConfig()
    return build_tokenizer(tokenizer_corpus(config), vocab_size=config.vocab_size, template="chatml",
                           model_max_length=512)


def demonstrations(n: int, seed: int, config: ToyWorldConfig | None = None) -> list[dict]:
    """`n` noisy demonstrations {messages, quality, gold, goal}; quality ~ U(0, 1).

    With `config.goal_prior` > 0, that share of them is conditioned (as `prefkit.relabel`
    conditions training data) on goal = clip(round-to-half(gold + N(0, goal_noise)), 1, 10);
    `goal` is None for the others. The goal draws come from their own random stream, so the
    prompts, responses and generic system messages are the same with and without the prior.
    """
    config = config or ToyWorldConfig()
    rng = random.Random(seed)
    prior_rng = random.Random(f"goal-prior-{seed}")
    spec = conditioning_spec() if config.goal_prior > 0 else None
    rows = []
    for _ in range(n):
        prompt = task.make_prompt(rng, config.min_items, config.max_items)
        quality = rng.random()
        response = task.noisy_demonstration(prompt, rng, quality)
        messages = [{"role": "user", "content": prompt}]
        if rng.random() < config.system_prob:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        gold = task.gold_reward(prompt, response)
        goal = None
        if spec is not None and prior_rng.random() < config.goal_prior:
            goal = min(10.0, max(1.0, round(2 * (gold + prior_rng.gauss(0.0, config.goal_noise))) / 2))

            messages = condition(messages, goal=goal, spec=spec)
        rows.append({"messages": messages, "response": response, "quality": quality, "gold": gold, "goal": goal})
    return rows


def pretrain(model, tokenizer, rows: list[dict], *, steps: int, batch_size: int, lr: float,
             seed: int = 0, progress: bool = True) -> list[float]:
    """Supervised training on (messages, response) rows, loss on the response tokens and EOS.

    Each step samples `batch_size` rows; its loss is the mean token cross-entropy over all of their
    response tokens, computed over length-sorted micro-batches (`PRETRAIN_MICRO_BATCHES`) whose
    gradients add up to the whole batch's. Returns the loss per step. The model is trained in place
    and left in eval mode.
    """
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light
    examples = []
    for row in rows:
        prompt_ids = tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True,
                                                   tokenize=True, return_dict=False)
        if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
            prompt_ids = prompt_ids["input_ids"]
        response_ids = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        response_ids = response_ids + [tokenizer.eos_token_id]
        examples.append((list(prompt_ids), response_ids))

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    pad = tokenizer.pad_token_id
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="toy: pretraining base policy", unit="step", disable=not progress_enabled(progress))
    for _ in bar:
        idx = torch.randint(len(examples), (batch_size,), generator=gen).tolist()
        step_loss = batch_backward(model, [examples[i] for i in idx], pad)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def batch_backward(model, batch: list[tuple[list[int], list[int]]], pad: int,
                   micro_batches: int = PRETRAIN_MICRO_BATCHES) -> float:
    """Backward of the mean response-token cross-entropy of `batch` ((prompt ids, response ids)
    rows), run as `micro_batches` length-sorted, right-padded micro-batches: each adds its token
    losses divided by the whole batch's token count, so the gradients sum to the one-batch
    gradient. Returns the loss."""
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light
    import torch.nn.functional as F  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    batch = sorted(batch, key=lambda e: len(e[0]) + len(e[1]))
    n_tokens = sum(len(r) for _, r in batch)
    size = -(-len(batch) // micro_batches)
    total = 0.0
    for start in range(0, len(batch), size):
        chunk = batch[start:start + size]
        width = max(len(p) + len(r) for p, r in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, (p, r) in enumerate(chunk):
            seq = p + r
            input_ids[b, : len(seq)] = torch.tensor(seq)
            labels[b, len(p): len(seq)] = torch.tensor(r)
            attention[b, : len(seq)] = 1
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum") / n_tokens
        loss.backward()
        total += float(loss.detach())
    return total


def base_policy(config: ToyWorldConfig | None = None, cache_dir: str | Path | None = None,
                progress: bool = True, rebuild: bool = False) -> Path:
    """The directory of the world's base policy (model + tokenizer), trained on first use.

    Cached under `cache_dir` (default `$PREFKIT_CACHE/toy` or `~/.cache/prefkit/toy`) in
    `base-<config hash>`; a later call with the same config returns the cached directory.
    """

    config = config or ToyWorldConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / f"base-{config.key()}"
    if (out / "prefkit_toy_world.json").exists() and not rebuild:
        return out
    root.mkdir(parents=True, exist_ok=True)
    # One builder at a time per base: processes that need the same base at once (the regime map's
    # parallel processes, parallel test workers) wait for the first and then load its result,
    # instead of training it twice and replacing a directory another process is reading.
    with open(root / f".lock-{config.key()}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "prefkit_toy_world.json").exists() and not rebuild:
            return out
        return _build_base(config, root, out, progress)


def _build_base(config: ToyWorldConfig, root: Path, out: Path, progress: bool) -> Path:
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    t0 = time.time()
    tok = world_tokenizer(config)
    model = tiny_causal_lm(tok, arch="llama", hidden=config.hidden, layers=config.layers,
                           heads=config.heads, max_position=512, seed=config.seed)
    rows = demonstrations(config.n_demos, seed=config.seed + 3, config=config)
    threads = torch.get_num_threads()
    losses = pretrain(model, tok, rows, steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                      seed=config.seed, progress=progress)
    tmp = root / f".tmp-{config.key()}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    meta = {"config": dataclasses.asdict(config), "world_version": WORLD_VERSION,
            "final_loss": losses[-1], "first_loss": losses[0], "train_seconds": round(time.time() - t0, 1),
            "threads": threads,
            "demo_gold_mean": sum(r["gold"] for r in rows) / len(rows),
            "demos_with_goal": sum(r["goal"] is not None for r in rows)}
    (tmp / "prefkit_toy_world.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def gold_evaluation(policies, prompts, *, n: int = 4, temperature: float = 1.0, max_new_tokens: int = 24,
                    seed: int = 0, run_dir=None, output_dir=None, progress: bool = False) -> dict:
    """`prefkit.evaluate.policy.evaluate_policies` scored with the toy task's gold reward, batched
    128 samples at a time: the toy world's one way to evaluate a policy. `policies` as there
    ({name: model directory or PolicySpec}); sample j of every prompt is drawn with seed + j.
    Requests shared between calls with one `run_dir` (the same model, messages and sampling) are
    generated once, so an evaluation and a goal-following curve on the same prompts agree."""

    return evaluate_policies(policies, prompts, reward_fn=task.gold_reward, n=n, temperature=temperature,
                             max_new_tokens=max_new_tokens, seed=seed, batch_size=128, run_dir=run_dir,
                             output_dir=output_dir, progress=progress)


def goal_following_curve(model, prompts, goals=CURVE_GOALS, *, n: int = 4, temperature: float = 1.0,
                         max_new_tokens: int = 24, seed: int = 0, spec=None, run_dir=None,
                         progress: bool = False, per_prompt: bool = False) -> dict:
    """`prefkit.evaluate.goal_curve.goal_following_curve` scored with the gold reward, sampled as
    `gold_evaluation` samples; "gold" holds the mean gold reward per goal.

    spec: the conditioning to apply (default: the relabeler's default, system placement, which is
    what the goal prior and the demo's reward-augmented data use)."""

    curve = _goal_curve(model, prompts, list(goals), spec=spec if spec is not None else conditioning_spec(),
                        reward_fn=task.gold_reward, n=n, temperature=temperature, max_new_tokens=max_new_tokens,
                        seed=seed, batch_size=128, run_dir=run_dir, progress=progress, per_prompt=per_prompt)
    out = {"goals": curve["goals"], "gold": curve["mean"], "slope": curve["slope"]}
    if per_prompt:
        out["per_prompt"] = curve["per_prompt"]
    return out
