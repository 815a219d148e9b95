"""The fine-tuning methods of the chapter, and their parameter counts.

Full fine-tuning trains everything; BitFit trains the bias terms only (a parameter filter of
:func:`lib.core.train.fit`, and the other parameters frozen so that no gradient is computed
for them); LoRA, (IA)3, LoHa, prompt tuning and prefix tuning come from Hugging Face
``peft``. Every method also trains the task head. :func:`analytic_count` gives each method's
added (or, for BitFit, selected) parameters from the architecture alone, as the papers
define them, so that ``peft``'s modules can be checked against the equations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

METHODS = ("full", "bitfit", "lora", "ia3", "loha", "prompt", "prefix")
PEFT = METHODS[1:]
LABELS = {
    "full": "full fine-tuning",
    "bitfit": "BitFit",
    "lora": "LoRA",
    "ia3": "(IA)$^3$",
    "loha": "LoHa",
    "prompt": "prompt tuning",
    "prefix": "prefix tuning",
}
# (IA)3 rescales keys, values and the input of each layer's second feed-forward matrix
# (BERT's `layer.i.output.dense`, not the attention's `attention.output.dense`).
IA3_TARGETS = r".*\.(key|value)$|.*layer\.\d+\.output\.dense$"
IA3_FEEDFORWARD = r".*layer\.\d+\.output\.dense$"


@dataclass(frozen=True)
class Sizes:
    """What the methods' sizes depend on: LoRA/LoHa rank and the virtual tokens."""

    rank: int = 8
    prompt_tokens: int = 20
    prefix_tokens: int = 20


def is_bias(name: str, p: nn.Parameter | None = None) -> bool:
    """BitFit's filter: bias terms of the encoder, and everything of the task head."""
    return name.endswith("bias") or name.startswith("head.")


def peft_config(method: str, sizes: Sizes):
    """The ``peft`` configuration of a method (None for full fine-tuning and BitFit)."""
    import peft

    if method == "lora":
        return peft.LoraConfig(
            r=sizes.rank, lora_alpha=2 * sizes.rank, target_modules=["query", "value"]
        )
    if method == "loha":
        return peft.LoHaConfig(
            r=sizes.rank, alpha=2 * sizes.rank, target_modules=["query", "value"]
        )
    if method == "ia3":
        return peft.IA3Config(target_modules=IA3_TARGETS, feedforward_modules=IA3_FEEDFORWARD)
    if method == "prompt":
        return peft.PromptTuningConfig(
            task_type="FEATURE_EXTRACTION", num_virtual_tokens=sizes.prompt_tokens
        )
    if method == "prefix":
        return peft.PrefixTuningConfig(
            task_type="FEATURE_EXTRACTION", num_virtual_tokens=sizes.prefix_tokens
        )
    if method in ("full", "bitfit"):
        return None
    raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")


class Encoder(nn.Module):
    """A (possibly ``peft``-wrapped) BERT encoder with the interface the heads expect:
    ``forward(input_ids, attention_mask).last_hidden_state`` with one vector per input
    position (prompt tuning's virtual positions are cut off) and ``config``."""

    def __init__(self, net: nn.Module, config, skip: int = 0) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.skip = skip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        h = self.net(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return SimpleNamespace(last_hidden_state=h[:, self.skip :])


def wrap(bert: nn.Module, method: str, sizes: Sizes = Sizes()) -> Encoder:
    """``bert`` (modified in place) prepared for ``method``: adapters added, the backbone
    frozen (all but its biases for BitFit, nothing for full fine-tuning)."""
    cfg = peft_config(method, sizes)
    if cfg is None:
        for n, p in bert.named_parameters():
            p.requires_grad_(method == "full" or is_bias(n))
        return Encoder(bert, bert.config)
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes on BERT's config, not errors
        net = peft.get_peft_model(bert, cfg)
    return Encoder(net, bert.config, sizes.prompt_tokens if method == "prompt" else 0)


def backbone_count(config) -> int:
    """Parameters of a BERT encoder without pooler, from its configuration:
    embeddings (V + P + T) d + 2d, and per layer 4d^2 + 2df + 9d + f."""
    d, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    emb = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * d
    return emb + 2 * d + L * (4 * d * d + 2 * d * f + 9 * d + f)


def analytic_count(method: str, config, sizes: Sizes = Sizes()) -> int:
    """Parameters a method trains in the encoder (the task head excluded), from the equations:
    LoRA r (d_in + d_out) per adapted matrix (query and value); LoHa twice that (two
    Hadamard factors); (IA)3 one vector per keys, values and feed-forward input (2d + f per
    layer); prompt tuning n d; prefix tuning n d per key and value of every layer; BitFit
    every bias (7d + f per layer, d for the embedding LayerNorm); full: the backbone."""
    d, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return {
        "full": backbone_count(config),
        "bitfit": L * (7 * d + f) + d,
        "lora": L * 2 * sizes.rank * (d + d),
        "loha": L * 2 * 2 * sizes.rank * (d + d),
        "ia3": L * (2 * d + f),
        "prompt": sizes.prompt_tokens * d,
        "prefix": sizes.prefix_tokens * L * 2 * d,
    }[method]


def counted(encoder: Encoder) -> dict[str, int]:
    """Parameters of a wrapped encoder, counted: ``trainable`` (requires_grad),
    ``total`` and ``backbone`` (the original model's, adapters excluded)."""
    names = dict(encoder.net.named_parameters())
    train = sum(p.numel() for p in names.values() if p.requires_grad)
    adapter = sum(
        p.numel()
        for n, p in names.items()
        if any(k in n for k in ("lora_", "hada_", "ia3_", "prompt_encoder"))
    )
    total = sum(p.numel() for p in names.values())
    return {"trainable": train, "total": total, "backbone": total - adapter}
