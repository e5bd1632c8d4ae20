"""Trains a tiny causal Transformer with attnkit attention, once per mechanism, and saves the
loss curves as a PNG.

Task: sequences x_t = (a + b t) mod V with a random start a and step b per sequence; predicting
the next token needs the two previous ones, so the model has to attend. Loss starts at
ln V (= 2.77 for V = 16).

    .venv/bin/python examples/train_tiny.py --steps 300 --png docs/training_loss.png
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import attnkit.torch as ak

VOCAB, SEQ, DIM, HEADS = 16, 32, 32, 4
MECHANISMS = {  # name -> (mechanism, config)
    "softmax": ("softmax", {}),
    "linear (elu1, kernel norm)": ("linear", {"map": "elu1", "norm": "kernel"}),
}


class TinyLM(nn.Module):
    def __init__(self, mechanism: str, config: dict, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(SEQ, DIM) * 0.1)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({
                "ln1": nn.LayerNorm(DIM), "ln2": nn.LayerNorm(DIM),
                "attn": ak.MultiheadAttention(DIM, HEADS, mechanism, causal=True, **config),
                "mlp": nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM)),
            }))
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, S] -> logits [B, S, V]
        h = self.embed(x) + self.pos[: x.shape[1]]
        for b in self.blocks:
            h = h + b["attn"](b["ln1"](h))
            h = h + b["mlp"](b["ln2"](h))
        return self.head(h)


def batch(g: torch.Generator, size: int) -> torch.Tensor:
    a = torch.randint(0, VOCAB, (size, 1), generator=g)
    b = torch.randint(1, VOCAB, (size, 1), generator=g)
    return (a + b * torch.arange(SEQ + 1)) % VOCAB


def train(mechanism: str, config: dict, steps: int, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    model = TinyLM(mechanism, config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = batch(g, 32)
        logits = model(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--png", default="", help="where to save the loss curves (PNG)")
    args = p.parse_args(argv)
    curves = {}
    for label, (name, config) in MECHANISMS.items():
        t0 = time.perf_counter()
        curves[label] = train(name, config, args.steps)
        tail = curves[label][-20:]
        print(f"{label:28s} loss {curves[label][0]:.3f} -> {sum(tail) / len(tail):.3f} "
              f"(ln V = {math.log(VOCAB):.3f}) in {time.perf_counter() - t0:.1f} s")
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, losses in curves.items():
            ax.plot(losses, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.set_yscale("log")
        ax.set_title("Tiny causal LM, 2 layers, attnkit attention")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"saved {args.png}")
    return curves


if __name__ == "__main__":
    main()
