"""The reproduction's pieces: compiled-FLOP counting, the iso-loss interpolation, experiment
files and the command line's refusals (the tables themselves: test_reproduce_smoke.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from glm5_jax.errors import UserError
from glm5_jax.reproduce.experiment_files import table_spec, training_config
from glm5_jax.plan.hlo_flops import matmul_flops, part_of
from glm5_jax.reproduce.iso_loss import dense_flops_at_loss, iso_loss_ratio
from glm5_jax.reproduce.scales import REPO
from glm5_jax.reproduce.tables import TABLES


def _compiled_text(function, *args) -> str:
    return jax.jit(function).lower(*args).compile().as_text()


@pytest.mark.parametrize("layers", [1, 3, 6])
def test_a_scanned_matmul_counts_once_per_iteration(layers):
    def stack(x, w):
        return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0].sum()

    x, w = jnp.ones((16, 32)), jnp.ones((layers, 32, 32))
    counted = matmul_flops(_compiled_text(stack, x, w))
    assert counted.flops == 2 * 16 * 32 * 32 * layers
    assert counted.unknown_trip_counts == 0
    # XLA's own analysis counts the body once: the reason hlo_flops exists.
    xla = jax.jit(stack).lower(x, w).compile().cost_analysis()["flops"]
    assert layers == 1 or xla < counted.flops


def test_batched_dot_and_nested_loops_multiply():
    def nested(x, w):
        def outer(h, _):
            return jax.lax.fori_loop(0, 3, lambda i, g: jnp.einsum("bij,bjk->bik", g, w), h), None
        return jax.lax.scan(outer, x, None, length=2)[0].sum()

    x, w = jnp.ones((4, 8, 8)), jnp.ones((4, 8, 8))
    assert matmul_flops(_compiled_text(nested, x, w)).flops == 2 * 4 * 8 * 8 * 8 * 3 * 2


def test_a_conditional_counts_its_costliest_branch():
    def branchy(a, b):
        return jax.lax.cond(a.sum() > 0, lambda: a @ b @ b, lambda: a)

    a = jnp.ones((8, 8))
    assert matmul_flops(_compiled_text(branchy, a, a)).flops == 2 * 2 * 8 * 8 * 8


def test_flops_by_part_follow_the_name_stack_through_loops_and_the_backward():
    """Two named matmuls in a 3-step scan, differentiated: each part's forward, backward (the
    transpose: two dots per matmul, for both operands' gradients) and remat recompute count
    separately, trip counts applied, and the parts add up to the total."""
    def layer(h, w):
        with jax.named_scope("self_attn/q_a_proj"):
            h = jnp.tanh(h @ w[0])
        with jax.named_scope("mlp/experts"):
            return jnp.tanh(h @ w[1]), None

    def loss(x, w):
        return jax.lax.scan(jax.checkpoint(layer), x, w)[0].sum()

    x, w = jnp.ones((16, 32)), jnp.ones((3, 2, 32, 32))
    counted = matmul_flops(_compiled_text(jax.grad(loss, argnums=(0, 1)), x, w))
    one = 2 * 16 * 32 * 32 * 3  # one matmul of each kind over the three steps
    assert sum(counted.by_part.values()) == counted.flops
    for part in ("attention projections", "routed experts"):
        assert counted.by_part[f"{part}, backward"] == 2 * one
        assert counted.by_part[f"{part}, recompute"] == one


@pytest.mark.parametrize("op_name, part", [
    ("jit(train_step)/jvp(GLM5Model)/moe_layers/while/body/closed_call/block/layer_0/mlp/experts/dot_general",
     "routed experts, forward"),
    ("jit(train_step)/transpose(jvp(GLM5Model))/dense_layers/while/body/closed_call/block/layer_0/mlp/gate_proj/dot_general",
     "dense MLP, backward"),
    ("jit(train_step)/transpose(jvp(GLM5Model))/moe_layers/while/body/closed_call/block/layer_0/mlp/gate/dot_general",
     "router, backward"),
    ("jit(train_step)/jvp(GLM5Model)/dense_layers/while/body/closed_call/block/layer_0/self_attn/indexer.topk/"
     "indexer.queries_keys_weights/weights_proj/dot_general", "indexer, forward"),
    ("jit(train_step)/transpose(jvp())/while/body/closed_call/checkpoint/rematted_computation/indexer_loss/"
     "bshd,btd->bsht/dot_general", "indexer distillation loss, recompute"),
    ("jit(train_step)/transpose(jvp())/while/body/closed_call/checkpoint/lm_head/dot_general",
     "embedding and head, backward"),
    ("jit(train_step)/jvp(GLM5Model)/dense_layers/while/body/closed_call/block/layer_0/self_attn/"
     "bhst,bthd->bshd/dot_general", "attention scores and values, forward"),
    ("jit(train_step)/cond/branch_1_fun/optimizer/...ij,...jk->...ik/dot_general", "optimizer, forward"),
    ("jit(train_step)/adam/dot_general", "other, forward"),
    ("", "compiler-generated (no op_name)"),
])
def test_each_dot_is_named_by_its_model_part_and_pass(op_name, part):
    assert part_of(op_name) == part


def test_dense_compute_is_interpolated_in_log_flops_between_sizes():
    dense = [(100.0, 4.0), (400.0, 3.0), (1600.0, 2.5)]
    assert dense_flops_at_loss(dense, 4.0) == pytest.approx(100.0)
    assert dense_flops_at_loss(dense, 3.5) == pytest.approx(200.0)  # halfway in log: sqrt(100 * 400)
    assert dense_flops_at_loss(dense, 2.75) == pytest.approx(800.0)
    assert iso_loss_ratio(124.0, 3.5, dense) == pytest.approx(0.62)
    assert dense_flops_at_loss(dense, 2.0) is None and dense_flops_at_loss(dense, 4.5) is None
    assert dense_flops_at_loss([(100.0, 3.0), (400.0, 3.2)], 3.1) is None  # loss rose with compute


def test_every_table_has_an_experiment_file_with_every_scale():
    for entry in TABLES.values():
        for scale in ("smoke", "cpu", "pod"):
            training_config(entry.experiment, scale)  # what python -m glm5_jax.train would read
            spec = table_spec(entry.experiment, scale)
            assert spec.paper, f"{entry.name}: the table quotes no paper claim"
            for claim in spec.paper:
                assert claim["source"] and math.isfinite(claim["value"])


def test_bad_scale_and_unknown_fields_name_what_is_allowed():
    with pytest.raises(UserError, match=r"allowed: \['smoke', 'cpu', 'pod'\]"):
        training_config("experiments/paper/cost.py", "large")
    with pytest.raises(UserError, match="unknown field 'model_overrides.hiden_size'.*hidden_size"):
        training_config("experiments/paper/cost.py", "smoke", {"model_overrides": {"hiden_size": 8}})
    with pytest.raises(UserError, match="unknown field 'sedes'"):
        table_spec("experiments/paper/cost.py", "smoke", ["sedes=0,1"])
    assert table_spec("experiments/paper/cost.py", "smoke", ["seeds=0,1"]).seeds == (0, 1)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glm5_jax.reproduce", *args], cwd=REPO, check=False,
                          capture_output=True, text=True, timeout=300)


def test_command_line_lists_the_tables_and_refuses_bad_input(tmp_path):
    listed = _cli("--list")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == list(TABLES)
    for args, message in (
            (["costs", "--scale=smoke", f"--workdir={tmp_path}"], "table 'costs' is unknown; allowed:"),
            (["cost", "--scale=tiny", f"--workdir={tmp_path}"], "scale='tiny'"),
            (["cost", "--scale=smoke"], "--workdir is required"),
            (["cost", "--scale=cpu", f"--workdir={tmp_path}", "--plan"], "--plan compiles pod configs"),
            (["cost", "--scale=smoke", f"--workdir={tmp_path}", "--seeds=1"], "--table.KEY=VALUE")):
        result = _cli(*args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_pod_table_reads_the_planners_json_keys():
    """The pod table's planner columns come from the keys ``glm5_jax.plan --json`` writes
    (``Plan.to_json``): a renamed key there must not leave a column silently empty."""
    from glm5_jax.reproduce.pod import planner_columns

    planned = {"fits": True, "peak_bytes_per_device": 3 * 2**30, "worst_stage": "sparse",
               "step_seconds": 235.0, "mfu": 0.006,
               "stages": {"dense": {"step_seconds": 235.0}, "dense_warmup": {"step_seconds": None},
                          "sparse": {"step_seconds": 11.8}}}
    assert planner_columns(planned) == {"fits": True, "peak_gib": 3.0, "worst_stage": "sparse", "step_s": 235.0,
                                        "mfu": 0.006, "stage_step_s": "dense 235 / sparse 11.8"}
    import inspect

    from glm5_jax.plan.planner import Plan

    written = inspect.getsource(Plan.to_json)
    for key in ("peak_bytes_per_device", "worst_stage", "step_seconds", "mfu", "stages"):
        assert f'"{key}"' in written, key


def test_pod_plans_resume_row_by_row(tmp_path, monkeypatch):
    """``--plan`` keeps each row's verdict: a second run plans nothing again, a row whose config
    changed is planned again, and a failed plan is not kept (the next run retries it)."""
    from glm5_jax.reproduce import __main__ as cli
    from glm5_jax.reproduce import pod

    planned = []

    def fake_planner(command):
        planned.append(command)
        if "router_mode=dynamic" in " ".join(command) and len(planned) <= 12:
            return {"error": "compile failed"}  # the first run's dynamic rows fail
        return {"fits": True, "peak_bytes_per_device": 2**30, "worst_stage": "sparse",
                "step_seconds": 1.0, "mfu": 0.5, "stages": {}}

    monkeypatch.setattr(pod, "run_planner", fake_planner)
    argv = ["cost", "--scale=pod", f"--workdir={tmp_path}", "--plan"]
    assert cli.main(argv) == 0
    assert len(planned) == 12 and len(list((tmp_path / "pod").glob("*.plan.json"))) == 9
    assert cli.main(argv) == 0
    assert len(planned) == 15  # only the 3 failed rows again
    rows = {row["row"]: row for row in json.loads((tmp_path / "table.json").read_text())["rows"]}
    assert all(row["fits"] is True and row["plan"]["commit"] for row in rows.values())
    assert cli.main([*argv, "--table.sizes.p1.hidden_size=1024"]) == 0
    assert len(planned) == 15 + 4  # p1's config changed in every variant
