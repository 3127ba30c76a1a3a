"""Cost of AttnLRP/CP-LRP on the demo transformers, against a plain forward + gradient.

Interleaved best-of timing in one run (each round times every method once, in turn; the
best round counts): a plain forward and ``torch.autograd.grad`` of the top logit to the
input (the embedding output for the text model), ``lrp.epsilon`` (AttnLRP),
``lrp.epsilon`` with ``attention_rule="cp"``, ``lrp.z`` (AttnLRP with the z-rule on the
linear layers, whose relevance per unit is their own gradient: what ``lrp.epsilon`` costs
beyond it is the ε rule's), and — where ``lxt`` 2.1 is importable — LXT's
efficient path (Gradient × Input with its ``identity_rule_implicit``, ``divide_gradient``
and ``stop_gradient``, written into a functional copy of the model the way LXT patches
``vision_transformer``). Models: :class:`lit_explain.demo.TinyViT` (8×8, 2×2 patches,
dim 32, 2 blocks) and :class:`lit_explain.demo.TextTransformer` (length 16, dim 32,
2 layers), batch 16, on the CPU (or, with ``--device cuda``, the GPU, each timed call
ending with ``torch.cuda.synchronize()``)::

    python benchmarks/transformer_cost.py [--rounds 30] [--threads 2] [--batch 16] [--device cpu]

(Not named ``transformers.py``: run as a script, that name would shadow Hugging Face's
package, which torchmetrics imports where it is installed.)
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import lit_explain as lx
from lit_explain.demo import TextTransformer, TinyViT


def load_lxt_efficient_rules():
    """LXT's efficient rules module, loaded by path (its package imports ``transformers``)."""
    spec = importlib.util.find_spec("lxt")
    if spec is None:
        return None
    path = Path(spec.origin).parent / "efficient" / "rules.py"
    module_spec = importlib.util.spec_from_file_location("lxt_efficient_rules", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def lxt_layer_norm(x: Tensor, norm) -> Tensor:  # LXT's layer_norm_forward
    mean = x.mean(dim=-1, keepdim=True)
    std = ((x - mean) ** 2).mean(dim=-1, keepdim=True).add(norm.eps).sqrt()
    return (x - mean) / std.detach() * norm.weight + norm.bias


def lxt_attention(attn, x: Tensor, rules, blocked: Tensor | None = None) -> Tensor:
    """``nn.MultiheadAttention`` as LXT's patched attention computes it (AttnLRP)."""
    q, k, v = (F.linear(x, w, b).unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)
               for w, b in zip(attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3),
                               strict=True))
    q, k, v = rules.divide_gradient(q, 4), rules.divide_gradient(k, 4), \
        rules.divide_gradient(v, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    out = (torch.softmax(scores, -1) @ v).transpose(1, 2).flatten(2)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def lxt_vit(m: TinyViT, x: Tensor, rules) -> Tensor:
    h = m.patch(x).flatten(2).transpose(1, 2)
    h = torch.cat([m.cls.expand(len(h), -1, -1), h], dim=1) + m.pos
    for block in m.blocks:
        h = h + lxt_attention(block.attn, lxt_layer_norm(h, block.norm1), rules)
        hidden = rules.identity_rule_implicit(F.gelu, block.mlp[0](lxt_layer_norm(h, block.norm2)))
        h = h + block.mlp[2](hidden)
    return m.head(lxt_layer_norm(h[:, 0], m.norm))


def lxt_text(m: TextTransformer, e: Tensor, tokens: Tensor, rules) -> Tensor:
    padding = tokens == 0
    h = e + m.pos[:, :tokens.shape[1]]
    for layer in m.layers:
        h = lxt_layer_norm(h + lxt_attention(layer.self_attn, h, rules,
                                             padding[:, None, None, :]), layer.norm1)
        ff = layer.linear2(rules.identity_rule_implicit(F.gelu, layer.linear1(h)))
        h = lxt_layer_norm(h + ff, layer.norm2)
    keep = (~padding).to(h.dtype)[..., None]
    return m.out((h * keep).sum(1) / keep.sum(1))


def gradient_to_input(forward, x: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    logits = forward(x)
    (grad,) = torch.autograd.grad(logits.max(1).values.sum(), x)
    return grad * x


def methods(model, x: Tensor, tokens: Tensor | None, rules) -> dict:
    attn = lx.create_analyzer("lrp.epsilon", model)
    cp = lx.create_analyzer("lrp.epsilon", model, attention_rule="cp")
    z = lx.create_analyzer("lrp.z", model)
    source = x if tokens is None else tokens
    plain = (lambda e: model(e)) if tokens is None else None
    if tokens is not None:  # the plain gradient at the embedding output
        def plain(e: Tensor) -> Tensor:
            handle = model.embedding.register_forward_hook(lambda mod, a, out: e)
            try:
                return model(tokens)
            finally:
                handle.remove()
    table = {"forward + gradient": lambda: gradient_to_input(plain, x),
             "lrp.epsilon (AttnLRP)": lambda: attn.analyze(source),
             "lrp.epsilon (CP-LRP)": lambda: cp.analyze(source),
             "lrp.z (AttnLRP)": lambda: z.analyze(source)}
    if rules is not None:
        if tokens is None:
            table["LXT 2.1 efficient (AttnLRP)"] = lambda: gradient_to_input(
                lambda v: lxt_vit(model, v, rules), x)
        else:
            table["LXT 2.1 efficient (AttnLRP)"] = lambda: gradient_to_input(
                lambda v: lxt_text(model, v, tokens, rules), x)
    return table


def interleaved_best(table: dict, rounds: int) -> dict[str, float]:
    best = dict.fromkeys(table, float("inf"))
    for _ in range(rounds):
        for name, run in table.items():
            start = time.perf_counter()
            run()
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    rules = load_lxt_efficient_rules()
    vit = TinyViT().eval().to(device)
    text = TextTransformer().eval().to(device)
    for p in [*vit.parameters(), *text.parameters()]:
        p.requires_grad_(False)
    images = torch.rand(args.batch, 1, 8, 8).to(device)
    tokens = torch.randint(1, 40, (args.batch, 16)).to(device)
    tokens[:, 12:] = 0
    cases = {"TinyViT": methods(vit, images, None, rules),
             "TextTransformer": methods(text, text.embedding(tokens), tokens, rules)}
    for model_name, table in cases.items():
        best = interleaved_best(table, args.rounds)
        base = best["forward + gradient"]
        where = device if device.type == "cuda" else f"{args.threads} threads"
        print(f"\n{model_name} (batch {args.batch}, {where}, best of "
              f"{args.rounds} interleaved rounds)")
        for name, seconds in best.items():
            print(f"  {name:30s} {seconds * 1e3:8.2f} ms  {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
