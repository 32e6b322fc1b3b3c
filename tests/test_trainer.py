"""The one training loop (training/loop.py, fit.py) on random label-correlated features: fast and deterministic.

Heads read the conftest's random features; objectives with ``text: finetuned`` read two cross-fitted
tiny-BERT encoders trained once for the module.
"""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ERC_LABELS, ERC_TEXTS, erc_random_features
from hlm12erc.config import ObjectiveConfig, Params, TextEncoderParams, TrainParams, load_params
from hlm12erc.data.meld import DataError
from hlm12erc.metrics import compute_metrics, confusion
from hlm12erc.models.erc import ErcModel
from hlm12erc.models.fusion import head_inputs
from hlm12erc.models.text_encoder import encoder_path, load_tokenizer
from hlm12erc.runtime import seed_everything, select_device
from hlm12erc.training.fit import fit as fit_model
from hlm12erc.training.fit import new_model
from hlm12erc.training.loop import HISTORY_COLUMNS, LoopSettings, train_loop
from hlm12erc.training.tasks import HeadTask, label_ids

FAST = TrainParams(seed=1, epochs=1, batch_size=8, lr=1e-2, patience=3, device="cpu")
CPU = torch.device("cpu")


def table_of(features, split: str = "train") -> pd.DataFrame:
    """The 1NF rows a FeatureSet of erc_random_features stands for (5-turn dialogues, cycling speakers)."""
    index = features.index
    return pd.DataFrame({"split": split, "dialogue": index["dialogue"], "sequence": index["sequence"],
                         "clip_id": index["clip_id"], "speaker": [["Ross", "Rachel", "Joey"][i % 3]
                                                                   for i in range(len(index))],
                         "x_text": [ERC_TEXTS.get(label, label) for label in index["label"]],
                         "label": index["label"]})


def params_with(train: TrainParams = FAST, labels=ERC_LABELS, text_encoder: TextEncoderParams | None = None) -> Params:
    return Params(train=train, labels=list(labels), text_encoder=text_encoder or TextEncoderParams())


@pytest.fixture(scope="module")
def splits():
    return erc_random_features(42, seed=0), erc_random_features(21, seed=1)


@pytest.fixture(scope="module")
def tables(splits):
    return table_of(splits[0]), table_of(splits[1], "valid")


def fit(objective, splits, tables, params=None, **kwargs) -> ErcModel:
    params = params or params_with()
    model = new_model(objective, params, splits[0].dims)
    return fit_model(model, tables[0], tables[1], splits[0], splits[1], params, progress=False, **kwargs)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, splits, tables):
    """(params, model): a seed ensemble of two tiny-BERT encoders, one epoch each."""
    from finetune_support import save_tiny_bert

    tiny = save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), load_tokenizer(encoder_path("minilm")))
    params = params_with(text_encoder=TextEncoderParams(encoder=tiny, members=2, epochs=1, min_steps=0, batch_size=8,
                                                        max_tokens=32, eval_batch_size=32))
    return params, fit(ObjectiveConfig(name="tf", text="finetuned", fusion="none"), splits, tables, params)


@pytest.mark.parametrize("name", sorted(load_params().objectives))
def test_every_objective_in_params_trains_one_epoch(name, splits, tables, encoders):
    objective = replace(load_params().objective(name), epochs=1)
    params, trained = encoders
    finetuned = objective.text == "finetuned"
    model = fit(objective, splits, tables, params, encoders_from=trained if finetuned else None)
    history = pd.DataFrame(model.info["history"], columns=HISTORY_COLUMNS)
    if objective.fusion == "none":
        assert model.head is None and history.empty  # the encoders came trained
    else:
        assert history["part"].tolist() == ["head"] and history["epoch"].tolist() == [1]
        assert np.isfinite(history["train_loss"]).all()
        assert not model.head.training  # handed back in eval mode
        assert model.config.head.dialogue == objective.dialogue
    assert len(model.encoders) == (2 if finetuned else 0)
    valid_features = splits[1] if model.uses_cached_features else None
    probs = model.predict_proba(tables[1], valid_features)
    assert probs.shape == (21, len(ERC_LABELS)) and np.allclose(probs.sum(1), 1, atol=1e-5)


def weighted_f1(model: ErcModel, table, features) -> float:
    probs = model.predict_proba(table, features, batch_size=64)
    labels = model.labels
    return compute_metrics(table["label"].tolist(), [labels[i] for i in probs.argmax(1)], labels)["weighted_f1"]


@pytest.mark.parametrize("dialogue", ["none", "bidirectional"])
def test_learns_separable_features_and_keeps_the_best_epoch(dialogue, splits, tables):
    objective = ObjectiveConfig(name="t", modalities=["text", "audio", "visual"], fusion="attention", hidden=32,
                                dialogue=dialogue)
    model = fit(objective, splits, tables, params_with(replace(FAST, epochs=25, patience=4)))
    history = pd.DataFrame(model.info["history"])
    best = model.info["head"]
    assert history["valid_weighted_f1"].max() > 0.8
    assert best["best_valid_weighted_f1"] == history["valid_weighted_f1"].max() == model.info["best_valid_weighted_f1"]
    assert best["best_epoch"] == int(history.loc[history["valid_weighted_f1"].idxmax(), "epoch"])
    assert len(history) <= best["best_epoch"] + 4  # early stopping after `patience` epochs without gain
    # the restored weights are the best epoch's
    assert weighted_f1(model, tables[1], splits[1]) == pytest.approx(best["best_valid_weighted_f1"])


def test_training_is_seeded(splits, tables):
    objective = ObjectiveConfig(name="t", modalities=["text", "audio"], hidden=16, dialogue="past")
    first = fit(objective, splits, tables, params_with(replace(FAST, epochs=2)))
    second = fit(objective, splits, tables, params_with(replace(FAST, epochs=2)))
    for key, value in first.head.state_dict().items():
        assert torch.equal(value, second.head.state_dict()[key]), key
    assert first.info["history"] == second.info["history"]


def test_checkpoint_round_trip_and_deterministic_evaluation(splits, tables, tmp_path):
    objective = ObjectiveConfig(name="t", modalities=["text", "visual"], fusion="attention", hidden=16, dropout=0.5)
    model = fit(objective, splits, tables, params_with(replace(FAST, epochs=2)))
    model.save(tmp_path / "m")
    loaded = ErcModel.load(tmp_path / "m")
    assert loaded.meta["objective"]["name"] == "t" and loaded.labels == ERC_LABELS
    assert loaded.config.head.input_dims == {"text": 12, "visual": 6} and not loaded.encoders
    first = loaded.predict_proba(tables[1], splits[1], batch_size=5)
    second = loaded.predict_proba(tables[1], splits[1], batch_size=7)
    np.testing.assert_allclose(first, second, atol=1e-6)  # dropout off, batch size irrelevant
    np.testing.assert_allclose(first, model.predict_proba(tables[1], splits[1]), atol=1e-6)
    assert torch.equal(loaded.head.mean_text, model.head.mean_text)  # train statistics travel with the checkpoint
    assert (loaded.head.mean_text != 0).any()


def test_an_older_checkpoint_format_is_refused_in_one_line(splits, tables, tmp_path):
    import json

    model = fit(ObjectiveConfig(name="t", hidden=8), splits, tables)
    model.save(tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**raw, "format": 1}))
    with pytest.raises(ValueError, match=r"checkpoint format 1, this code reads format 4; retrain"):
        ErcModel.load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="does not exist; run the train stage"):
        ErcModel.load(tmp_path / "nowhere")
    (tmp_path / "m" / "config.json").write_text(json.dumps(raw))
    (tmp_path / "m" / "head.pt").unlink()
    with pytest.raises(FileNotFoundError, match="head.pt not found"):
        ErcModel.load(tmp_path / "m")


def test_label_outside_the_set_names_the_row(splits, tables):
    bad = erc_random_features(10, seed=3)
    bad.index.loc[4, "label"] = "contempt"
    with pytest.raises(DataError, match=r"row 5 \(dia0_utt4\).*'contempt'"):
        fit(ObjectiveConfig(name="t"), (bad, splits[1]), (table_of(bad), tables[1]))


def test_another_label_set_works_by_changing_labels():
    labels = ["neg", "pos"]
    train = erc_random_features(20, seed=0, labels=labels)
    valid = erc_random_features(10, seed=1, labels=labels)
    model = fit(ObjectiveConfig(name="t"), (train, valid), (table_of(train), table_of(valid, "valid")),
                params_with(labels=labels))
    assert model.labels == labels and model.head.head[-1].out_features == 2
    assert model.predict_proba(table_of(valid, "valid"), valid).shape == (10, 2)


def test_dialogue_heads_train_on_whole_dialogues(splits, tables):
    head = new_model(ObjectiveConfig(name="t", hidden=8, dialogue="past"), params_with(), splits[0].dims).config.head
    inputs = head_inputs(tables[0], splits[0].arrays, splits[0].mask, head)
    ids = inputs.dialogue
    for batches in (inputs.dialogue_batches(8), inputs.dialogue_batches(8, np.random.default_rng(0).permutation(9))):
        assert sorted(np.concatenate(batches).tolist()) == list(range(42))  # every row once
        for rows in batches:
            for d in set(ids[rows]):
                in_batch = rows[ids[rows] == d]
                assert len(in_batch) == (ids == d).sum()  # a dialogue is never split across batches
                assert inputs.turn[in_batch].tolist() == sorted(inputs.turn[in_batch].tolist())


def test_min_steps_raises_the_epochs_and_on_epoch_sees_each(splits, tables):
    objective = ObjectiveConfig(name="t", hidden=8)
    params = params_with(replace(FAST, epochs=1, batch_size=16, patience=10))
    model = new_model(objective, params, splits[0].dims)
    fit_model(model, tables[0], tables[1], splits[0], splits[1], params, progress=False)
    head = model.head
    inputs = head_inputs(tables[0], {m: splits[0].arrays[m] for m in ["text"]}, splits[0].mask[:, :1],
                                 model.config.head)
    task = HeadTask(head, inputs, label_ids(tables[0], ERC_LABELS),
                            lambda: np.zeros((21, 7), np.float32), label_ids(tables[1], ERC_LABELS))
    from hlm12erc.models.losses import Criterion, LossConfig

    rows = []
    settings = LoopSettings(epochs=1, batch_size=16, lr=1e-2, patience=10, seed=0, min_steps=7)
    result = train_loop(task, settings, Criterion(LossConfig(), task.y, 7), ERC_LABELS, CPU,
                                on_epoch=rows.append, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2, 3] == [r["epoch"] for r in result.history]  # 3 steps an epoch


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            select_device("cuda")


def test_metrics_keep_absent_classes_and_hand_values():
    actual = ["joy", "joy", "anger", "neutral"]
    predicted = ["joy", "anger", "anger", "joy"]
    metrics = compute_metrics(actual, predicted, ERC_LABELS)
    assert metrics["accuracy"] == 0.5 and metrics["n"] == 4
    assert set(metrics["per_class"]) == set(ERC_LABELS)
    assert metrics["per_class"]["fear"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # joy: p=1/2 r=1/2 f1=.5 ; anger: p=1/2 r=1 f1=2/3 ; neutral 0 -> weighted (2*.5+2/3+0)/4
    assert metrics["weighted_f1"] == pytest.approx((2 * 0.5 + 2 / 3) / 4)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 7)
    counts = confusion(actual, predicted, ERC_LABELS)
    assert counts.shape == (7, 7) and counts[ERC_LABELS.index("joy"), ERC_LABELS.index("anger")] == 1


def test_bootstrap_resamples_whole_dialogues_and_scores_every_model_on_the_same_ones():
    from hlm12erc.metrics import bootstrap_weighted_f1

    rng = np.random.default_rng(5)
    dialogues = np.repeat([f"d{i}" for i in range(12)], rng.integers(2, 7, 12))
    y = rng.integers(0, 7, len(dialogues))
    noisy = np.where(rng.random(len(y)) < 0.6, y, rng.integers(0, 7, len(y)))
    scores = bootstrap_weighted_f1(y, [noisy, y], dialogues, 7, resamples=20, seed=3)
    assert scores.shape == (20, 2) and (scores[:, 1] == 1.0).all()  # the perfect model, on every resample
    # resample 0 by hand: 12 dialogues drawn with replacement (sorted names), each one's turns all kept
    names = sorted(set(dialogues))
    drawn = np.random.default_rng(3).integers(len(names), size=len(names))
    rows = np.concatenate([np.flatnonzero(dialogues == names[d]) for d in drawn])
    by_hand = compute_metrics([ERC_LABELS[i] for i in y[rows]], [ERC_LABELS[i] for i in noisy[rows]], ERC_LABELS)
    assert scores[0, 0] == pytest.approx(by_hand["weighted_f1"], abs=1e-12)
    assert len(set(np.round(scores[:, 0], 9))) > 10  # the resamples differ
    assert (bootstrap_weighted_f1(y, [noisy], dialogues, 7, resamples=20, seed=3)[:, 0] == scores[:, 0]).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from hlm12erc.metrics import scores_from_logits

    rng = np.random.default_rng(seed)
    actual = [ERC_LABELS[i] for i in rng.choice(6, 200, p=[.3, .05, .05, .2, .3, .1])]  # never "surprise"
    predicted = [ERC_LABELS[i] for i in rng.integers(0, 5, 200)]  # never "sadness" or "surprise"
    ours = compute_metrics(actual, predicted, ERC_LABELS)
    for average in ("weighted", "macro"):
        theirs = sklearn_metrics.f1_score(actual, predicted, labels=ERC_LABELS, average=average, zero_division=0)
        assert ours[f"{average}_f1"] == pytest.approx(theirs, abs=1e-12)
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(actual, predicted, labels=ERC_LABELS,
                                                                 zero_division=0)
    for i, label in enumerate(ERC_LABELS):
        assert [ours["per_class"][label][k] for k in ("precision", "recall", "f1", "support")] == \
            pytest.approx([p[i], r[i], f[i], s[i]], abs=1e-12)
    assert ours["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(actual, predicted))
    assert (confusion(actual, predicted, ERC_LABELS) ==
            sklearn_metrics.confusion_matrix(actual, predicted, labels=ERC_LABELS)).all()
    y = np.array([ERC_LABELS.index(a) for a in actual])
    logits = np.eye(7)[[ERC_LABELS.index(p) for p in predicted]]
    scores = scores_from_logits(logits, y, 7)
    assert (scores["weighted_f1"], scores["macro_f1"]) == pytest.approx((ours["weighted_f1"], ours["macro_f1"]))


def test_predict_proba_checks_feature_widths(splits, tables):
    from hlm12erc.config import ConfigError

    model = fit(ObjectiveConfig(name="t", modalities=["text", "audio"], hidden=16), splits, tables)
    probs = model.predict_proba(tables[1], splits[1], 8)
    assert probs.shape == (21, len(ERC_LABELS)) and abs(probs.sum(1) - 1).max() < 1e-5
    wider = erc_random_features(21, seed=1, dims={"text": 13, "audio": 8, "visual": 6})
    with pytest.raises(ConfigError, match=r"text features are 13-d but the model expects 12-d.*retrain"):
        model.predict_proba(tables[1], wider, 8)
    with pytest.raises(ConfigError, match="reads cached text features"):
        model.predict_proba(tables[1], None, 8)


@pytest.mark.parametrize("dialogue", ["past", "bidirectional"])
def test_a_dialogue_model_predicts_each_dialogue_on_its_own(dialogue, splits, tables):
    """ErcModel.predict_proba with dialogue context: a dialogue's probabilities do not depend on the other
    dialogues of the table (perturbed, dropped) nor on the row order; with ``past`` earlier turns ignore later ones."""
    objective = ObjectiveConfig(name="t", modalities=["text", "audio", "visual"], fusion="attention", hidden=16,
                                dialogue=dialogue)
    model = fit(objective, splits, tables, params_with(replace(FAST, epochs=2)))
    table, features = tables[1], splits[1]
    base = model.predict_proba(table, features, batch_size=7)
    first = np.flatnonzero(table["dialogue"].to_numpy() == table["dialogue"].iloc[0])
    others = np.setdiff1d(np.arange(len(table)), first)
    noisy = replace(features, arrays={m: x.copy() for m, x in features.arrays.items()})
    for x in noisy.arrays.values():
        x[others] += np.random.default_rng(0).standard_normal(x[others].shape).astype(np.float32)
    changed = model.predict_proba(table, noisy, batch_size=7)
    np.testing.assert_allclose(changed[first], base[first], rtol=0, atol=1e-6)
    assert np.abs(changed[others] - base[others]).max() > 1e-4
    subset = replace(features, arrays={m: x[first] for m, x in features.arrays.items()}, mask=features.mask[first],
                     face_found=features.face_found[first], index=features.index.iloc[first])
    np.testing.assert_allclose(model.predict_proba(table.iloc[first], subset), base[first], rtol=0, atol=1e-6)
    order = np.random.default_rng(1).permutation(len(table))
    shuffled = replace(features, arrays={m: x[order] for m, x in features.arrays.items()}, mask=features.mask[order],
                       face_found=features.face_found[order], index=features.index.iloc[order])
    np.testing.assert_allclose(model.predict_proba(table.iloc[order], shuffled), base[order], rtol=0, atol=1e-6)
    last = first[table["sequence"].to_numpy()[first].argmax()]  # the last turn of the first dialogue
    late = replace(features, arrays={m: x.copy() for m, x in features.arrays.items()})
    for x in late.arrays.values():
        x[last] += np.linspace(-2, 2, x.shape[1]).astype(np.float32)
    moved = np.abs(model.predict_proba(table, late) - base)[first].max(1)
    earlier = table["sequence"].to_numpy()[first] < table["sequence"].to_numpy()[last]
    if dialogue == "past":
        assert moved[earlier].max() < 1e-6 and moved[~earlier].max() > 1e-5
    else:
        assert moved[earlier].min() > 1e-7 and moved.max() > 1e-5


def test_seeding_asks_for_deterministic_kernels_in_warn_only_mode():
    torch.use_deterministic_algorithms(False)
    seed_everything(3)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
