"""File names of the OLMo-core checkpoint layout, in one place for every reader and writer.

An OLMo-core step directory holds `config.json` (the experiment config) and the DCP checkpoint
of model and optimizer under `model_and_optim/`; trainers add `train/` (per-rank state)."""

DCP_SUBDIR = "model_and_optim"
