"""attnkit.transformers in tiny randomly initialised Hugging Face models (no downloads):
GPT-2, Llama (GQA) and BERT give SDPA's outputs with right and left padding, the same training
gradients, and batched left-padded generate gives SDPA's tokens; every causal mechanism
decodes inside generate; masks a mechanism cannot honour are errors."""
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
import attnkit  # noqa: E402
import attnkit.torch  # noqa: E402
import attnkit.transformers as akt  # noqa: E402

akt.register()
VOCAB = 61


def tiny(kind: str, impl: str, seed: int = 0):
    """A 2-layer model of kind with attn_implementation impl, weights fixed by seed."""
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2,
                                      n_head=4, attn_pdrop=0.0, resid_pdrop=0.0,
                                      embd_pdrop=0.0, scale_attn_by_inverse_layer_idx=True)
        cfg.bos_token_id = cfg.eos_token_id = None  # GPT-2's 50256 is outside the tiny vocab
        cls = transformers.GPT2LMHeadModel
    elif kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=64)
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0,
                                      max_position_embeddings=64)
        cls = transformers.BertModel
    cfg.pad_token_id = 0
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    model.set_attn_implementation(impl)
    return model


def batch(padding_side: str, lengths=(11, 7, 4)):
    """input_ids [3, 11] with attention_mask, padded on padding_side."""
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        row = torch.randint(1, VOCAB, (n,), generator=g)
        sl = slice(0, n) if padding_side == "right" else slice(max(lengths) - n, None)
        ids[i, sl], mask[i, sl] = row, 1
    return ids, mask


def outputs(model, ids, mask):
    out = model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_outputs_equal_sdpa_with_padding(kind, side):
    ids, mask = batch(side)
    with torch.no_grad():
        ref = outputs(tiny(kind, "sdpa"), ids, mask)
        got = outputs(tiny(kind, "attnkit"), ids, mask)
    keep = mask.bool()  # padded positions are garbage in both
    torch.testing.assert_close(got[keep], ref[keep], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_training_step_gradients_equal_sdpa(kind):
    ids, mask = batch("left")
    labels = ids.masked_fill(mask == 0, -100)
    grads = []
    for impl in ("sdpa", "attnkit"):
        model = tiny(kind, impl).train()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batched_left_padded_generate_gives_sdpa_tokens(kind):
    ids, mask = batch("left")
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ref = tiny(kind, "sdpa").generate(ids, **kw)
    got = tiny(kind, "attnkit").generate(ids, **kw)
    assert torch.equal(got, ref)
    # top-k with k at least the sequence is exact softmax attention: the same tokens.
    with akt.options(k=64):
        assert torch.equal(tiny(kind, "attnkit_topk").generate(ids, **kw), ref)


@pytest.mark.parametrize("mechanism", [m for m in attnkit.mechanisms()
                                       if attnkit.Mechanism(m).capabilities["causal"]])
def test_every_causal_mechanism_decodes_inside_generate(mechanism):
    """Each decode step (one query against the KV cache) equals the last row of the full
    forward over the generated sequence: generate's tokens are the forward's argmaxes."""
    ids, mask = batch("left")
    model = tiny("llama", f"attnkit_{mechanism}")
    if attnkit.Mechanism(mechanism).capabilities["needs_memory"]:
        with pytest.raises(ValueError, match="add_memory"):
            model(input_ids=ids, attention_mask=mask)
        assert akt.add_memory(model, slots=3) == 2
    config = {"ra": {"samples": 64}, "memory": {"chunk": 4, "width": 2}}.get(mechanism, {})
    with akt.options(**config):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                             pad_token_id=0)
        full_mask = torch.cat([mask, torch.ones(3, 4, dtype=mask.dtype)], dim=1)
        with torch.no_grad():
            logits = model(input_ids=out, attention_mask=full_mask).logits
    if mechanism != "ra":  # ra's draws differ between the calls
        assert torch.equal(logits[:, ids.shape[1] - 1:-1].argmax(-1), out[:, ids.shape[1]:])


def test_scaling_is_ignored_by_mechanisms_without_a_logit_scale():
    ids, mask = batch("right")
    with torch.no_grad():
        out = outputs(tiny("gpt2", "attnkit_linear"), ids, mask)
        ref = outputs(tiny("gpt2", "sdpa"), ids, mask)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, ref, atol=1e-3)  # linear attention ran, not SDPA


def test_masks_a_mechanism_cannot_honour_are_errors():
    # A pattern that is not padding + causal (holes): dense attn_mask for softmax, an error
    # naming the mechanism for linear.
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    mask[0, 0, 4, 1] = False
    q = k = v = torch.randn(1, 2, 5, 8)
    module = torch.nn.Module()
    module.is_causal = True
    out, _ = akt._forward("softmax", module, q, k, v, mask)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="linear takes no dense attn_mask"):
        akt._forward("linear", module, q, k, v, mask)
    with pytest.raises(ValueError, match="dropout"):
        akt._forward("softmax", module, q, k, v, None, dropout=0.1)
    # A sliding window a mechanism does not take is refused by name, not dropped.
    with pytest.raises(ValueError, match="window_size"):
        akt._forward("linear", module, q, k, v, None, sliding_window=2)


def test_options_flat_or_per_mechanism_from_config_and_context():
    ids, mask = batch("left")
    model = tiny("llama", "attnkit_topk")
    model.config.attnkit_options = {"topk": {"k": 1}, "linear": {"map": "elu1"}}
    with torch.no_grad():
        k1 = outputs(model, ids, mask)
        with akt.options(k=64):  # the call's flat keys win: exact attention again
            exact = outputs(model, ids, mask)
        model.set_attn_implementation("attnkit")  # softmax: topk's keys do not reach it
        ref = outputs(model, ids, mask)
    keep = mask.bool()
    torch.testing.assert_close(exact[keep], ref[keep], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(k1[keep], ref[keep], atol=1e-3)
    with akt.options(kk=3), pytest.raises(ValueError, match="unknown key 'kk'"):
        outputs(model, ids, mask)


@pytest.mark.skipif(attnkit.torch.backend() != "custom_op", reason="needs torch >= 2.4")
def test_compiled_model_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) of a Llama with attnkit attention: without padding (the
    causal flag) and with left padding (under compile the mask goes to softmax as a dense
    attn_mask: the structure search branches on values)."""
    model = tiny("llama", "attnkit")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    plain = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    ids, mask = batch("left")
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_ids=plain).logits, model(input_ids=plain).logits)
        got = compiled(input_ids=ids, attention_mask=mask).logits
        ref = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], ref[mask.bool()])


def test_the_shared_mask_memo_follows_in_place_changes_and_new_masks():
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., :2] = False
    first = akt._masks("softmax", mask, True, -1, (1, 6))
    assert first["key_begin"].tolist() == [0, 2]
    assert akt._masks("softmax", mask, True, -1, (1, 6))["key_begin"].tolist() == [0, 2]
    mask[1, ..., :4] = False  # in place: the version moves on
    assert akt._masks("softmax", mask, True, -1, (1, 6))["key_begin"].tolist() == [0, 4]
    other = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    assert "key_begin" not in akt._masks("softmax", other, True, -1, (1, 6))
