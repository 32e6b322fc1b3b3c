"""The fusion head (models/erc.py FusionHead): shapes, masks, per-sample fusion, determinism, and the
dialogue-context transformer (never across dialogues; ``past`` is causal; batch order irrelevant)."""

import numpy as np
import pytest
import torch

from hlm12erc.models.fusion import DialogueInputs, FusionHead, HeadConfig

DIMS = {"text": 10, "audio": 6, "visual": 4}
LABELS = ["a", "b", "c"]


def make_model(fusion: str, hidden: int = 16, seed: int = 0, dialogue: str = "none",
               dropout: float = 0.3) -> FusionHead:
    torch.manual_seed(seed)
    return FusionHead(HeadConfig(modalities=list(DIMS), input_dims=DIMS, hidden=hidden, fusion=fusion, heads=4,
                                 dropout=dropout, dialogue=dialogue), LABELS)


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
    # row 0 has text present: it must matter (not a constant shift: LayerNorm removes those)
    changed["text"][0] += torch.linspace(-3, 3, 10)
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
        HeadConfig(modalities=["text"], input_dims={"text": 4}, hidden=10, fusion="attention", heads=4)


def test_bad_head_configs_fail_clearly():
    with pytest.raises(ValueError, match="dialogue='sideways' is not known"):
        HeadConfig(modalities=["text"], input_dims={"text": 4}, hidden=8, dialogue="sideways")
    with pytest.raises(ValueError, match="dialogue context and residual heads need hidden > 0"):
        HeadConfig(modalities=["text"], input_dims={"text": 4}, hidden=0, dialogue="past")
    with pytest.raises(ValueError, match="fusion='none' is not known"):
        HeadConfig(modalities=["text"], input_dims={"text": 4}, fusion="none")
    with pytest.raises(ValueError, match="no input_dims for modality"):
        HeadConfig(modalities=["text", "audio"], input_dims={"text": 4})


# ----------------------------------------------------------------------------- dialogue context
# Three dialogues in one batch: 4, 3 and 5 turns, rows interleaved (not grouped, not in turn order).
DIALOGUE = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0, 2, 2])
TURN = torch.tensor([0, 0, 1, 0, 1, 3, 1, 2, 2, 2, 4, 3])
SPEAKER = torch.tensor([0, 0, 1, 0, 1, 0, 1, 0, 0, 1, 2, 1])


def dialogue_batch(seed: int = 5):
    features, _ = make_batch(len(DIALOGUE), seed)
    mask = torch.ones(len(DIALOGUE), 3, dtype=torch.bool)
    mask[4, 1] = False  # one absent modality, to keep the masks in play
    return features, mask, DialogueInputs(DIALOGUE, TURN, SPEAKER)


def rows_of(dialogue: int, turns=None) -> torch.Tensor:
    rows = torch.nonzero(DIALOGUE == dialogue).flatten()
    return rows if turns is None else rows[torch.isin(TURN[rows], torch.tensor(turns))]


def perturbed(features, rows):
    out = {m: x.clone() for m, x in features.items()}
    for m in out:
        out[m][rows] += torch.linspace(-2, 2, out[m].shape[1])  # not a constant shift (LayerNorm removes those)
    return out


@pytest.mark.parametrize("fusion", ["concat", "attention"])
@pytest.mark.parametrize("dialogue", ["past", "bidirectional"])
def test_dialogue_context_never_crosses_dialogues(fusion, dialogue):
    model = make_model(fusion, dialogue=dialogue).eval()
    features, mask, where = dialogue_batch()
    with torch.no_grad():
        before = model(features, mask, where).logits
        after = model(perturbed(features, rows_of(1)), mask, where).logits
    others = torch.nonzero(DIALOGUE != 1).flatten()
    torch.testing.assert_close(after[others], before[others], rtol=0, atol=1e-6)
    assert (after[rows_of(1)] - before[rows_of(1)]).abs().max() > 1e-3  # the perturbation itself matters


def test_bidirectional_context_reaches_earlier_turns():
    model = make_model("attention", dialogue="bidirectional").eval()
    features, mask, where = dialogue_batch()
    with torch.no_grad():
        before = model(features, mask, where).logits
        after = model(perturbed(features, rows_of(2, [4])), mask, where).logits  # the last turn of dialogue 2
    earlier = rows_of(2, [0, 1, 2, 3])
    assert (after[earlier] - before[earlier]).abs().amax(1).min() > 1e-5  # every earlier turn sees it


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_past_context_is_causal(fusion):
    model = make_model(fusion, dialogue="past").eval()
    features, mask, where = dialogue_batch()
    with torch.no_grad():
        before = model(features, mask, where).logits
        later = model(perturbed(features, rows_of(2, [3])), mask, where).logits  # turn 3 of dialogue 2
        earlier = model(perturbed(features, rows_of(2, [1])), mask, where).logits  # turn 1 of dialogue 2
    unchanged = rows_of(2, [0, 1, 2])
    torch.testing.assert_close(later[unchanged], before[unchanged], rtol=0, atol=1e-6)
    assert (later[rows_of(2, [4])] - before[rows_of(2, [4])]).abs().max() > 1e-5  # a later turn sees turn 3
    torch.testing.assert_close(earlier[rows_of(2, [0])], before[rows_of(2, [0])], rtol=0, atol=1e-6)
    changed = rows_of(2, [2, 3, 4])
    assert (earlier[changed] - before[changed]).abs().amax(1).min() > 1e-5  # every later turn sees turn 1


@pytest.mark.parametrize("dialogue", ["past", "bidirectional"])
def test_dialogue_outputs_do_not_depend_on_batch_order_or_company(dialogue):
    model = make_model("attention", dialogue=dialogue).eval()
    features, mask, where = dialogue_batch()
    with torch.no_grad():
        base = model(features, mask, where).logits
        perm = torch.randperm(len(DIALOGUE), generator=torch.Generator().manual_seed(7))
        relabel = torch.tensor([2, 0, 1])  # other batch-local dialogue numbers, other dialogue order
        shuffled = DialogueInputs(relabel[DIALOGUE[perm]], TURN[perm], SPEAKER[perm])
        out = model({m: x[perm] for m, x in features.items()}, mask[perm], shuffled).logits
        torch.testing.assert_close(out, base[perm], rtol=0, atol=1e-5)
        rows = rows_of(1)  # dialogue 1 alone (3 turns; the batch had 5-turn dialogues: other padding)
        alone = model({m: x[rows] for m, x in features.items()}, mask[rows],
                      DialogueInputs(torch.zeros(len(rows), dtype=torch.long), TURN[rows], SPEAKER[rows])).logits
        torch.testing.assert_close(alone, base[rows], rtol=0, atol=1e-5)


def test_speaker_roles_matter_and_a_dialogue_head_needs_its_layout():
    model = make_model("concat", dialogue="bidirectional").eval()
    with torch.no_grad():
        model.context.same_speaker.fill_(1.0)
    features, mask, where = dialogue_batch()
    with torch.no_grad():
        before = model(features, mask, where).logits
        swapped = DialogueInputs(DIALOGUE, TURN, torch.where(DIALOGUE == 0, 1 - SPEAKER.clamp(max=1), SPEAKER))
        after = model(features, mask, swapped).logits
    assert (after[rows_of(0)] - before[rows_of(0)]).abs().max() > 1e-5
    torch.testing.assert_close(after[rows_of(2)], before[rows_of(2)], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="DialogueInputs"):
        model(features, mask)


def test_dialogue_head_trains_with_finite_gradients_when_a_sample_has_nothing():
    model = make_model("attention", dialogue="past").train()
    features, mask, where = dialogue_batch()
    mask[3] = False
    out = model(features, mask, where)
    assert torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.context.same_speaker.grad is not None
