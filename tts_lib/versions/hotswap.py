"""AdapterBank(family).load(name, folder): several LoRA/DoRA adapters on one loaded base model, for inference.

    from tts_lib.versions.hotswap import AdapterBank
    from tts_lib.models import load_family

    bank = AdapterBank(load_family("checkpoints/openaudio-s1-mini"), device="cuda", dtype=torch.bfloat16)
    bank.load("finnish", "runs/fi/final")
    bank.load("amharic", "runs/am/final")
    codes = bank.generate("Hyvää huomenta", max_new_tokens=500)  # the last loaded is active: amharic
    bank.use("finnish")
    with bank.base_only():
        codes = bank.generate("Hyvää huomenta")  # the base model exactly, no adapter

The base weights are read once (the S1-mini model is 1.7 GB); each adapter adds only its small A/B
matrices, through peft's own multi-adapter support (`load_adapter`, `set_adapter`,
`disable_adapter`, `delete_adapter`). Every adapter is checked against the base it was trained on
(its `tts_adapter.json`) before it is loaded, so a voice trained on another checkpoint is refused
rather than silently producing noise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict
from torch import Tensor, nn

from tts_lib.models import VoiceReference
from tts_lib.training.adapters import check_base, load_adapted


class AdapterBank:
    """A base model loaded once plus any number of named adapters; one of them (or none) is active."""

    def __init__(self, family: Any, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> None:
        self.family = family
        self.base: nn.Module = family.load_model(device=device, dtype=dtype).eval()
        self.identity = family.identity()  # hashed once: every load checks against it
        self._peft: PeftModel | None = None  # created by the first load, dropped when the last is unloaded
        self._active: str | None = None
        self._folders: dict[str, Path] = {}

    # ---- what is loaded ---------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Loaded adapters, in load order."""
        return list(self._folders)

    @property
    def active(self) -> str | None:
        """The adapter `model` runs with, or None for the base model alone."""
        return self._active

    @property
    def model(self) -> nn.Module:
        """What to run: the PeftModel (with the active adapter) or the bare base when none is loaded."""
        return self.base if self._peft is None else self._peft

    def folder(self, name: str) -> Path:
        self._check_known(name)
        return self._folders[name]

    # ---- loading and switching --------------------------------------------------------------

    def load(self, name: str, folder: str | Path) -> None:
        """Load the adapter in `folder` as `name` and make it active. Refused when `name` is taken or
        when the adapter was trained on other base weights."""
        folder = Path(folder)
        if name in self._folders:
            raise ValueError(
                f"an adapter named {name!r} is already loaded (from {self._folders[name]}); "
                f"choose another name for {folder}, or unload({name!r}) first"
            )
        check_base(folder, self.identity)
        if self._peft is None:
            # Wraps self.base in place: peft swaps its target layers for LoRA layers holding the
            # same base weight tensors, so nothing is copied or reloaded.
            self._peft = load_adapted(self.base, folder, name=name)
        else:
            self._peft.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        self._folders[name] = folder
        self.use(name)

    def use(self, name: str) -> None:
        """Make the loaded adapter `name` active."""
        self._check_known(name)
        assert self._peft is not None
        self._peft.set_adapter(name)
        self._peft.eval()  # set_adapter marks the adapter's weights trainable; this bank only infers
        for p in self._peft.parameters():
            p.requires_grad_(False)
        self._active = name

    @contextmanager
    def base_only(self) -> Iterator[nn.Module]:
        """Inside the block, `model` computes exactly what the base model does (peft's
        disable_adapter); the active adapter is back afterwards. Yields `model`."""
        if self._peft is None:
            yield self.base
            return
        with self._peft.disable_adapter():
            yield self._peft

    def unload(self, name: str) -> None:
        """Remove adapter `name` and free its weights. If it was active, the most recently loaded of
        the remaining adapters becomes active; when none remains the bank is base-only again: the
        LoRA layers are taken out (peft's unload, no merging) and `model` is the bare base."""
        self._check_known(name)
        assert self._peft is not None
        del self._folders[name]
        if not self._folders:
            self.base = self._peft.unload()  # the same module object, its original layers put back
            self._peft, self._active = None, None
            return
        fallback = self.names[-1]
        if self._active == name:
            self._peft.set_adapter(fallback)  # before deleting: peft refuses to delete the active adapter
            self._active = fallback
        self._peft.delete_adapter(name)
        self.use(self._active or fallback)

    # ---- use --------------------------------------------------------------------------------

    def adapter_state_dict(self, name: str) -> dict[str, Tensor]:
        """Adapter `name`'s weights with peft's key names (the adapter name stripped), as its
        adapter_model.safetensors stores them."""
        self._check_known(name)
        return get_peft_model_state_dict(self._peft, adapter_name=name)

    def generate(self, text: str, references: Sequence[VoiceReference] = (), **sampling: Any) -> Tensor:
        """The family's targets for `text` with the active adapter (or the base inside base_only()), in the voice
        of the `references` clips."""
        return self.family.generate(self.model, text, references, **sampling)

    def _check_known(self, name: str) -> None:
        if name not in self._folders:
            loaded = ", ".join(repr(n) for n in self._folders) or "none"
            raise ValueError(
                f"no adapter named {name!r} is loaded; loaded: {loaded}. Load it first with load(name, folder)"
            )
