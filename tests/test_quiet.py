"""Loading MiniLM prints nothing when all is well; a checkpoint with missing weights still warns."""

from __future__ import annotations

import contextlib
import logging

import pytest

torch = pytest.importorskip("torch")
from hlm12erc.models.text_encoder import EncoderConfig, build_text_encoder, encoder_path  # noqa: E402
from hlm12erc.quiet import only_expected_unused  # noqa: E402

NOISE = ("Loading weights", "LOAD REPORT", "UNEXPECTED", "can be ignored")


@contextlib.contextmanager
def warnings_shown():
    """transformers' warnings at their default verbosity (an earlier `hlm12erc` call in this process may
    have lowered it), collected from its logger: its own handler writes to whichever stderr it first saw."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    messages: list[str] = []
    collect = logging.Handler()
    collect.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("transformers").addHandler(collect)
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    try:
        yield messages
    finally:
        logging.getLogger("transformers").removeHandler(collect)
        hf_logging.set_verbosity(level)


def test_loading_minilm_prints_nothing(capfd):
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from hlm12erc.features.text import _load_minilm

    with warnings_shown() as messages:
        AutoModel.from_pretrained(encoder_path("minilm"), add_pooling_layer=False)  # unwrapped: the report shows
        assert any("UNEXPECTED" in m for m in messages) and "Loading weights" in capfd.readouterr().err
        messages.clear()
        build_text_encoder(EncoderConfig(), n_labels=7)  # the fine-tuned encoders' start
        _load_minilm.__wrapped__("cpu")  # the frozen text features (uncached: really loads)
        quiet = capfd.readouterr()
    shown = "\n".join([quiet.out, quiet.err, *messages])
    assert not [word for word in NOISE if word in shown], shown
    assert hf_logging.is_progress_bar_enabled()  # the block restored the bars it hid


def test_missing_weights_still_warn(tmp_path, capfd):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = BertModel(config, add_pooling_layer=False)
    state = {k: v for k, v in model.state_dict().items() if k != "encoder.layer.0.output.dense.weight"}
    model.save_pretrained(str(tmp_path), state_dict=state)
    capfd.readouterr()
    with warnings_shown() as messages:
        build_text_encoder(EncoderConfig(encoder=str(tmp_path)), n_labels=7)
    (report,) = [m for m in messages if "LOAD REPORT" in m]
    assert "MISSING" in report and "encoder.layer.0.output.dense.weight" in report
    assert "Loading weights" not in capfd.readouterr().err


def test_only_a_pooler_only_report_is_dropped():
    report = ("\x1b[1mBertModel LOAD REPORT\x1b[0m from: /x\nKey | Status | |\n----+----+--+-\n"
              "pooler.dense.bias   | UNEXPECTED |  | \npooler.dense.weight | UNEXPECTED |  | \n\nNotes:\n"
              "- UNEXPECTED:\tcan be ignored when loading from different task/architecture")
    assert only_expected_unused(report)
    assert not only_expected_unused(report + "\nencoder.layer.0.x | MISSING | |")
    assert not only_expected_unused(report.replace("pooler.dense.bias", "classifier.bias"))
    assert not only_expected_unused("some other warning | with a bar")
