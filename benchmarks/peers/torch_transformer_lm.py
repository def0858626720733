"""PyTorch peer of jaxnets' decoder-only Transformer LM train step (run by
benchmarks/speed/transformer_step.py in its own venv; never imported by jaxnets).

    /tmp/peers/bin/python benchmarks/peers/torch_transformer_lm.py --vocab 65 --d-model 128 --heads 4 \
        --layers 3 --seq-len 128 --batch 32 --json

The same architecture as jaxnets.models.transformer.TransformerLM as experiments/
transformer_shakespeare.py configures it: token embedding x sqrt(d_model) plus sinusoidal or
learned positions; pre-LN layers (causal multi-head self-attention with biased q/k/v/out
projections, GELU (tanh form, as jax.nn.gelu) feed-forward of 4 x d_model); a final LayerNorm;
logits by the tied embedding. AdamW (b2 0.99, weight decay 0.1 on every parameter, as optax's
adamw) after clipping the global gradient norm to 1. Attention is PyTorch's fused
scaled_dot_product_attention (its fastest CPU path). `--autocast-bf16`: forward and loss under
torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's mixed precision on CPU (the peer of
jaxnets' train.compute_dtype=bfloat16). Last stdout line: one JSON object.
"""
import argparse
import json
import math
import platform
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Layer(nn.Module):
    def __init__(self, d, heads, dropout):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff_in, self.ff_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.dropout = dropout

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)),
                                           is_causal=True)
        x = x + F.dropout(self.o(a.transpose(1, 2).reshape(b, t, d)), self.dropout, self.training)
        y = self.ff_out(F.gelu(self.ff_in(self.ln2(x)), approximate="tanh"))
        return x + F.dropout(y, self.dropout, self.training)


class LM(nn.Module):
    def __init__(self, vocab, d, heads, layers, positions, max_len, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, std=1.0 / math.sqrt(d))
        self.d = d
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(max_len, d) * 0.02)
        else:
            pos = torch.arange(max_len)[:, None]
            inv = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2) / d)
            table = torch.zeros(max_len, d)
            table[:, 0::2], table[:, 1::2] = torch.sin(pos * inv), torch.cos(pos * inv)
            self.register_buffer("pos", table)
        self.layers = nn.ModuleList(Layer(d, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.dropout = dropout

    def forward(self, tokens):
        x = self.embed(tokens) * math.sqrt(self.d) + self.pos[: tokens.shape[1]]
        x = F.dropout(x, self.dropout, self.training)
        for layer in self.layers:
            x = layer(x)
        return self.ln(x) @ self.embed.weight.t()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--positions", default="sinusoidal", choices=["sinusoidal", "learned"])
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--name", default="transformer")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--autocast-bf16", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = LM(a.vocab, a.d_model, a.heads, a.layers, a.positions, max(256, a.seq_len), a.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast_bf16):
            loss = F.cross_entropy(model(x).reshape(-1, a.vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    times, cpu = [], []
    for _ in range(a.iters):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    ms = statistics.median(times)
    result = {"name": a.name, "ms_per_step": ms, "min_ms_per_step": min(times),
              "cpu_ms_per_step": statistics.median(cpu),
              "tokens_per_s": a.batch * a.seq_len / ms * 1e3}
    print(json.dumps({"benchmark": "torch_transformer_lm",
                      "device": f"cpu torch {torch.__version__} threads={torch.get_num_threads()} {platform.machine()}",
                      "results": [result]}))


if __name__ == "__main__":
    main()
