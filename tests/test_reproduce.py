"""bench/reproduce.py: every reproduction run resolves to the configuration its table cell needs,
and the report renders measured runs (here: synthetic metrics) beside the published numbers."""
import importlib.util
import json

import pytest

from conftest import REPO
from test_scripts import parse

spec = importlib.util.spec_from_file_location("reproduce", REPO / "bench" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)

LOSSES = {"ce": "gloro_crossentropy", "trades": "trades", "emma": "emma"}


@pytest.mark.parametrize("name", list(reproduce.RUNS))
def test_each_run_resolves_to_its_table_cell(name):
    cfg = parse(reproduce.command(name)[1:])
    assert cfg["dataset"].endswith("shared/data/cifar10-jpeg.npz") and cfg["batch_size"] == 256
    assert (cfg["lr"], cfg["weight_decay"], cfg["clip_norm"], cfg["eps_schedule"]) == (1e-3, 1e-4, 3.0, "paper")
    assert cfg["epsilon"] == pytest.approx(36 / 255) and cfg["augment"] is True
    assert cfg["warmup_epochs"] / cfg["epochs"] == pytest.approx(1 / 20)
    assert cfg["model_dir"] == f"runs/repro/{name}"
    assert cfg["bound"] == "sound"  # the per-epoch test VRA in docs/results.md is certified
    if name in reproduce.HEADLINE_VARIANTS:  # the headline run with one setting changed
        base = parse(reproduce.command("headline")[1:])
        changed = {k for k in cfg if cfg[k] != base[k]} - {"model_dir", "explicit_flags"}
        assert changed == set(reproduce.HEADLINE_VARIANTS[name])
        return
    if name not in reproduce.ABLATION:  # as the committed runs were trained
        assert cfg["bound_gradient"] == "full" and cfg["seed"] == 0 and cfg["train_dtype"] == "float32"
    if name == "headline":
        assert (cfg["arch"], cfg["depth"], cfg["width"], cfg["epochs"], cfg["loss"]) == ("liresnet", 6, 64, 20, "emma")
        return
    if name in reproduce.ABLATION:  # Table 2's LiResNet EMMA run with one setting changed
        base = parse(reproduce.command("t2_liresnet_emma")[1:])
        changed = {k for k in cfg if cfg[k] != base[k]} - {"model_dir", "explicit_flags"}
        assert changed == set(reproduce.ABLATION[name]) and all(
            cfg[k] == v for k, v in reproduce.ABLATION[name].items())
        assert base["bound_gradient"] == "full" and base["seed"] == 0
        return
    table, arch, rest = name.split("_")
    assert (cfg["arch"], cfg["width"], cfg["epochs"], cfg["dense_width"]) == (arch, 32, 10, 512)
    if table == "t2":
        assert cfg["depth"] == 6 and cfg["loss"] == LOSSES[rest]
    else:
        assert cfg["depth"] == int(rest[1:]) and cfg["loss"] == "emma"


def test_table3_depth6_cells_reuse_the_identical_table2_runs():
    for arch in ("convnet", "resnet", "liresnet"):
        t3 = parse(reproduce.command(reproduce.table3_run(arch, 6))[1:])
        assert (t3["arch"], t3["depth"], t3["width"], t3["loss"], t3["epochs"]) == (arch, 6, 32, "emma", 10)


def _fake_run(results, name, epochs, vra):
    d = results / "runs" / name
    d.mkdir(parents=True)
    hist = {k: [0.5] * epochs for k in ("loss", "clean_acc", "vra", "epsilon_train", "lr", "lipschitz_bound",
                                         "val_clean_acc", "val_vra")}
    final = [dict(bound=b, lipschitz_bound=k, clean_acc=0.6, vra=vra, rejection_rate=0.1, epsilon=0.14, loss=1.0)
             for b, k in (("power", 5.0), ("sound", 5.01))]
    (d / "metrics.json").write_text(json.dumps(dict(final=final, history=hist, train_seconds=60.0,
                                                    total_seconds=70.0)))
    (d / "run.json").write_text(json.dumps(dict(command="gloro-train ...", load_start=1.0, load_end=1.5)))
    (d / "log.txt").write_text("".join(f"195/195 - {100 + i}s - 500ms/step - loss: 1\n" for i in range(epochs)))


def test_report_renders_runs_beside_the_published_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "RESULTS", tmp_path)
    doc = tmp_path / "results.md"
    doc.write_text(f"# prose\n\n{reproduce.BEGIN}\nstale\n{reproduce.END}\n\nmore prose\n")
    monkeypatch.setattr(reproduce, "DOC", doc)
    _fake_run(tmp_path, "headline", 20, 0.4567)
    _fake_run(tmp_path, "t2_liresnet_emma", 10, 0.4321)
    reproduce.report()
    text = doc.read_text()
    assert text.startswith("# prose") and text.endswith("more prose\n") and "stale" not in text
    assert (tmp_path / "headline_vra.png").stat().st_size > 10_000
    assert "| 20 | " in text and "K_sound / K_power = 1.00200" in text
    assert "| sound bound (certificate) | 5.01000 | 60.0 | 45.7 |" in text
    # The L6 LiResNet cell of Table 3 and seed 0 of both ablations (bound gradient, precision) are
    # the Table 2 EMMA run; missing runs say so.
    assert text.count("60.0 / **43.2**") == 4 and "not run" in text
    assert "76.5 / 63.7" in text and "65.5 / 55.0" in text  # published Table 4 / 5 figures
    # Ablation: seed 0 of "full" is the Table 2 run; the difference is shown once both arms ran.
    _fake_run(tmp_path, "ab_last", 10, 0.4421)
    reproduce.report()
    assert "| 0 | 60.0 / **43.2** | 60.0 / **44.2** | +1.00 |" in doc.read_text()
    _fake_run(tmp_path, "ab_bf16", 10, 0.4300)
    reproduce.report()
    assert "| 0 | 60.0 / **43.2** | 60.0 / **43.0** | -0.21 |" in doc.read_text()
    _fake_run(tmp_path, "headline_bf16", 20, 0.4600)
    reproduce.report()
    text = doc.read_text()
    assert "| clean % / **VRA %** (sound) | 60.0 / **45.7** | 60.0 / **46.0** |" in text
    assert "| training minutes | 1.0 | 1.0 |" in text
