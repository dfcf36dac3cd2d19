"""AdapterBank on tiny-demo: one base load, adapters switch the output, base_only() is the base
exactly, unload removes, weights round-trip, adapters of other bases are refused."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tts_lib.models import load_family
from tts_lib.training.adapters import PEFT_WEIGHTS, SIDECAR, AdapterConfig, add_adapters, save_adapter
from tts_lib.versions.hotswap import AdapterBank


def tokens(family, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = family.config
    return torch.randint(0, c.codebook_size, (2, 1 + c.num_codebooks, 9), generator=g)


def make_adapter(family, out, config, seed):
    """A saved adapter that is not a no-op: every LoRA matrix random (fresh ones start at B = 0)."""
    model = add_adapters(family.load_model(), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return save_adapter(model, out, config, family.identity())


@pytest.fixture(scope="module")
def adapters(prepared, tmp_path_factory):
    family = load_family(prepared[0])
    root = tmp_path_factory.mktemp("adapters")
    one = make_adapter(family, root / "one", AdapterConfig(lora_dropout=0.0), seed=1)
    two = make_adapter(family, root / "two", AdapterConfig(targets="upstream", r=4, lora_dropout=0.0), seed=2)
    return one, two


def logits(model, x):
    with torch.no_grad():
        return model(x)[0]


@pytest.fixture
def counting_family(prepared, monkeypatch):
    family = load_family(prepared[0])
    calls = []
    load_model = family.load_model
    monkeypatch.setattr(family, "load_model", lambda *a, **k: calls.append(1) or load_model(*a, **k))
    return family, calls


def test_switching_changes_the_output_without_reloading_the_base(counting_family, adapters):
    family, calls = counting_family
    x = tokens(family)
    base_logits = logits(family.load_model().eval(), x)
    calls.clear()

    bank = AdapterBank(family)
    base_module = bank.base
    assert bank.names == [] and bank.active is None and bank.model is base_module
    assert torch.equal(logits(bank.model, x), base_logits)

    bank.load("one", adapters[0])
    bank.load("two", adapters[1])
    assert bank.names == ["one", "two"] and bank.active == "two"  # the last loaded is active
    two = logits(bank.model, x)
    bank.use("one")
    one = logits(bank.model, x)
    assert not torch.allclose(one, two) and not torch.allclose(one, base_logits)
    bank.use("two")
    assert torch.equal(logits(bank.model, x), two)  # switching back gives the same result

    with bank.base_only() as model:
        assert torch.equal(logits(model, x), base_logits)  # exactly the separately loaded base
    assert torch.equal(logits(bank.model, x), two)  # and the adapter is back afterwards

    assert calls == [1]  # the base was loaded once, by the bank
    assert bank.model.get_base_model() is base_module  # wrapped in place, never replaced


def test_adapter_state_dict_is_what_was_saved(prepared, adapters):
    bank = AdapterBank(load_family(prepared[0]))
    bank.load("one", adapters[0])
    bank.load("two", adapters[1])
    for name, folder in zip(("one", "two"), adapters):
        saved = load_file(str(folder / PEFT_WEIGHTS))
        found = bank.adapter_state_dict(name)
        assert found.keys() == saved.keys()
        assert all(torch.equal(found[k], saved[k]) for k in saved), name
    assert bank.adapter_state_dict("one").keys() != bank.adapter_state_dict("two").keys()  # other targets


def test_unload_falls_back_then_returns_to_the_bare_base(prepared, adapters):
    family = load_family(prepared[0])
    x = tokens(family, seed=1)
    bank = AdapterBank(family)
    base_module = bank.model
    base_logits = logits(bank.model, x)
    bank.load("one", adapters[0])
    one = logits(bank.model, x)
    bank.load("two", adapters[1])
    bank.unload("two")  # the active one: falls back to the last loaded that remains
    assert bank.names == ["one"] and bank.active == "one"
    assert torch.equal(logits(bank.model, x), one)
    with pytest.raises(ValueError, match="no adapter named 'two'.*loaded: 'one'"):
        bank.use("two")
    with pytest.raises(ValueError, match="no adapter named 'two'"):
        bank.adapter_state_dict("two")

    bank.unload("one")
    assert bank.names == [] and bank.active is None and bank.model is base_module
    assert not any("lora_" in n for n, _ in bank.model.named_parameters())  # LoRA layers taken out
    assert torch.equal(logits(bank.model, x), base_logits)
    bank.load("two", adapters[1])  # and the bank can be used again
    assert bank.active == "two" and not torch.allclose(logits(bank.model, x), base_logits)


def test_refuses_duplicates_unknown_names_and_other_bases(prepared, adapters, tmp_path):
    bank = AdapterBank(load_family(prepared[0]))
    bank.load("one", adapters[0])
    with pytest.raises(ValueError, match="'one' is already loaded"):
        bank.load("one", adapters[1])
    with pytest.raises(ValueError, match="loaded: 'one'"):
        bank.use("nope")

    other = tmp_path / "other"
    other.mkdir()
    for f in adapters[1].iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    sidecar = json.loads((other / SIDECAR).read_text())
    sidecar["base_model"]["hash"] = "0" * 64
    (other / SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="trained on base model"):
        bank.load("other", other)
    assert bank.names == ["one"] and bank.active == "one"  # nothing changed


def test_generate_runs_with_the_active_adapter(prepared, adapters):
    bank = AdapterBank(load_family(prepared[0]))
    bank.load("one", adapters[0])
    codes = bank.generate("hyvää huomenta", max_new_tokens=3, seed=0)
    assert codes.ndim == 2 and codes.shape[0] == bank.family.config.num_codebooks and codes.shape[1] <= 3
    with bank.base_only():
        assert bank.generate("hyvää huomenta", max_new_tokens=2, seed=0).shape[1] <= 2
