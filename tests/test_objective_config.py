"""Objective choices that only make sense together are one-line config errors, before any stage starts."""

import pytest

from hlm12erc.config import ConfigError, ObjectiveConfig, load_params, params_from_dict


def objective(**fields) -> dict:
    return {"objectives": {"x": {"modalities": ["text"], **fields}}}


@pytest.mark.parametrize("fields", [
    {"fusion": "none"},  # text: frozen (the default)
    {"fusion": "none", "text": "frozen"},
    {"fusion": "none", "text": "finetuned", "modalities": ["text", "audio"]},
    {"fusion": "none", "text": "finetuned", "modalities": ["audio"]},
])
def test_fusion_none_needs_finetuned_text_alone(fields):
    with pytest.raises(ConfigError) as raised:
        params_from_dict(objective(**fields))
    message = str(raised.value)
    assert "\n" not in message and "objectives.x" in message
    assert "fusion none" in message and "modalities: [text] and text: finetuned" in message


def test_other_bad_objective_fields_are_one_line():
    for fields, expected in (({"text": "tuned"}, "objectives.x.text='tuned' is not frozen or finetuned"),
                             ({"modalities": ["text", "smell"]}, "must be a non-empty subset"),
                             ({"modalities": []}, "must be a non-empty subset"),
                             ({"dialog": "past"}, r"unknown key\(s\) \['dialog'\]")):
        with pytest.raises(ConfigError, match=expected) as raised:
            params_from_dict(objective(**fields))
        assert "\n" not in str(raised.value)


def test_the_valid_combinations_pass():
    params = params_from_dict({"objectives": {
        "tf": {"modalities": ["text"], "text": "finetuned", "fusion": "none"},
        "final": {"modalities": ["text", "audio", "visual"], "text": "finetuned", "fusion": "attention",
                  "dialogue": "bidirectional"},
        "past": {"modalities": ["audio"], "dialogue": "past"}}})
    assert params.objective("final").dialogue == "bidirectional" and params.objective("tf").fusion == "none"
    load_params()  # the project's own params.yaml


def test_an_unknown_dialogue_mode_fails_clearly():
    """`dialogue: sideways` is refused in one line naming the choices, while reading params (before any training)."""
    with pytest.raises(ConfigError) as raised:
        params_from_dict(objective(dialogue="sideways"))
    message = str(raised.value)
    assert "\n" not in message and "dialogue='sideways'" in message
    assert all(choice in message for choice in ("none", "past", "bidirectional"))


def test_an_unknown_fusion_fails_clearly():
    """Refused where the config is built, in code as from params.yaml."""
    with pytest.raises(ConfigError, match=r"^ObjectiveConfig: fusion='sum' is not one of concat, attention, none"):
        ObjectiveConfig(name="x", fusion="sum")
    with pytest.raises(ConfigError, match=r"^params: objectives.x.fusion='sum' is not one of concat, attention"):
        params_from_dict(objective(fusion="sum"))


def test_the_train_script_reports_a_bad_dialogue_in_one_line(tmp_path, capsys):
    """Through pipeline/train.py: exit 2, one line on stderr naming the bad choice, before reading any data."""
    import importlib.util

    import yaml

    from hlm12erc.config import PARAMS_FILE, PROJECT_ROOT

    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["objectives"]["text"]["dialogue"] = "sideways"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    spec = importlib.util.spec_from_file_location("stage_train", PROJECT_ROOT / "pipeline" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.main(["--params", str(params), "--objective", "text", "--tables", str(tmp_path / "none"),
                       "--features", str(tmp_path / "none"), "--out", str(tmp_path / "m"),
                       "--plots", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: ") and "dialogue='sideways'" in err[0], err
