"""Precision: a text encoder's forward autocasts to its precision (training and inference alike), is saved
with the model, and falls back to fp32, said once, where the hardware lacks bf16 matmuls."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from finetune_support import LABELS, make_table  # noqa: E402
from hlm12erc import runtime  # noqa: E402
from hlm12erc.config import (  # noqa: E402
    ConfigError,
    ObjectiveConfig,
    Params,
    TextEncoderParams,
    TrainParams,
    params_from_dict,  # noqa: E402
)
from hlm12erc.models.erc import ErcModel  # noqa: E402
from hlm12erc.models.text_encoder import EncoderConfig, build_text_encoder  # noqa: E402
from hlm12erc.training.fit import fit, new_model  # noqa: E402

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not runtime.cpu_has_bf16(), reason="this CPU has no bf16 matmul units")


def _batch():
    ids = torch.randint(5, 900, (4, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


@needs_bf16
def test_bf16_runs_the_matmuls_in_bfloat16_and_returns_fp32_close_to_fp32(tiny_model_dir, monkeypatch):
    fp32 = build_text_encoder(EncoderConfig(encoder=tiny_model_dir), len(LABELS)).eval()
    bf16 = build_text_encoder(EncoderConfig(encoder=tiny_model_dir, precision="bf16"), len(LABELS)).eval()
    bf16.load_state_dict(fp32.state_dict())
    seen = []
    linear = torch.nn.functional.linear

    def spy(x, weight, bias=None):
        out = linear(x, weight, bias)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    with torch.no_grad():
        plain, fast = fp32(**_batch()), bf16(**_batch())
    assert torch.bfloat16 in seen and torch.float32 in seen
    assert fast.logits.dtype == fast.embedding.dtype == torch.float32  # losses read fp32
    assert not torch.equal(plain.embedding, fast.embedding)  # another precision is another computation
    torch.testing.assert_close(fast.embedding, plain.embedding, atol=0.05, rtol=0.05)


@needs_bf16
def test_bf16_trains_and_the_saved_model_predicts_in_bf16(tiny_model_dir, tmp_path):
    enc = TextEncoderParams(encoder=tiny_model_dir, members=1, max_tokens=32, epochs=1, batch_size=8, min_steps=0,
                            eval_batch_size=16, precision="bf16")
    params = Params(train=TrainParams(seed=5, device="cpu"), labels=list(LABELS), text_encoder=enc)
    model = new_model(ObjectiveConfig(name="t", text="finetuned", fusion="none"), params)
    train, valid = make_table(3, 5, seed=1), make_table(1, 5, "valid", seed=2)
    fit(model, train, valid, None, None, params, progress=False)
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["encoder"]["precision"] == "bf16"
    loaded = ErcModel.load(tmp_path / "m")
    assert loaded.encoders[0].precision == "bf16"
    probs = loaded.predict_proba(valid)
    assert probs.dtype.name == "float32" and abs(probs.sum(1) - 1).max() < 1e-5


def test_bf16_without_the_hardware_runs_fp32_and_says_so_once(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(runtime, "_warned", set())
    assert runtime.effective_precision("bf16", CPU) == "fp32"
    assert runtime.effective_precision("bf16", CPU) == "fp32"
    assert runtime.effective_precision("fp32", CPU) == "fp32"
    assert isinstance(runtime.autocast("bf16", CPU), type(runtime.autocast("fp32", CPU)))  # no autocast
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["precision: this cpu has no bf16 matmul units (CPU: avx512_bf16 or AMX); running fp32"]


def test_an_unknown_precision_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"text_encoder.precision='fp16' is not fp32 or bf16"):
        params_from_dict({"text_encoder": {"precision": "fp16"}})


def test_the_machine_kind_names_the_cpu_model_and_the_vector_isa_its_kernels_use(monkeypatch):
    """Two machines whose kernels differ get different kinds, so the lock's byte check knows which it may make."""
    kind = runtime.machine_kind()
    assert kind.endswith(torch.backends.cpu.get_cpu_capability()) or torch.cuda.is_available()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    other = runtime.machine_kind()
    assert other != kind or "AVX512" in kind
    assert other.split(", ")[0] == kind.split(", ")[0] and other.split(", ")[1] == "AVX512"
