"""Issue 12 on training and model-building inputs: values that used to be ignored or accepted
silently are refused by name; a trainer checkpoint carries its completeness marker; an unreadable
trainer state is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BOLMO_FIXTURES, CKPT_FIXTURES

from bolmo.checkpoint.sources import open_checkpoint
from bolmo.cli import main
from bolmo.config import BolmoConfig
from bolmo.errors import CheckpointError, ConfigError
from bolmo.olmo.config import OlmoConfig
from bolmo.train.prepare import PrepareConfig
from trainer_helpers import TrainEnv, as_config, base_config, build_env
from trainer_helpers import one_thread  # noqa: F401 (module-wide autouse fixture)


@pytest.mark.parametrize("field,value", [("max_documents", -1), ("max_documents", 0), ("workers", 0),
                                         ("docs_per_shard", -5)])
def test_prepare_refuses_non_positive_counts(tmp_path, field, value):
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        PrepareConfig(inputs=[tmp_path], tokenizer=tmp_path, out=tmp_path / "out", **{field: value})


@pytest.mark.parametrize("flag", ["--local-intermediate-size", "--encoder-layers", "--decoder-layers", "--local-heads"])
def test_byteify_refuses_zero_sizes(tmp_path, capsys, flag):
    out = tmp_path / "out"
    assert main(["byteify-init", "--teacher", str(CKPT_FIXTURES / "olmo2" / "hf"), "--out", str(out), flag, "0"]) == 2
    assert f"{flag} must be an integer >= 1, got 0" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("value", [True, 2.0, "4"])
def test_layer_count_must_be_an_integer(value):
    bolmo_config = json.loads((BOLMO_FIXTURES / "tiny-gqa" / "config.json").read_text())
    with pytest.raises(ConfigError, match=f"num_hidden_layers: must be a positive integer, got {value!r}"):
        BolmoConfig.from_dict({**bolmo_config, "num_hidden_layers": value}, "config.json")
    olmo_config = json.loads((CKPT_FIXTURES / "olmo2" / "hf" / "config.json").read_text())
    with pytest.raises(ConfigError, match=f"num_hidden_layers: must be a positive integer, got {value!r}"):
        OlmoConfig.from_dict({**olmo_config, "num_hidden_layers": value}, "config.json")


@pytest.mark.parametrize("override", [{"optim": {"lr": float("nan")}}, {"optim": {"lr": 0.0}},
                                      {"optim": {"lr": 1e-3, "eps": float("inf")}},
                                      {"schedule": {"steps": 6, "warmup_fraction": float("nan")}}])
def test_training_refuses_non_finite_or_zero_rates(tmp_path, override):
    config = base_config("stage2", tmp_path / "run", tmp_path / "model", tmp_path / "data")
    with pytest.raises(ConfigError, match="optim|schedule"):
        as_config({**config, **override})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> TrainEnv:
    return build_env(tmp_path_factory.getbasetemp() / "trainer_env")


def test_trainer_checkpoint_is_complete_and_unreadable_state_is_an_error(env: TrainEnv, tmp_path: Path, capsys):
    from bolmo.train.trainer import train

    config = base_config("stage2", tmp_path / "run", env.student, env.data,
                         **{"schedule.steps": 2, "checkpoint.every": 2, "export": False})
    result = train(as_config(config))
    step = result.run_dir / "step2"
    assert json.loads((step / ".metadata.json").read_text())["ephemeral"] is False
    assert not [n for n in open_checkpoint(step).notes if "incomplete" in n]
    assert main(["verify", str(step)]) == 0 and "incomplete" not in capsys.readouterr().out
    (step / "train" / "rank0.pt").write_bytes(b"not a torch archive")
    resumed = {**config, "resume": True, "schedule": {**config["schedule"], "steps": 3}}
    with pytest.raises(CheckpointError, match="rank0.pt: cannot read the trainer state"):
        train(as_config(resumed))


def test_a_kill_while_a_step_is_saved_again_loses_nothing(tmp_path: Path):
    """Saving step N again after a resume moves the old copy aside, renames the new one in, then
    deletes the old: a kill between the two renames leaves `latest` naming a missing directory,
    and the next `latest()` puts the previous copy back."""
    from bolmo.checkpoint.layout import DCP_SUBDIR
    from bolmo.train.checkpointing import LATEST, Checkpointer

    aside = tmp_path / ".step4.old.tmp"
    (aside / DCP_SUBDIR).mkdir(parents=True)
    (aside / DCP_SUBDIR / ".metadata").write_bytes(b"saved")
    (tmp_path / LATEST).write_text("step4\n")
    checkpointer = Checkpointer.__new__(Checkpointer)  # only the run directory matters here
    checkpointer.run_dir = tmp_path
    assert checkpointer.latest() == tmp_path / "step4"
    assert (tmp_path / "step4" / DCP_SUBDIR / ".metadata").read_bytes() == b"saved" and not aside.exists()


def test_olmo_core_model_fields_are_never_dropped_silently(tmp_path: Path):
    """A field name bolmo does not know is named in a warning; a known setting it does not
    implement (here: scalable softmax) is refused; the real writers' configs pass quietly."""
    import warnings

    from bolmo.checkpoint.config_maps import olmo_core_to_hf
    from bolmo.errors import BolmoWarning

    for name in ("olmo2", "olmo3", "bolmo_olmo_core"):
        config = json.loads((CKPT_FIXTURES / name / "config.json").read_text())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            olmo_core_to_hf(config, name)
    config = json.loads((CKPT_FIXTURES / "olmo3" / "config.json").read_text())
    config["model"]["block"]["sequence_mixer"]["gated_attention"] = True
    with pytest.warns(BolmoWarning, match=r"model\.block\.sequence_mixer\.gated_attention"):
        olmo_core_to_hf(config, "olmo3")
    config["model"]["block"]["sequence_mixer"]["scalable_softmax"] = True
    with pytest.raises(ConfigError, match=r"model\.block\.sequence_mixer\.scalable_softmax"):
        olmo_core_to_hf(config, "olmo3")
