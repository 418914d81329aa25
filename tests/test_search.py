"""spnasc search: outputs, lambda, the latency budget, resume, DDP, clean errors.

Fast tests search spaces/fashion_mnist.spnas on synthetic data with a small latency table
(made here from the layers' multiply-adds); the slow ones use the Pixel 1 table and
spaces/mnasnet.spnas. Test hooks (spnas_dsl.training.Hooks) are passed to the loop: in this process by
wrapping ``spnas_dsl.search.run_search``, in a child process through tests/hooked_search.py (which
ends the process abruptly, os._exit and no clean-up, right after a given step).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spnas_dsl.cli import main
from spnas_dsl.parser import load
from spnas_dsl.shapes import infer_shapes, option_cost
from spnas_dsl.targets.signature import head_signature, layer_signature, stem_signature

REPO = Path(__file__).resolve().parent.parent
FM_SPACE = REPO / "spaces" / "fashion_mnist.spnas"
MNASNET = REPO / "spaces" / "mnasnet.spnas"
# Small and quick: 96 synthetic images at 16x16, batch 32 -> 3 steps per epoch.
TINY = ["--data", "synthetic:96", "--image-size", "16", "--batch-size", "32", "--quiet", "--log-every", "1"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Two test workers share two cores: one intra-op thread each (and in child processes)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def write_table(space: Path, path: Path, name: str = "tiny") -> Path:
    """A latency table pricing every option of ``space``: 2 ms per million multiply-adds."""
    net = load(space)
    shapes = infer_shapes(net)
    entries = [{"signature": stem_signature(net, shapes), "latency_ms": 1.0},
               {"signature": head_signature(shapes), "latency_ms": 1.0}]
    for s in shapes.layers:
        for o in s.layer.options:
            sig = layer_signature(s, o)
            if sig is not None:
                entries.append({"signature": sig, "latency_ms": round(2e-6 * option_cost(s, o)[1], 5),
                                "position": s.index})
    path.write_text(json.dumps({"version": 1, "name": name, "description": "test table", "device": "test",
                                "runtime": "test", "threads": 1, "source": "multiply-adds", "date": "2025-01-01",
                                "entries": entries}))
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return write_table(FM_SPACE, tmp_path_factory.mktemp("table") / "tiny.json")


def search(*args, capsys=None) -> tuple[int, str, str]:
    code = main(["search", *map(str, args)])
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def subprocess_search(*args, env=None, exit_after_step: int | None = None, **kw) -> subprocess.Popen:
    command = [sys.executable, "-m", "spnas_dsl"] if exit_after_step is None else [
        sys.executable, str(REPO / "tests" / "hooked_search.py"), str(exit_after_step)]
    return subprocess.Popen([*command, "search", *map(str, args)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def header(arch: Path) -> dict[str, str]:
    lines = [ln[2:] for ln in arch.read_text().splitlines() if ln.startswith("# ") and ": " in ln]
    return dict(ln.split(": ", 1) for ln in lines)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, table) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(["search", str(FM_SPACE), "--target", str(table), *TINY, "--epochs", "2", "--lambda", "0.05",
                 "--out", str(out)])
    assert code == 0
    return out


# -- a tiny search and its outputs --------------------------------------------------------------

def test_tiny_search_writes_its_outputs(tiny_run):
    for name in ("arch.spnas", "search.json", "checkpoint.pt", "search_curves.png", "decisions.png",
                 "norms_thresholds.png", "superkernel.png", "superkernel_groups.png"):
        assert (tiny_run / name).is_file(), name
    assert list((tiny_run / "tensorboard").glob("events.out.tfevents.*"))
    arch = load(tiny_run / "arch.spnas")
    assert arch.is_concrete and arch.name == "fashion_mnist"
    info = header(tiny_run / "arch.spnas")
    for key in ("target", "predicted latency", "lambda", "seed", "data", "image size", "epochs",
                "held-out accuracy of the supernet"):
        assert key in info, key
    assert "proxy" in info["image size"] and "28x28x1" in info["image size"]
    history = json.loads((tiny_run / "search.json").read_text())
    assert len(history["history"]["epochs"]) == 2 and history["history"]["steps"]
    step = history["history"]["steps"][-1]
    assert {"ce", "acc", "latency_relaxed", "latency_ms", "lambda", "lr", "decisions", "norms"} <= set(step)
    assert history["result"]["latency_ms"] == pytest.approx(float(info["predicted latency"].split()[0]), abs=0.01)


def test_arch_is_accepted_by_check_and_latency(tiny_run, table, capsys):
    assert main(["check", str(tiny_run / "arch.spnas")]) == 0
    capsys.readouterr()
    assert main(["latency", str(tiny_run / "arch.spnas"), "--target", str(table), "--json"]) == 0
    priced = json.loads(capsys.readouterr().out)["latency_ms"]
    claimed = float(header(tiny_run / "arch.spnas")["predicted latency"].split()[0])
    assert priced == pytest.approx(claimed, abs=0.01)


def test_resume_of_a_finished_run_reproduces_it(tiny_run, capsys):
    before = (tiny_run / "arch.spnas").read_text()
    code, _, _ = search("--resume", tiny_run, "--quiet", capsys=capsys)
    assert code == 0 and (tiny_run / "arch.spnas").read_text() == before


# -- lambda and the budget -----------------------------------------------------------------------

def test_lambda_controller():
    import math

    from spnas_dsl.search import LambdaController

    fixed = LambdaController(0.02, None)
    assert fixed.value(in_warmup=True) == 0.0 and fixed.value(in_warmup=False) == 0.02
    steer = LambdaController(0.02, budget=50.0, gain=0.2, every=1)
    steer.update(1, 75.0)  # over budget: lambda grows by e^0.2
    assert steer.value(False) == pytest.approx(0.02 * math.exp(0.2))
    steer.update(2, 50.0 * math.exp(-0.025))  # 2.5 % under: half speed down
    assert steer.value(False) == pytest.approx(0.02 * math.exp(0.1))
    for step in range(100):
        steer.update(step, 25.0)
    assert steer.value(False) == pytest.approx(0.02 * math.exp(LambdaController.U_MIN))  # clamped
    copy = LambdaController(0.02, budget=50.0)
    copy.load_state_dict(steer.state_dict())
    assert copy.value(False) == steer.value(False)


def test_budget_below_the_fastest_network_is_refused(table, tmp_path, capsys):
    code, _, err = search(FM_SPACE, "--target", table, *TINY, "--latency-budget", "0.5", "--out", tmp_path / "o",
                          capsys=capsys)
    assert code == 2 and "below the fastest network" in err and "Traceback" not in err


def test_budget_search_lands_under_the_budget(table, tmp_path, capsys):
    budget = 7.0  # the space spans 4.57 .. 10.35 ms on the test table
    code, _out, err = search(FM_SPACE, "--target", table, *TINY, "--epochs", "2", "--latency-budget", budget,
                            "--out", tmp_path / "o", capsys=capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "o" / "search.json").read_text())["result"]
    assert result["latency_ms"] <= budget
    assert f"latency budget: {budget:g} ms" in (tmp_path / "o" / "arch.spnas").read_text()


@pytest.mark.slow
def test_budget_on_pixel1_mnasnet(tmp_path, capsys):
    budget = 80.0
    code, _out, err = search(MNASNET, "--target", "pixel1", "--data", "synthetic:64", "--image-size", "8",
                            "--batch-size", "32", "--epochs", "2", "--warmup-epochs", "1", "--latency-budget", budget,
                            "--quiet", "--out", tmp_path / "o", capsys=capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "search.json").read_text())["result"]["latency_ms"] <= budget
    capsys.readouterr()
    assert main(["latency", str(tmp_path / "o" / "arch.spnas"), "--target", "pixel1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] <= budget


@pytest.mark.slow
def test_large_lambda_finds_a_faster_network(table, tmp_path):
    latency = {}
    for lam in (0.0, 0.1):
        out = tmp_path / f"lam{lam}"
        assert main(["search", str(FM_SPACE), "--target", str(table), "--data", "synthetic:192", "--image-size", "16",
                     "--batch-size", "32", "--epochs", "4", "--warmup-epochs", "1", "--lambda", str(lam), "--quiet",
                     "--out", str(out)]) == 0
        latency[lam] = json.loads((out / "search.json").read_text())["result"]["latency_ms"]
    # no latency pressure: the network stays at (or next to) the largest, 10.35 ms; the thresholds take
    # normalised steps, so the CE's sign alone can turn one kernel shell off (10.05 ms)
    assert latency[0.0] >= 10.0
    assert latency[0.1] < latency[0.0] - 1.0


# -- the methods (spnas_dsl.search.methods) ------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(__import__("spnas_dsl.search.methods", fromlist=["METHODS"]).METHODS))
def test_every_method_is_offered_documented_and_runs(method, table, tmp_path, capsys):
    """docs/compiler.md, "How to add a search method": each registered method is a --method choice,
    is named in that section and runs a tiny search to its outputs."""
    docs = (REPO / "docs" / "compiler.md").read_text()
    assert f"`{method}`" in docs[docs.index("### A search method"):]
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert method in capsys.readouterr().out.split("--method {", 1)[1].split("}", 1)[0].split(",")
    out = tmp_path / "o"
    code, _, err = search(FM_SPACE, "--target", table, *TINY, "--epochs", "1", "--method", method,
                          "--latency-budget", "50%", "--evaluations", "3", "--out", out, capsys=capsys)
    assert code == 0, err
    assert json.loads((out / "search.json").read_text())["result"]["method"] == method
    assert load(out / "arch.spnas").is_concrete


# -- resume -------------------------------------------------------------------------------------

RESUME_ARGS = ["--data", "synthetic:160", "--image-size", "16", "--batch-size", "32", "--epochs", "3",
               "--warmup-epochs", "1", "--lambda", "0.1", "--checkpoint-every", "2", "--log-every", "3", "--quiet"]


def without_timing(value):
    """``search.json`` without its wall-clock fields ("seconds"), which no two runs share."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, table) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    proc = subprocess_search(FM_SPACE, "--target", table, *RESUME_ARGS, "--out", out)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    return out


def test_resume_after_an_abrupt_exit_gives_the_same_files(reference_run, table, tmp_path):
    """Killed after step 9 (checkpoint at 8, history records every 3 steps): the resumed run writes the
    uninterrupted run's arch.spnas and search.json (all but wall-clock seconds), the record at step 9
    covering steps 7-9 as it does there, and removes the temporaries a kill during a save leaves."""
    out = tmp_path / "out"
    proc = subprocess_search(FM_SPACE, "--target", table, *RESUME_ARGS, "--out", out,
                             exit_after_step=9)  # mid-epoch 2, after the checkpoint at 8
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 99, err
    assert not (out / "arch.spnas").exists()
    stale = [out / ".checkpoint.pt.k1ll3d_a.tmp", out / ".search.json.k1ll3d_b.tmp"]  # as a kill mid-save leaves
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    (out / "notes.txt").write_text("mine")
    proc = subprocess_search("--resume", out)
    stdout, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert "resuming at step 8" in stdout
    assert "removed 2 temporary files" in stdout
    assert not any(path.exists() for path in stale) and (out / "notes.txt").read_text() == "mine"
    assert (out / "arch.spnas").read_text() == (reference_run / "arch.spnas").read_text()
    resumed, straight = (json.loads((d / "search.json").read_text()) for d in (out, reference_run))
    assert [r["step"] for r in resumed["history"]["steps"]] == [3, 6, 9, 12, 15]
    assert resumed["history"]["steps"][2] == straight["history"]["steps"][2]
    resumed["config"]["space"] = straight["config"]["space"]
    assert without_timing(resumed) == without_timing(straight)
    assert resumed["result"]["seconds"] > resumed["history"]["epochs"][0]["seconds"]  # counts both sessions


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_network(reference_run, table, tmp_path):
    out = tmp_path / "out"
    proc = subprocess_search(FM_SPACE, "--target", table, *RESUME_ARGS, "--out", out)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:  # kill once a mid-run checkpoint exists
        if (out / "checkpoint.pt").exists() and (out / "search.json").exists():
            break
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the search finished before it could be killed")
    assert not (out / "arch.spnas").exists()
    proc = subprocess_search("--resume", out)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert (out / "arch.spnas").read_text() == (reference_run / "arch.spnas").read_text()


def test_resume_refuses_changed_settings(tiny_run, capsys):
    code, _, err = search("--resume", tiny_run, "--epochs", "5", capsys=capsys)
    assert code == 2 and "--epochs 5 differs" in err
    code, _, err = search("--resume", tiny_run.parent / "nothing-here", capsys=capsys)
    assert code == 1 and "not a folder" in err


# -- the output folder: a finished search is never overwritten unasked ------------------------------

def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_non_empty_out_is_refused_and_left_alone(tiny_run, table, tmp_path, capsys):
    import shutil

    out = tmp_path / "done"
    shutil.copytree(tiny_run, out)
    before = snapshot(out)
    code, _, err = search(FM_SPACE, "--target", table, *TINY, "--epochs", "1", "--out", out, capsys=capsys)
    assert code == 2 and "Traceback" not in err
    assert f"--out {out} is not empty (arch.spnas, checkpoint.pt, decisions.png" in err
    assert f"'spnasc search --resume {out}'" in err and "--force" in err
    assert snapshot(out) == before  # arch.spnas and everything else untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    code, _, err = search(FM_SPACE, "--target", table, *TINY, "--out", mine, capsys=capsys)
    assert code == 2 and "is not empty (notes.txt)" in err
    code, _, err = search("--resume", out, "--force", capsys=capsys)
    assert code == 2 and "--force starts a new search" in err
    assert snapshot(out) == before


def test_force_starts_clean_and_keeps_other_files(tiny_run, table, tmp_path, capsys):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(tiny_run, out)
    (out / "notes.txt").write_text("mine")
    (out / "tensorboard" / "events.out.tfevents.old").write_bytes(b"old run")
    (out / ".checkpoint.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    code, stdout, err = search(FM_SPACE, "--target", table, *TINY, "--epochs", "1", "--lambda", "0.05", "--out", out,
                               "--force", capsys=capsys)
    assert code == 0, err
    assert "--force: removed the previous run's arch.spnas, search.json, checkpoint.pt, tensorboard" in stdout
    assert "--force: kept notes.txt" in stdout
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "tensorboard" / "events.out.tfevents.old").exists()
    assert not (out / ".checkpoint.pt.x1y2z3.tmp").exists()
    result = json.loads((out / "search.json").read_text())
    assert result["config"]["epochs"] == 1 and len(result["history"]["epochs"]) == 1  # nothing of the old run


# -- options: one usage error each, exit 2 --------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
    (["--batch-size", "-4"], "argument --batch-size: must be an integer >= 1, got '-4'"),
    (["--lr", "-1"], "argument --lr: must be a number > 0, got '-1'"),
    (["--lambda", "nan"], "argument --lambda: expected a finite number, got 'nan'"),
    (["--nproc", "0"], "argument --nproc: must be an integer >= 1, got '0'"),
    (["--epochs", "1e999"], "argument --epochs: expected an integer, got '1e999'"),
    (["--latency-budget", "inf"], "argument --latency-budget: expected a finite number, got 'inf'"),
    (["--val-fraction", "1"], "argument --val-fraction: must be a number between 0 and 1"),
    (["--out", "FILE"], "argument --out: FILE is a file, not a folder"),
    (["--out", "FILE/sub"], "argument --out: FILE/sub: FILE is a file, not a folder"),
])
def test_bad_options_are_usage_errors(table, tmp_path, capsys, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        main(["search", str(FM_SPACE), "--target", str(table), *TINY, *options])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_oversized_subset_is_a_usage_error(table, tmp_path, capsys):
    code, _, err = search(FM_SPACE, "--target", table, *TINY, "--subset", "500", "--out", tmp_path / "o", capsys=capsys)
    assert code == 2 and "--subset 500: the training split of 'synthetic:96' has" in err
    assert not (tmp_path / "o").exists()


# -- data parallel ----------------------------------------------------------------------------------

def test_two_process_gloo_search(table, tmp_path):
    out = tmp_path / "out"
    proc = subprocess_search(FM_SPACE, "--target", table, *TINY, "--epochs", "1", "--lambda", "0.05", "--nproc", "2",
                             "--out", out)
    stdout, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    result = json.loads((out / "search.json").read_text())
    assert result["world_size"] == 2 and result["result"]["latency_ms"] > 0
    assert "16 per process x 2" in stdout
    assert load(out / "arch.spnas").is_concrete
    assert sum(ln.startswith("predicted latency:") for ln in stdout.splitlines()) == 1  # only rank 0 prints


# -- clean errors --------------------------------------------------------------------------------

def assert_clean(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_missing_data_dir(table, tmp_path, capsys):
    code, _, err = search(FM_SPACE, "--target", table, "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "o",
                          capsys=capsys)
    assert_clean(code, err, "Fashion-MNIST not found in", "apt-get install -y dataset-fashion-mnist", "--data-dir")
    assert not (tmp_path / "o" / "arch.spnas").exists()


def test_unknown_target(tmp_path, capsys):
    code, _, err = search(FM_SPACE, "--target", "pixel9", *TINY, "--out", tmp_path / "o", capsys=capsys)
    assert_clean(code, err, "unknown target 'pixel9'", "pixel1")


def test_unpriceable_space(tmp_path, capsys):
    code, _, err = search(FM_SPACE, "--target", "pixel1", *TINY, "--out", tmp_path / "o", capsys=capsys)
    assert_clean(code, err, "target 'pixel1'", "has no latency for")


def test_concrete_network_is_refused(tmp_path, tiny_run, table, capsys):
    code, _, err = search(tiny_run / "arch.spnas", "--target", table, *TINY, "--out", tmp_path / "o", capsys=capsys)
    assert_clean(code, err, "not a search space")


def test_nan_loss_stops_cleanly_and_keeps_the_last_checkpoint(table, tmp_path, monkeypatch, capsys):
    import functools

    import spnas_dsl.search
    from spnas_dsl.training import Hooks

    nan_at_5 = Hooks(loss=lambda step, loss: loss * float("nan") if step == 5 else loss)  # steps count from 1
    monkeypatch.setattr(spnas_dsl.search, "run_search", functools.partial(spnas_dsl.search.run_search, hooks=nan_at_5))
    out = tmp_path / "o"
    code, _, err = search(FM_SPACE, "--target", table, *TINY, "--epochs", "2", "--checkpoint-every", "2",
                          "--out", out, capsys=capsys)
    assert_clean(code, err, "the loss became nan at step 5", "last good checkpoint (step 4)")
    assert (out / "checkpoint.pt").exists() and not (out / "arch.spnas").exists()
    from spnas_dsl.training import load_checkpoint

    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4


# -- shared training pieces (spnas_dsl.training) ------------------------------------------------------

def test_param_groups_keep_bn_bias_and_thresholds_out_of_weight_decay():
    import torch

    from spnas_dsl.compiler.supernet import lower_to_supernet
    from spnas_dsl.training import Recipe, build_optimizer

    net = lower_to_supernet(load(FM_SPACE))
    thresholds = {id(p) for p in net.threshold_parameters()}
    opt = build_optimizer(net, Recipe(batch_size=256, threshold_lr_scale=10, threshold_eps=1e-8,
                                      threshold_momentum=0.0), threshold_ids=thresholds)
    groups = {g["name"]: g for g in opt.param_groups}
    assert {id(p) for p in groups["thresholds"]["params"]} == thresholds
    assert groups["thresholds"]["weight_decay"] == 0 and groups["no_decay"]["weight_decay"] == 0
    assert groups["decay"]["weight_decay"] == 1e-5 and all(p.ndim > 1 for p in groups["decay"]["params"])
    bn_and_bias = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)} | {id(net.classifier.bias)}
    assert bn_and_bias <= {id(p) for p in groups["no_decay"]["params"]}
    assert groups["decay"]["lr"] == pytest.approx(0.016) and groups["thresholds"]["lr"] == pytest.approx(0.16)
    assert groups["thresholds"]["momentum"] == 0.0 and groups["thresholds"]["rule"] == "rmsprop"
    assert groups["decay"]["rule"] == "rmsprop_tf"


def test_rmsprop_tf_resumes_a_checkpoint_saved_before_groups_had_a_rule():
    import torch

    from spnas_dsl.training.recipe import RMSpropTF

    w = torch.nn.Parameter(torch.zeros(2))
    opt = RMSpropTF([w], lr=0.1)
    w.grad = torch.ones(2)
    opt.step()
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["rule"]  # the optimizer's state as the earlier RMSpropTF wrote it
    again = RMSpropTF([w], lr=0.1)
    again.load_state_dict(saved)
    before = w.detach().clone()
    again.step()
    assert again.param_groups[0]["rule"] == "rmsprop_tf" and not torch.equal(before, w.detach())


def test_rmsprop_tf_first_step_and_schedule():
    import torch

    from spnas_dsl.training import Recipe, build_scheduler
    from spnas_dsl.training.recipe import RMSpropTF, lr_factor

    w = torch.nn.Parameter(torch.zeros(1))
    opt = RMSpropTF([w], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    w.grad = torch.ones(1)
    opt.step()  # ms = 0.9 * 1 + 0.1 * 1 = 1 -> step = lr * g / sqrt(1 + eps)
    assert float(w.detach()) == pytest.approx(-0.1 / (1 + 1e-3) ** 0.5)
    recipe = Recipe(batch_size=512)
    assert recipe.base_lr == pytest.approx(0.032)
    assert lr_factor(recipe, 23, steps_per_epoch=10, total_steps=100) == 1.0  # staircase: x0.97 every 24 steps
    assert lr_factor(recipe, 24, steps_per_epoch=10, total_steps=100) == pytest.approx(0.97)
    cosine = Recipe(optimizer="sgd", batch_size=256)
    assert cosine.base_lr == pytest.approx(0.1) and lr_factor(cosine, 50, 10, 100) == pytest.approx(0.5)
    sched = build_scheduler(opt, recipe, steps_per_epoch=10, epochs=10)
    for _ in range(24):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.97)


def test_checkpoint_roundtrip_rng_and_corruption(tmp_path):
    import random

    import torch

    from spnas_dsl.errors import CheckpointError
    from spnas_dsl.training import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint

    state = {"model": {"w": torch.arange(3.0)}, "step": 7, "history": [{"a": 1.5, "b": "x"}], "rng": capture_rng_state()}
    expected = (torch.rand(3), random.random())
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], torch.arange(3.0))
    restore_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert not list(tmp_path.glob(".c.pt.*"))  # no temporary file left behind
    (tmp_path / "c.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
