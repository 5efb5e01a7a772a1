"""The case table the static GPU check, the Triton tests and the benchmarks share."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from pmm_kernels import MODES, feature_mix
from pmm_kernels.testing import cases


def test_calls_cover_every_mode_attn_form_and_partner_source():
    covered = {(call.mode, call.attn_form, call.given) for call in cases.CALLS}
    for mode, spec in MODES.items():
        forms = cases.ATTN_FORMS if spec.cells == "salient" else (None,)
        assert {(mode, form, False) for form in forms} <= covered, mode
    given = {MODES[call.mode].cells for call in cases.CALLS if call.given}
    assert given == {"salient", "random"}
    assert len({call.name for call in cases.CALLS}) == len(cases.CALLS)


@pytest.mark.parametrize(
    ("mode", "attn_form", "source", "partner_rule"),
    [
        ("a_hard_mix", "weights", "weights", "different_label"),
        ("a_cutmix", "map", "map", "any_other"),
        ("hard_mix", None, "keys", "different_label"),
        ("cutout", None, "keys", "none"),
        ("batch_drop", None, "corner", "none"),
    ],
)
def test_a_call_reads_its_source_and_rule_from_the_mode_table(
    mode, attn_form, source, partner_rule
):
    call = cases.Call(mode, attn_form)
    assert (call.source, call.partner_rule) == (source, partner_rule)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("mixup",), "mode must be one of"),
        (("a_hard_mix",), "attn_form must be one of"),
        (("cutmix", "map"), "attn_form must be one of"),
        (("cutout", None, True), "no partners to give"),
    ],
)
def test_a_call_the_op_cannot_make_is_rejected(args, match):
    with pytest.raises(ValueError, match=match):
        cases.Call(*args)


@pytest.mark.parametrize(
    "shape", cases.COMPILED + cases.LAUNCHED + (cases.PAPER,), ids=lambda shape: shape.name
)
def test_batch_drop_cut_is_the_rectangle_the_op_drops(shape):
    cut = cases.Call("batch_drop").cut(shape)
    feat = torch.ones(2, 1, shape.h, shape.w)
    _, info = feature_mix(feat, None, mode="batch_drop", generator=torch.Generator())
    rows, cols = info.mask[0].nonzero().unbind(1)
    assert (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) == cut.block_size
    assert cut.num_blocks == 1
    assert info.lam[0].item() == pytest.approx(cut.replaced_fraction)


@pytest.mark.parametrize(
    "shape", cases.COMPILED + cases.LAUNCHED + (cases.PAPER,), ids=lambda shape: shape.name
)
def test_shapes_ask_for_k_their_block_grid_has(shape):
    # The op rejects a k beyond the grid; SWEEP's shapes sweep k themselves.
    assert 1 <= shape.num_blocks <= shape.num_grid_blocks


def test_the_paper_map_is_cut_into_the_paper_grid():
    assert cases.PAPER.num_grid_blocks == 8 * 4
    assert cases.PAPER.replaced_fraction == 18 / 192


def test_launcher_plan_draws_only_what_the_call_reads():
    feat = torch.zeros(4, 3, 6, 4)
    plan = cases.launcher_plan("keys", "none", False, feat, (2, 2), 2, torch.Generator())
    assert plan.cells.kind == "keys" and plan.u is None and plan.given_partners is None
    assert plan.cells.values.shape == (4, 6) and plan.labels.shape == (4,)
    assert (plan.block_size, plan.num_blocks, plan.partner_rule) == ((2, 2), 2, "none")
    plan = cases.launcher_plan("map", "any_other", True, feat, (2, 2), 2, torch.Generator())
    assert plan.cells.values.shape == (4, 6, 4) and plan.u is None
    assert plan.given_partners.min() >= -1 and plan.given_partners.max() < 4
    with pytest.raises(ValueError, match="source must be"):
        cases.launcher_plan("saliency", "none", False, feat, (2, 2), 2, torch.Generator())


def test_benchmarks_import_no_test_module():
    # Shared bench helpers live in benchmarks/op_rows.py and pmm_kernels.testing, never in a test
    # module: importing one would also collect its tests' module-level set-up.
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                assert parts[0] != "tests" and not parts[-1].startswith(("test_", "conftest")), (
                    f"{path.name} imports {name}"
                )
