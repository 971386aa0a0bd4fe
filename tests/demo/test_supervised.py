"""The supervised reference: the same start as STELLAR, trained with labels."""

from __future__ import annotations

import torch

from stellar.demo.supervised import train_supervised
from stellar.demo.training import DemoSettings, demo_trainer, resolve_budget


def test_supervised_reference_trains_stellars_start_encoder_only(tmp_path):
    settings = resolve_budget(
        DemoSettings(out=str(tmp_path), steps=2, batch_size=4, progress=False)
    )
    start = demo_trainer(settings, "start", []).model.state_dict()
    state = train_supervised(settings).state_dict()
    assert state.keys() == start.keys()
    # The encoder moved (it was trained); the decoder did not (no loss reaches it).
    encoder = [k for k in state if k.startswith("encoder.")]
    assert any(not torch.equal(state[k], start[k]) for k in encoder)
    assert all(torch.equal(state[k], start[k]) for k in state if k.startswith("decoder."))


def test_supervised_reference_does_not_depend_on_what_the_set_up_draws(tmp_path, monkeypatch):
    """Its label heads start from the demo's seed, not from the global random state the
    trainer's set-up left (a check that drew random numbers there had changed the reference)."""
    import stellar.demo.supervised as supervised

    settings = resolve_budget(
        DemoSettings(out=str(tmp_path), steps=2, batch_size=4, progress=False)
    )
    first = train_supervised(settings).state_dict()

    def set_up_that_draws(*args, **kwargs):
        trainer = demo_trainer(*args, **kwargs)
        torch.rand(7)
        return trainer

    monkeypatch.setattr(supervised, "demo_trainer", set_up_that_draws)
    again = train_supervised(settings).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
