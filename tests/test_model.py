"""The ERC model: shapes, masks, per-sample fusion, determinism."""

import numpy as np
import pytest
import torch

from hlm12erc.models.erc import ERCConfig, ERCModel

DIMS = {"text": 10, "audio": 6, "visual": 4}
LABELS = ["a", "b", "c"]


def make_model(fusion: str, hidden: int = 16, seed: int = 0) -> ERCModel:
    torch.manual_seed(seed)
    return ERCModel(ERCConfig(modalities=list(DIMS), input_dims=DIMS, labels=LABELS, hidden=hidden,
                              fusion=fusion, heads=4, dropout=0.3))


def make_batch(n: int = 6, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(n, d, generator=generator) for m, d in DIMS.items()}
    mask = torch.ones(n, 3, dtype=torch.bool)
    mask[1, 1] = False
    mask[2, 0] = mask[2, 2] = False
    return features, mask


@pytest.mark.parametrize("fusion,hidden", [("concat", 16), ("attention", 16), ("concat", 0)])
def test_shapes(fusion, hidden):
    features, mask = make_batch()
    out = make_model(fusion, hidden).eval()(features, mask)
    assert out.logits.shape == (6, 3)
    assert out.embedding.shape[0] == 6 and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("fusion,hidden", [("concat", 16), ("attention", 16), ("concat", 0)])
def test_permuting_the_batch_permutes_the_outputs(fusion, hidden):
    model = make_model(fusion, hidden).eval()
    features, mask = make_batch(8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    out = model(features, mask).logits
    out_perm = model({m: x[perm] for m, x in features.items()}, mask[perm]).logits
    assert torch.allclose(out[perm], out_perm, atol=1e-5)
    # and a sample's output does not depend on the other samples of its batch
    single = model({m: x[:1] for m, x in features.items()}, mask[:1]).logits
    assert torch.allclose(single, out[:1], atol=1e-5)


@pytest.mark.parametrize("fusion,hidden", [("concat", 16), ("attention", 16), ("concat", 0)])
def test_masked_modality_values_are_ignored(fusion, hidden):
    model = make_model(fusion, hidden).eval()
    features, mask = make_batch()
    before = model(features, mask).logits
    changed = {m: x.clone() for m, x in features.items()}
    changed["audio"][1] += 100.0  # row 1 has audio masked
    changed["text"][2] -= 50.0  # row 2 has text masked
    after = model(changed, mask).logits
    assert torch.allclose(before, after, atol=1e-5)
    changed["text"][0] += torch.linspace(-3, 3, 10)  # row 0 has text present: must matter (not a constant shift: LayerNorm removes those)
    assert not torch.allclose(model(changed, mask).logits[0], before[0])


@pytest.mark.parametrize("fusion,hidden", [("concat", 16), ("attention", 16), ("concat", 0)])
def test_all_missing_sample_gives_finite_logits_and_gradients(fusion, hidden):
    model = make_model(fusion, hidden).train()
    features, mask = make_batch()
    mask[3] = False
    out = model(features, mask)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.embedding).all()
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_eval_is_deterministic_and_dropout_is_off(fusion):
    model = make_model(fusion)
    features, mask = make_batch()
    model.eval()
    with torch.no_grad():
        first, second = model(features, mask).logits, model(features, mask).logits
    assert torch.equal(first, second)
    model.train()
    assert not torch.equal(model(features, mask).logits, model(features, mask).logits)  # dropout active


def test_normalization_uses_present_train_rows_and_is_in_the_state_dict():
    model = make_model("concat")
    text = np.array([[1.0] * 10, [3.0] * 10, [100.0] * 10], dtype=np.float32)
    arrays = {"text": text, "audio": np.ones((3, 6), np.float32), "visual": np.zeros((3, 4), np.float32)}
    present = np.array([[True] * 3, [True] * 3, [False, True, True]])
    model.set_normalization(arrays, present)
    assert model.mean_text[0].item() == pytest.approx(2.0)  # the masked row (100) is left out
    assert model.std_text[0].item() == pytest.approx(1.0)
    assert model.std_audio[0].item() == 1.0  # constant feature keeps std 1
    assert "mean_text" in model.state_dict() and "std_visual" in model.state_dict()


def test_attention_needs_hidden_divisible_by_heads():
    with pytest.raises(ValueError, match="multiple of heads"):
        ERCConfig(modalities=["text"], input_dims={"text": 4}, labels=LABELS, hidden=10, fusion="attention", heads=4)
