"""RECEModule behaviour beyond the maths: seeds, keep-best, undo, pipeline export, bad weights."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from rece_lightning.artefacts.export import export_edit
from rece_lightning.errors import RECEError
from rece_lightning.lightning.data import RECEDataModule
from rece_lightning.lightning.module import RECEModule
from rece_lightning.maths.edit_state import EditState
from rece_lightning.maths.editor import KVEditor


@pytest.fixture(scope="module")
def module(tiny_sd1):
    return RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], generation={"num_inference_steps": 2})


def test_each_image_depends_only_on_its_own_seed(module):
    together = module.generate(["a cat", "a dog"], [3, 4])
    alone = module.generate(["a dog"], [4])
    again = module.generate(["a cat", "a dog"], [3, 5])
    assert np.allclose(np.asarray(together[1], float), np.asarray(alone[0], float), atol=1)
    assert np.array_equal(np.asarray(together[0]), np.asarray(again[0]))
    assert not np.array_equal(np.asarray(together[1]), np.asarray(again[1]))


def test_restore_original_undoes_exactly(module):
    before = {p.key: p.module.weight.detach().clone() for p in module.editor.projections}
    module.erase()
    assert any(not torch.equal(p.module.weight, before[p.key]) for p in module.editor.projections)
    module.editor.restore_original()
    assert all(torch.equal(p.module.weight, before[p.key]) for p in module.editor.projections)


class _StageScore(L.Callback):
    """Logs a fake validation metric per stage whose best value is at the UCE stage."""

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("val/score", {"original": 5.0, "uce": 1.0}.get(pl_module.stage, 3.0))


def test_keep_best_restores_the_best_stage(tiny_sd1, tmp_path, small_prompts):
    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], keep_best="val/score",
                        generation={"num_inference_steps": 1}, rece={"iterations": 2})
    data = RECEDataModule(val_prompts=str(small_prompts), limit=1)
    trainer = L.Trainer(max_epochs=4, callbacks=[_StageScore()], default_root_dir=tmp_path, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(module, data)
    assert module.stage == "uce"
    uce_only = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], rece={"iterations": 0},
                          validate_original=False).erase()
    for p in module.editor.projections:
        torch.testing.assert_close(p.module.weight, uce_only.current_weights()[p.key])


def test_pipeline_export_loads_with_diffusers(module, tmp_path):
    editor = module.erase()
    written = export_edit(editor, tmp_path, ["pipeline"], pipeline=module.pipeline)
    loaded = StableDiffusionPipeline.from_pretrained(written["pipeline"], safety_checker=None)
    state = loaded.unet.state_dict()
    for key, value in editor.current_weights().items():
        assert torch.equal(state[key], value)
    assert not list(tmp_path.glob(".*")), "temporary files were left behind"


def test_non_finite_weights_are_rejected(tiny_sd1):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None)
    name = next(n for n, _ in pipe.unet.named_modules() if n.endswith("attn2.to_v"))
    with torch.no_grad():
        pipe.unet.get_submodule(name).weight[0, 0] = float("nan")
    with pytest.raises(RECEError, match="non-finite"):
        KVEditor.for_unet(pipe.unet)


def test_tensor_technique_has_no_shared_map(tiny_sd1, tmp_path):
    editor = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity"], technique="tensor",
                        validate_original=False, rece={"iterations": 1}).erase()
    written = export_edit(editor, tmp_path, ["kv_weights", "edit_map", "lora"])
    assert set(written) == {"kv_weights", "lora"}  # the edit map exists only for "replace" edits
    with pytest.raises(RECEError, match="'replace' technique only"):
        editor.edit_rank()


def test_starting_from_uce_weights_equals_computing_them(tiny_sd1, tmp_path):
    """A published-UCE-style start (K/V file) then RECE gives the same edit as running UCE here."""
    kwargs = dict(pretrained=str(tiny_sd1), concepts=["nudity"], validate_original=False, torch_dtype="float64")
    uce_only = RECEModule(**kwargs, rece={"iterations": 0}).erase()
    export_edit(uce_only, tmp_path, ["kv_weights"])
    full = RECEModule(**kwargs).erase().current_weights()
    resumed_module = RECEModule(**kwargs, uce={"weights": str(tmp_path / "kv_weights.safetensors")})
    assert not resumed_module.editor.base_is_original
    resumed = resumed_module.erase()
    for key, value in resumed.current_weights().items():
        torch.testing.assert_close(value, full[key], rtol=1e-9, atol=1e-12)
    lora = resumed.lora_factors()  # per-layer SVD path (the base is not the original model)
    for key, (b, a) in lora.items():
        torch.testing.assert_close(resumed.original[key] + b @ a, full[key], rtol=1e-9, atol=1e-10)


def test_exports_get_normal_permissions(module, tmp_path):
    import os
    import stat

    written = export_edit(module.erase(), tmp_path / "out", ["kv_weights", "lora"])
    umask = os.umask(0)
    os.umask(umask)
    for path in written.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


@pytest.mark.parametrize("with_to_k", [True, False])
def test_derivation_sums_follow_the_edits(tiny_sd1, with_to_k):
    """The sums kept up to date step by step equal Σ W'ᵀW' and Σ W'ᵀW₀ read from the edited weights."""
    module = RECEModule(pretrained=str(tiny_sd1), concepts=["nudity", "a cat"], with_to_k=with_to_k,
                        validate_original=False, rece={"iterations": 2}, torch_dtype="float64")
    editor = module.editor

    def from_weights():
        current = editor.current_weights(torch.float64)
        a = sum(current[p.key].T @ current[p.key] for p in editor.projections)
        b = sum(current[p.key].T @ editor.original[p.key].double() for p in editor.projections)
        return a, b

    earlier = None
    for index in range(len(module.stages)):
        module.run_stage(index, apply=False)
        earlier = earlier or editor.snapshot()  # the first stage's state, known history
        a, b = editor.derivation_grams()
        a_ref, b_ref = from_weights()
        torch.testing.assert_close(a, a_ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(b, b_ref, rtol=1e-9, atol=1e-9)
    state = editor.snapshot()
    editor.restore_snapshot(earlier)  # back to a prefix of the cached steps: sums rebuilt from the grams
    a, b = editor.derivation_grams()
    torch.testing.assert_close(a, from_weights()[0], rtol=1e-9, atol=1e-9)
    restored = EditState.from_tensors(state.tensors())  # a checkpoint keeps the steps
    assert restored.steps is not None and len(restored.steps) == len(state.steps)
    editor.restore_snapshot(EditState(maps=state.maps, steps=None))  # unknown history: the dense products
    a, b = editor.derivation_grams()
    torch.testing.assert_close(a, from_weights()[0], rtol=1e-9, atol=1e-9)
    eye = torch.eye(editor.dim, dtype=torch.float64)
    editor.restore_snapshot(EditState(maps={"to_k": eye, "to_v": state.maps["to_v"]}, steps=None))  # K ≠ V maps
    a, b = editor.derivation_grams()
    torch.testing.assert_close(a, from_weights()[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(b, from_weights()[1], rtol=1e-9, atol=1e-9)


def test_low_rank_fold_and_factors_equal_the_dense_ones(monkeypatch):
    """Folding ``W + (W U) Vᵀ`` from the steps equals ``W T``; the rank and LoRA factors from the steps equal those
    of a dense SVD of ``T − I`` (a state of unknown history). Random layers of width 96, steps of 4 rows each."""
    from torch import nn

    from rece_lightning.maths import editor as editor_module
    from rece_lightning.maths.editor import KVEditor
    from rece_lightning.maths.projections import Projection

    torch.manual_seed(0)
    d = 96
    layers = [Projection(f"b{i}.attn2.{kind}", kind, nn.Linear(d, 48, bias=False).double())
              for i in range(3) for kind in ("to_k", "to_v")]
    editor = KVEditor(layers)
    for _ in range(3):  # 3 steps of 4 rows: T − I = U Vᵀ with 12 columns
        c = torch.randn(4, d, dtype=torch.float64)
        editor.erase([(c, torch.randn(4, d, dtype=torch.float64))], torch.randn(6, d, dtype=torch.float64),
                     lamb=0.5, erase_scale=1.0, preserve_scale=1.0)
    u, v = editor._map_factors()
    assert u.shape == (d, 12)
    monkeypatch.setattr(editor_module, "LOW_RANK_FOLD", 10**9)  # never thin enough: the dense product
    dense = editor.current_weights()
    monkeypatch.setattr(editor_module, "LOW_RANK_FOLD", 1)  # always the factored product
    thin = editor.current_weights()
    for key, weight in dense.items():
        torch.testing.assert_close(thin[key], weight, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(weight, editor.original[key] @ editor.maps["to_v"], rtol=1e-12, atol=1e-12)
    editor.apply()
    for p in editor.projections:
        torch.testing.assert_close(p.module.weight.data, dense[p.key], rtol=1e-12, atol=1e-12)
    state = editor.snapshot()
    rank, factors = editor.edit_rank(), editor.lora_factors()
    assert rank == 12
    editor.restore_snapshot(EditState(maps=state.maps, steps=None))  # history unknown: dense SVD
    assert editor._map_factors() is None and editor.edit_rank() == rank
    for key, (b, a) in editor.lora_factors().items():
        b_steps, a_steps = factors[key]
        assert b.shape == b_steps.shape
        torch.testing.assert_close(b_steps @ a_steps, b @ a, rtol=1e-9, atol=1e-10)
    wide = EditState(maps=state.maps, steps=((torch.zeros(d, d // 2 + 1, dtype=torch.float64),) * 2,) * 2)
    editor.restore_snapshot(wide)
    assert editor._map_factors() is None  # d or more columns in all: the dense map is cheaper


def test_a_step_wider_than_the_width_is_kept_as_one_dense_map():
    """An erase of more rows than the embedding width (the robust recipe's caption sets: thousands of token rows)
    keeps its step as ``(X Yᵀ, I)``, ``d`` columns instead of ``n``, and the map is the closed form's ``T = N M⁻¹``
    (the oracle: solved directly from UCE eq. 7), also after a second, narrow step."""
    from torch import nn

    from rece_lightning.maths.editor import KVEditor
    from rece_lightning.maths.projections import Projection

    torch.manual_seed(0)
    d, n = 24, 60
    layers = [Projection(f"b{i}.attn2.{kind}", kind, nn.Linear(d, 16, bias=False).double())
              for i in range(2) for kind in ("to_k", "to_v")]
    editor = KVEditor(layers)
    c, t, p = (torch.randn(rows, d, dtype=torch.float64) for rows in (n, n, 8))
    editor.erase([(c, t)], p, lamb=0.5, erase_scale=1.0, preserve_scale=2.0)
    ((x, y),) = editor.state.steps
    assert x.shape == y.shape == (d, d) and torch.equal(y, torch.eye(d, dtype=torch.float64))
    eye = torch.eye(d, dtype=torch.float64)
    m = 0.5 * eye + c.T @ c + 2.0 * p.T @ p
    expected = torch.linalg.solve(m, (0.5 * eye + t.T @ c + 2.0 * p.T @ p).T).T  # N M⁻¹
    torch.testing.assert_close(editor.maps["to_v"], expected, rtol=1e-10, atol=1e-10)
    c2 = torch.randn(3, d, dtype=torch.float64)
    editor.erase([(c2, torch.zeros(3, d, dtype=torch.float64))], None, lamb=0.5, erase_scale=1.0, preserve_scale=1.0)
    assert [s[0].shape[1] for s in editor.state.steps] == [d, 3]
    u, v = editor._map_factors() or (None, None)
    assert u is None  # d + 3 columns: the dense map is cheaper than the factors
