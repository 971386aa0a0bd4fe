"""The full objective: gradient parity with the official code, switches, and its batch contract."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stellar import create_stellar, load_stellar
from stellar.losses.objective import ObjectiveConfig, StellarObjective
from stellar.train.trainer import leaves_parameters_idle

GRAD_PARAMS = {
    "clustering_head.layer.weight": lambda m: m.clustering_head.layer.weight,
    "dense_proj.weight": lambda m: m.dense_proj.weight,
    "patch_embed.weight": lambda m: m.encoder.patch_embed.weight,
    "reconstruction_head.weight": lambda m: m.decoder.head.weight,
    "sparse_tokens": lambda m: m.sparse_tokens,
}


def test_gradients_match_reference(reference_dir, tiny_io):
    """10·MSE + clustering + CLS clustering + 0.1·KoLeo on the encode pass, as the official code."""
    model = load_stellar(reference_dir / "stellar-tiny", purpose="pretrain")
    total, terms = StellarObjective(model, ObjectiveConfig())({"image": tiny_io["input.image"]})
    assert set(terms) == {"MSE", "koleo_loss", "clustering_loss", "cls_clustering_loss"}
    torch.testing.assert_close(total.reshape(1), tiny_io["grad.total_loss"], atol=1e-4, rtol=0)
    total.backward()
    for name, get in GRAD_PARAMS.items():
        torch.testing.assert_close(get(model).grad, tiny_io[f"grad.{name}"], atol=1e-4, rtol=0)


def _batch(b=2, views=2, local=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(b, 3, 64, 64, generator=g),
        "masked_views": torch.rand(b * views, 3, 64, 64, generator=g),
        "keep_idx": torch.stack([torch.randperm(64, generator=g)[:16] for _ in range(b * views)]),
        "local_views": torch.rand(b * local, 3, 32, 32, generator=g),
        "second_view": torch.rand(b, 3, 64, 64, generator=g),
    }


def test_every_term_is_finite_and_reaches_the_heads():
    model = create_stellar("stellar-tiny", purpose="pretrain")
    total, terms = StellarObjective(model, ObjectiveConfig())(_batch())
    expected = {
        "MSE",
        "koleo_loss",
        "clustering_loss",
        "cls_clustering_loss",
        "mask_loss",
        "cls_loss",
    }
    assert set(terms) == expected
    assert all(torch.isfinite(v) for v in terms.values())
    # the release's total: rec_coeff x MSE + every "*loss*" term
    others = sum(v for k, v in terms.items() if k != "MSE")
    torch.testing.assert_close(total, 10.0 * terms["MSE"] + others)
    total.backward()
    assert model.clustering_head.layer.weight.grad.abs().sum() > 0
    assert model.cls_cluster_head.layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("global_align", [False, True])
@pytest.mark.parametrize(
    "switch,gone",
    [
        ("recon", {"MSE"}),
        ("clustering", {"clustering_loss", "cls_clustering_loss"}),
        ("set_align", {"mask_loss"}),
        ("cls_align", {"cls_loss"}),
        ("koleo", {"koleo_loss"}),
    ],
)
def test_each_ablation_switch_removes_its_terms(switch, gone, global_align):
    model = create_stellar("stellar-tiny", purpose="pretrain")
    on = ObjectiveConfig(global_align=global_align)
    _, full = StellarObjective(model, on)(_batch())
    _, ablated = StellarObjective(model, dataclasses.replace(on, **{switch: False}))(_batch())
    assert set(full) - set(ablated) == gone


def test_global_alignment_replaces_clustering_with_cross_view_terms():
    model = create_stellar("stellar-tiny", purpose="pretrain")
    batch = _batch()
    _, terms = StellarObjective(model, ObjectiveConfig(global_align=True))(batch)
    _, plain = StellarObjective(model, ObjectiveConfig())(batch)
    assert set(terms) == set(plain)
    for name in ("clustering_loss", "cls_clustering_loss", "koleo_loss"):
        assert not torch.isclose(terms[name], plain[name])  # the second view enters each


def test_ema_teacher_supplies_targets_and_gets_no_gradient():
    from stellar.train.ema import make_teacher, update_teacher

    model = create_stellar("stellar-tiny", purpose="pretrain")
    teacher = make_teacher(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    _, with_teacher = StellarObjective(model, ObjectiveConfig(), teacher)(batch)
    total, without = StellarObjective(model, ObjectiveConfig())(batch)
    assert not torch.isclose(with_teacher["clustering_loss"], without["clustering_loss"])
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    before = teacher.sparse_tokens.clone()
    update_teacher(teacher, model, momentum=0.9)
    torch.testing.assert_close(teacher.sparse_tokens, 0.9 * before + 0.1 * model.sparse_tokens)


def test_vq_head_trains_against_tokenizer_codes():
    from stellar.models.vqgan import MaskGITVQGAN

    tokenizer = MaskGITVQGAN(
        hidden_channels=32,
        channel_mult=(1, 1, 1, 1),  # f8: one code per 8 px patch
        num_res_blocks=1,
        z_channels=32,
        codebook_size=1024,
    )
    model = create_stellar(
        "stellar-tiny", purpose="pretrain", decoder_head="vq", vq_model=tokenizer
    )
    objective = StellarObjective(model, ObjectiveConfig())
    images = torch.rand(2, 3, 64, 64)
    # the CE needs one code per patch: the 64 px image is resized to the tokenizer's 8x8 grid
    total, terms = objective({"image": images})
    assert set(terms) >= {"VQ-CE"} and torch.isfinite(terms["VQ-CE"]) and terms["VQ-CE"] > 0


def test_the_trainers_model_keeps_its_tokenizer_frozen(monkeypatch):
    from stellar.models.vqgan import MaskGITVQGAN
    from stellar.train import trainer
    from stellar.train.config import load_config

    tokenizer = MaskGITVQGAN(hidden_channels=32, channel_mult=(1, 1, 1, 1), num_res_blocks=1)
    build = trainer.create_stellar
    with_tokenizer = lambda *a, **kw: build(*a, **{**kw, "vq_model": tokenizer})  # noqa: E731
    monkeypatch.setattr(trainer, "create_stellar", with_tokenizer)
    model = trainer.build_model(load_config("cpu-smoke", ["model_overrides.decoder_head=vq"]))
    assert model.training and model.sparse_tokens.requires_grad
    assert not any(p.requires_grad for p in model.tokenizer.parameters())


def test_a_vq_head_without_its_tokenizer_is_refused_before_any_step():
    """The trainer and the card's pretraining call build this objective before a forward."""
    from stellar.errors import UsageError

    model = create_stellar("stellar-tiny", purpose="pretrain", decoder_head="vq")
    with pytest.raises(UsageError, match="vq_model=.*objective.recon=false"):
        model({"image": torch.rand(1, 3, 64, 64)})
    StellarObjective(model, ObjectiveConfig(recon=False))  # nothing to reconstruct: no tokenizer


RECON_ONLY = dict(clustering=False, set_align=False, cls_align=False, koleo=False)


def test_reconstruction_only_touches_no_head_and_solves_no_sinkhorn(monkeypatch):
    import stellar.losses.objective as objective_module

    def refuse(*args, **kwargs):
        raise AssertionError("a Sinkhorn solve ran for a switched-off term")

    monkeypatch.setattr(objective_module, "clustering_targets", refuse)
    monkeypatch.setattr(objective_module, "sinkhorn_match", refuse)
    model = create_stellar("stellar-tiny", purpose="pretrain").requires_grad_(True)
    calls = []
    for head in (model.clustering_head, model.cls_cluster_head):
        head.register_forward_hook(lambda *args: calls.append(1))
    total, terms = StellarObjective(model, ObjectiveConfig(**RECON_ONLY))(_batch())
    assert set(terms) == {"MSE"}
    total.backward()
    assert not calls
    for head in (model.clustering_head, model.cls_cluster_head):
        assert all(p.grad is None for p in head.parameters())


def test_a_batch_without_the_views_of_the_only_term_is_refused_by_name():
    from stellar.errors import UsageError

    only_set_align = dict(RECON_ONLY, recon=False, set_align=True)
    objective = StellarObjective(
        create_stellar("stellar-tiny", purpose="pretrain"), ObjectiveConfig(**only_set_align)
    )
    with pytest.raises(UsageError, match="no loss term is on with the views it needs"):
        objective({"image": _batch()["image"]})  # no masked views to align
    total, terms = objective(_batch())
    assert set(terms) == {"mask_loss"} and total.isfinite()


@pytest.mark.parametrize(
    "switches,n_masked,n_local",
    [
        ({}, 2, 2),
        ({}, 0, 2),
        ({}, 2, 0),
        (RECON_ONLY, 2, 2),
        ({"recon": False}, 2, 2),
        ({"clustering": False, "set_align": False}, 2, 2),
        ({"clustering": False, "cls_align": False}, 2, 2),
        ({"clustering": False, "cls_align": False}, 0, 2),
        ({"clustering": False}, 2, 2),
        ({"clustering": False}, 2, 0),
        ({"clustering": False, "koleo": False}, 0, 2),
        ({"global_align": True, "recon": False}, 2, 0),
        ({"global_align": True}, 2, 2),
        ({"koleo": False}, 0, 0),
    ],
)
def test_declared_views_and_idle_parameters_match_what_a_step_touches(switches, n_masked, n_local):
    """The plan the data pipeline follows is exact, and so is the trainer's answer to DDP's
    find_unused_parameters: whether some parameter gets no gradient."""
    cfg = ObjectiveConfig(**switches)
    plan = cfg.views(n_masked, n_local)
    full = _batch(views=max(n_masked, 1), local=max(n_local, 1))
    batch = {"image": full["image"]}
    if plan.masked:
        batch.update(masked_views=full["masked_views"], keep_idx=full["keep_idx"])
    if plan.local:
        batch["local_views"] = full["local_views"]
    if plan.second:
        batch["second_view"] = full["second_view"]
    model = create_stellar("stellar-tiny", purpose="pretrain").requires_grad_(True)
    objective = StellarObjective(model, cfg)
    total, _ = objective(batch)
    total.backward()
    untouched = {n for n, p in model.named_parameters() if p.grad is None}
    assert bool(untouched) == leaves_parameters_idle(cfg, plan), untouched
    # A view the plan leaves out changes nothing: the objective would have ignored it.
    for key, used in (("local_views", cfg.views().local), ("second_view", cfg.views().second)):
        if not used:
            _, with_extra = StellarObjective(model, cfg)({**batch, key: full[key]})
            _, without = StellarObjective(model, cfg)(batch)
            assert with_extra.keys() == without.keys()
