"""The transformers config for Bolmo: the released `config.json`, checked by `bolmo.config.BolmoConfig`.

Every Bolmo field is a plain attribute (what transformers' generation and pipeline code reads:
`vocab_size`, `pad_token_id`, `eos_token_id`, `use_cache`, ...), and `bolmo_config()` turns them into
bolmo's own dataclass, which validates them and builds the model. Saved configs always carry every
Bolmo field, so `bolmo.load` and the released remote code read them whatever their defaults are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from bolmo.config import BolmoConfig

BOLMO_FIELDS = tuple(f.name for f in dataclasses.fields(BolmoConfig))


class BolmoHFConfig(PretrainedConfig):
    model_type = "bolmo"

    def __init__(self, **kwargs: Any) -> None:
        fields = {name: kwargs.pop(name) for name in BOLMO_FIELDS if name in kwargs}
        core = BolmoConfig.from_dict(fields)  # validates; fills what the dict leaves out
        # transformers 4 sets pad/bos/eos/tie_word_embeddings from its own arguments, so they go there too.
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings"):
            kwargs[name] = getattr(core, name)
        super().__init__(**kwargs)
        # Set after the base class, whose defaults would otherwise win; written to __dict__ directly
        # because transformers 5 turns `rope_scaling` into a deprecated alias of `rope_parameters`.
        self.__dict__.update({name: value for name, value in core.to_dict().items() if name in BOLMO_FIELDS})

    @property
    def rope_scaling(self) -> dict[str, Any] | None:  # Bolmo's own field, not transformers 5's alias
        return self.__dict__.get("rope_scaling")

    @rope_scaling.setter
    def rope_scaling(self, value: dict[str, Any] | None) -> None:
        self.__dict__["rope_scaling"] = value

    def bolmo_config(self) -> BolmoConfig:
        """bolmo's dataclass for these fields (what `bolmo.model` builds from)."""
        return BolmoConfig.from_dict({name: self.__dict__[name] for name in BOLMO_FIELDS if name in self.__dict__},
                                     where=f"{self.name_or_path or 'config'}/config.json")

    def to_diff_dict(self) -> dict[str, Any]:
        out = super().to_diff_dict()
        out.update({name: value for name, value in self.to_dict().items() if name in BOLMO_FIELDS})
        return out
