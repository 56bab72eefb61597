"""`gloro-train` / `gloro-certify`: flag resolution, presets, end-to-end runs, clear errors."""
import csv
import json
import os
import subprocess
import sys

import keras
import pytest
from absl import flags

import gloro_keras as gk
from conftest import REPO, SHARED_DATA, shared_data
from gloro_keras.cli import train as train_script
from gloro_keras.cli import train_config
from gloro_keras.train import presets

TINY = ["--depth=1", "--width=8", "--dense_width=16", "--batch_size=32", "--epochs=2", "--steps_per_epoch=3",
        "--test_examples=200", "--verbose=2", "--power_iterations=2", "--eval_every=1"]


def parse(argv):
    fv = flags.FlagValues()
    train_config.define_flags(fv)
    fv(["gloro-train"] + list(argv))
    return train_config.config_from_flags(fv)


def run(module, args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


# ----------------------------------------------------------------------------- flags / presets
def test_defaults_are_the_paper_recipe():
    cfg = parse([])
    assert (cfg["dataset"], cfg["arch"], cfg["depth"], cfg["width"]) == ("cifar10", "liresnet", 6, 128)
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["weight_decay"]) == (800, 256, 1e-3, 1e-4)
    assert (cfg["clip_norm"], cfg["warmup_epochs"], cfg["eps_schedule"], cfg["loss"]) == (3.0, 20, "paper", "emma")
    assert cfg["epsilon"] == pytest.approx(36 / 255)
    assert cfg["strategy"] == "default" and cfg["bound"] == "auto"
    assert (cfg["bound_gradient"], cfg["train_dtype"]) == ("last", "auto")  # last: the authors' code; auto: bfloat16 on bf16 hardware


def test_explicit_flags_override_a_preset():
    cfg = parse(["--preset=table1_cifar100_l18w256", "--epochs=7", "--loss=ce", "--data_dir=/d", "--noaugment"])
    assert cfg["dataset"] == "cifar100" and (cfg["depth"], cfg["width"]) == (18, 256)
    assert cfg["epochs"] == 7 and cfg["loss"] == "gloro_crossentropy" and cfg["data_dir"] == "/d"
    assert cfg["augment"] is False and cfg["batch_size"] == 256
    assert set(cfg["explicit_flags"]) == {"epochs", "loss", "data_dir", "augment"}
    assert cfg["model_dir"].endswith("table1_cifar100_l18w256_liresnet_L18W256")


TABLE_SIZES = {"Table 1": 7, "Table 2": 18, "Table 3": 18, "Table 6": 18, "Table 7": 20, "Table 8": 6,
               "quickstart": 1}


def test_every_table_configuration_has_a_preset():
    for table, n in TABLE_SIZES.items():
        assert len(presets.list_presets(table)) == n, table
    p = presets.PRESETS
    # Table 1
    assert {(p[n]["dataset"], p[n]["depth"], p[n]["width"]) for n in presets.list_presets("Table 1")} == {
        (d, L, W) for d in ("cifar10", "cifar100", "tiny_imagenet") for L, W in ((6, 128), (18, 256))
    } | {("imagenet2012", 18, 588)}
    # Table 2: loss x architecture x data set at L6W128
    t2 = {(p[n]["dataset"], p[n]["arch"], p[n]["loss"]) for n in presets.list_presets("Table 2")}
    assert len(t2) == 18 and {c[2] for c in t2} == {"gloro_crossentropy", "trades", "emma"}
    assert all((p[n]["depth"], p[n]["width"]) == (6, 128) for n in presets.list_presets("Table 2"))
    # Table 3: architecture x depth, W128, EMMA
    t3 = {(p[n]["dataset"], p[n]["arch"], p[n]["depth"]) for n in presets.list_presets("Table 3")}
    assert {c[1] for c in t3} == {"convnet", "resnet", "liresnet"} and {c[2] for c in t3} == {6, 12, 18}
    # Table 6: depth 6..36, W128
    assert sorted({p[n]["depth"] for n in presets.list_presets("Table 6")}) == [6, 12, 18, 24, 30, 36]
    # Table 7: ImageNet subsets, two class-shuffle seeds
    t7 = {(p[n]["subset_classes"], p[n]["subset_seed"]) for n in presets.list_presets("Table 7")}
    assert (100, 2023) in t7 and (500, 2022) in t7 and (None, 2023) in t7  # None = all 1000 classes
    # Table 8: width at L18
    assert sorted({p[n]["width"] for n in presets.list_presets("Table 8")}) == [64, 128, 256]
    for name, cfg in p.items():
        if name == "quickstart":
            continue
        imagenet = cfg["dataset"] == "imagenet2012"
        assert cfg["epochs"] == (400 if imagenet else 800), name
        assert cfg["batch_size"] == (1024 if imagenet else 256), name
        assert cfg["epsilon"] == pytest.approx(1.0 if imagenet else 36 / 255), name
        assert cfg["warmup_epochs"] == 20 and cfg["lr"] == 1e-3 and cfg["weight_decay"] == 1e-4, name
        assert cfg["clip_norm"] == 3.0 and cfg["eps_schedule"] == "paper", name
        assert cfg["dense_width"] == (2048 if imagenet else 512), name
        assert cfg["width"] % 2 == 0
        assert parse([f"--preset={name}"])["depth"] == cfg["depth"]


_SHAPES = {"cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100), "tiny_imagenet": ((64, 64, 3), 200),
           "imagenet2012": ((224, 224, 3), 1000)}


@pytest.mark.parametrize("name", ["table2_cifar10_convnet_trades", "table3_cifar100_resnet_l6",
                                  "table6_tiny_imagenet_l6", "table8_cifar10_w64"])
def test_presets_build_their_models(name):
    cfg = parse([f"--preset={name}"])
    shape, classes = _SHAPES[cfg["dataset"]]
    model = train_script.build_model(cfg, classes, shape)
    assert isinstance(model, gk.GloroModel) and model.num_classes == classes
    assert model.compute_output_shape((None,) + shape) == (None, classes + 1)
    blocks = [l for l in model.network.layers if l.name.startswith("block") and not l.name.endswith("minmax")]
    assert len(blocks) == cfg["depth"]
    assert model.network.get_layer("stem").filters == cfg["width"]
    assert model.network.get_layer("neck_dense").units == 512
    train_script.compile_model(model, cfg, steps_per_epoch=195)
    sched = model.optimizer.get_config()["learning_rate"]
    assert sched["class_name"] == "WarmupCosine"
    assert sched["config"]["total_steps"] == 800 * 195 and sched["config"]["warmup_steps"] == 20 * 195
    assert model.optimizer.global_clipnorm == 3.0


def test_nowinograd_reaches_the_blocks():
    for argv, want in (([], True), (["--nowinograd"], False), (["--winograd"], True)):
        cfg = parse(["--depth=2", "--width=16", *argv])
        assert cfg["winograd"] is want
        model = train_script.build_model(cfg, 10, (32, 32, 3))
        blocks = [l for l in model.network.layers if isinstance(l, gk.layers.LiResNetBlock)]
        assert len(blocks) == 2 and all(b.winograd is want for b in blocks), argv


def test_imagenet_preset_uses_the_patchify_stem():
    from gloro_keras.models.liresnet import stem_config

    cfg = parse(["--preset=table7_imagenet300_seed2022"])
    assert cfg["subset_classes"] == 300 and cfg["subset_seed"] == 2022
    assert (cfg["depth"], cfg["width"], cfg["dense_width"]) == (18, 588, 2048)
    assert stem_config((224, 224, 3), cfg["width"]) == (14, 14, 0)
    # build a slimmed-down version (a full L18W588 has ~60M parameters)
    cfg = parse(["--preset=table7_imagenet300_seed2022", "--depth=1", "--width=48", "--dense_width=64"])
    model = train_script.build_model(cfg, 300, (224, 224, 3))
    stem = model.network.get_layer("stem")
    assert stem.kernel_size == (4, 4) and stem.strides == (4, 4)
    assert model.compute_output_shape((None, 224, 224, 3)) == (None, 301)


@pytest.mark.parametrize("argv,message", [
    (["--arch=vit"], "arch"),
    (["--preset=table9_cifar10"], "unknown preset"),
    (["--loss=hinge"], "loss"),
    (["--width=7"], "even"),
    (["--eps_schedule=[0.1]-cubic-[50%:1]"], "unknown shape"),
    (["--epochs=0"], "epochs"),
    (["--strategy=tpu"], "strategy"),
    (["--epsilon=-1"], "epsilon"),
])
def test_bad_flags_are_absl_errors(argv, message):
    with pytest.raises(flags.Error, match=message):
        parse(argv)


def test_eval_epochs_include_the_last():
    assert train_script.eval_epochs(10, 5) == [5, 10]
    assert train_script.eval_epochs(7, 3) == [3, 6, 7]
    assert train_script.eval_epochs(3, 1) == [1, 2, 3]


def test_impossible_configurations_are_config_errors():
    cfg = parse(["--dataset=quickstart", "--batch_size=20000"])
    with pytest.raises(train_config.ConfigError, match="larger than the training set"):
        train_script.load_data(cfg)
    with pytest.raises(train_config.ConfigError, match="unknown data set"):
        train_script.load_data(parse(["--dataset=svhn"]))


# ----------------------------------------------------------------------------- command line
def test_cli_bad_flag_and_missing_data_exit_codes(tmp_path):
    r = run("gloro_keras.cli.train", ["--help"])
    assert r.returncode == 0 and "--model_dir" in r.stdout  # help that was asked for is no error
    r = run("gloro_keras.cli.train", ["--arch=vit"])
    assert r.returncode == 1
    assert "FATAL Flags parsing error" in r.stderr and "--arch" in r.stderr
    r = run("gloro_keras.cli.train", [f"--dataset={tmp_path / 'nope.npz'}", f"--model_dir={tmp_path / 'run'}"])
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("gloro-train: error:")]
    assert len(errors) == 1 and "nope.npz" in errors[0]
    assert "Traceback" not in r.stderr
    r = run("gloro_keras.cli.train", ["--dataset=cifar10", f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'r2'}"])
    assert r.returncode == 2 and "gloro-train: error:" in r.stderr and "Traceback" not in r.stderr


def test_list_presets():
    r = run("gloro_keras.cli.train", ["--list_presets"])
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert len(lines) == len(presets.PRESETS)
    rows = {line.split()[0]: line for line in lines}
    assert rows["quickstart"].split()[1:] == ["quickstart", "quickstart", "liresnet", "L4W32", "emma", "eps", "0.3",
                                              "10", "epochs", "x", "128"]
    assert "imagenet2012[300 classes]" in rows["table7_imagenet300_seed2022"]
    assert " L18W588 " in rows["table1_imagenet_l18w588"]


def test_list_presets_answers_without_importing_tensorflow():
    # the console scripts start in _gloro_keras_cli, which answers --list_presets from the preset
    # table alone (importing gloro_keras would import TensorFlow: seconds)
    code = ("import sys, _gloro_keras_cli\n"
            "try:\n    _gloro_keras_cli.train(['gloro-train', '--list_presets'])\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('exit', code, sorted(m for m in ('tensorflow', 'keras', 'gloro_keras', 'jax') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    *lines, last = r.stdout.splitlines()
    assert last == "exit 0 []"
    assert "\n".join(lines) == presets.format_presets()
    assert len(lines) == len(presets.PRESETS)


def test_helpfull_lists_the_scripts_and_absls_flags_not_tensorflows():
    for module, own in (("gloro_keras.cli.train", "--model_dir"), ("gloro_keras.cli.certify", "--soundness_check")):
        r = run(module, ["--helpfull"])
        assert r.returncode == 0, r.stderr[-2000:]
        assert own in r.stdout and "--verbosity" in r.stdout and "--flagfile" in r.stdout
        for foreign in ("hbm_oom_exit", "tt_check_filter", "op_conversion_fallback_to_while_loop", "test_srcdir"):
            assert foreign not in r.stdout, foreign


def test_console_scripts_default_tensorflow_environment_and_keep_explicit_values():
    import _gloro_keras_cli as launcher

    env = {}
    assert launcher.environment_defaults(env) == ["TF_ENABLE_ONEDNN_OPTS"]
    assert env == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    env = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    launcher.environment_defaults(env)
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "0"
    # the installed scripts start there, so the defaults are set before TensorFlow is imported
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("gloro-")}
    assert scripts == {"gloro-train": "_gloro_keras_cli:train", "gloro-certify": "_gloro_keras_cli:certify"}


def test_scripts_refuse_reduced_precision_onednn_in_one_line(tmp_path):
    for module in ("gloro_keras.cli.certify", "gloro_keras.cli.train"):
        r = run(module, [f"--model={tmp_path / 'm.keras'}"] if "certify" in module else ["--preset=quickstart"],
                env={"TF_SET_ONEDNN_FPMATH_MODE": "BF16"})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        errors = [line for line in r.stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1 and "TF_SET_ONEDNN_FPMATH_MODE=BF16" in errors[0]


def _check_run_outputs(model_dir, epochs=2):
    for f in ("model.keras", "metrics.csv", "metrics.json", "flags.json"):
        assert (model_dir / f).is_file(), f
    assert not (model_dir / "backup").exists()
    with open(model_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, epochs + 1)]  # as the console counts
    assert all(all(v != "" for v in r.values()) for r in rows)  # evaluated every epoch: no blanks
    for key in ("clean_acc", "vra", "rejection_rate", "val_clean_acc", "val_vra", "val_rejection_rate",
                "lipschitz_bound", "epsilon_train", "epsilon", "lr"):
        assert key in rows[0], key
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert [r["bound"] for r in metrics["final"]] == ["power", "sound"]
    assert metrics["history"]["epoch"] == list(range(1, epochs + 1))
    assert not (model_dir / ".lock").exists()
    return metrics


def _certify(model_dir, extra=()):
    out = model_dir / "cert.json"
    r = run("gloro_keras.cli.certify", [f"--model={model_dir / 'model.keras'}", f"--output={out}",
                                          "--test_examples=200", *extra])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "VRA" in r.stdout and "certified radius" in r.stdout
    return json.loads(out.read_text()), r


def test_train_and_certify_quickstart_end_to_end(tmp_path):
    model_dir = tmp_path / "qs"
    r = run("gloro_keras.cli.train", ["--preset=quickstart", f"--model_dir={model_dir}", *TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "clean acc" in r.stdout and "VRA" in r.stdout and "sound" in r.stdout
    metrics = _check_run_outputs(model_dir)
    cfg = json.loads((model_dir / "flags.json").read_text())
    assert cfg["preset"] == "quickstart" and cfg["epsilon"] == 0.3 and cfg["width"] == 8
    # the same command again does not train over the finished run
    csv_before = (model_dir / "metrics.csv").read_bytes()
    r = run("gloro_keras.cli.train", ["--preset=quickstart", f"--model_dir={model_dir}", *TINY])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "already holds a finished run (model.keras); pass --overwrite" in r.stderr
    assert (model_dir / "metrics.csv").read_bytes() == csv_before
    model = keras.saving.load_model(model_dir / "model.keras")
    assert isinstance(model, gk.GloroModel) and model.epsilon == pytest.approx(0.3)
    # a fresh `import gloro_keras` must be enough to load it with its optimizer (the LR
    # schedule WarmupCosine is registered by gloro_keras.train)
    r = subprocess.run([sys.executable, "-c", "import sys, keras, gloro_keras; "
                        f"m = keras.saving.load_model(sys.argv[1]); print(m.optimizer.get_config()['learning_rate']['class_name'])",
                        str(model_dir / "model.keras")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "WarmupCosine" in r.stdout, r.stderr[-2000:]

    report, _ = _certify(model_dir)  # data set taken from flags.json
    sound = metrics["final"][1]
    assert report["num_examples"] == 200 and report["bound"] == "sound"
    assert report["lipschitz_bound"] == pytest.approx(sound["lipschitz_bound"], rel=1e-6)
    assert report["clean_acc"] == pytest.approx(sound["clean_acc"], abs=1e-6)
    assert report["vra"] == pytest.approx(sound["vra"], abs=0.006)  # float32 graph vs float64 numpy
    assert report["vra"] + report["rejection_rate"] <= 1.0 + 1e-9
    for key in ("mean", "median", "q10", "q25", "q75", "q90", "max"):
        assert key in report["radius"] and key in report["correct_radius"]
    # at a larger radius fewer points are certified
    big, _ = _certify(model_dir, ["--epsilon=1.0", "--bound=power", "--dataset=quickstart"])
    assert big["epsilon"] == 1.0 and big["bound"] == "power" and big["vra"] <= report["vra"]
    # empirical checks and plots (issue: sound certificates and evaluation)
    emp, r = _certify(model_dir, ["--attack", "--attack_steps=20", "--lower_bound", "--soundness_check",
                                  "--attack_examples=100"])
    assert emp["attack_examples"] == 100
    assert emp["pgd_accuracy"] >= emp["vra_on_attack_examples"]
    assert emp["soundness_violations"] == 0 and "PGD accuracy" in r.stdout
    assert 0 < emp["tightness"] <= 1.0
    for key in ("certified_accuracy_png", "radius_histogram_png"):
        assert open(emp["files"][key], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_certify_errors(tmp_path):
    r = run("gloro_keras.cli.certify", [])
    assert r.returncode == 1 and "--model" in r.stderr
    r = run("gloro_keras.cli.certify", [f"--model={tmp_path / 'missing.keras'}"])  # no --dataset either
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("gloro-certify: error:")]
    assert len(errors) == 1 and "model file not found" in errors[0] and "missing.keras" in errors[0]


def _certify_error(model_path, **cfg):
    from gloro_keras.cli import certify as certify_script
    base = dict(model=str(model_path), dataset="quickstart", output="", plots=False, batch_size=256,
                test_examples=64, bound="sound")
    with pytest.raises(certify_script.CertifyError) as e:
        certify_script.certify(dict(base, **cfg))
    assert "\n" not in str(e.value)  # one line
    return str(e.value)


def test_certify_names_what_is_wrong_with_the_model_file(tmp_path):
    model = gk.GloroLiResNet(L=1, W=4, num_classes=10, input_shape=(32, 32, 3), epsilon=0.3, dense_width=8)
    model.save(tmp_path / "rgb.keras")
    assert _certify_error(tmp_path / "rgb.keras") == (
        "quickstart has images of shape (28, 28, 1) but the model expects (32, 32, 3)")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes((tmp_path / "rgb.keras").read_bytes()[:2000])
    assert "is not a .keras model file (not a zip archive" in _certify_error(truncated)
    plain = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    plain.save(tmp_path / "plain.keras")
    assert "holds a Sequential, not a GloroModel" in _certify_error(tmp_path / "plain.keras")


def test_train_and_certify_cifar10_npz(tmp_path):
    path = shared_data("cifar10-jpeg.npz")
    model_dir = tmp_path / "c10"
    r = run("gloro_keras.cli.train", [f"--dataset={path}", f"--model_dir={model_dir}", "--arch=liresnet",
                                  "--loss=trades", "--threat_examples=64", "--train_dtype=bfloat16", *TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = _check_run_outputs(model_dir)
    assert len(metrics["history"]["threat_change"]) == 2
    cfg = json.loads((model_dir / "flags.json").read_text())
    assert cfg["train_dtype"] == "bfloat16"
    model = keras.saving.load_model(model_dir / "model.keras")
    assert model.train_dtype == "bfloat16" and model.network.compute_dtype == "float32"
    assert cfg["num_classes"] == 10 and cfg["image_shape"] == [32, 32, 3] and cfg["train_size"] == 50000
    r = run("gloro_keras.cli.certify", [f"--model={model_dir / 'model.keras'}", f"--dataset={path}",
                                          "--test_examples=200", "--output=-"])
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout[r.stdout.index("\n{") + 1:])
    assert report["num_examples"] == 200 and 0.0 <= report["vra"] <= report["clean_acc"]
    assert not (model_dir / "certify.json").exists()


def test_certify_never_overwrites_an_earlier_report(tmp_path):
    from gloro_keras.cli import certify as certify_script
    model = gk.GloroLiResNet(L=1, W=4, num_classes=10, input_shape=(28, 28, 1), epsilon=0.3, dense_width=8)
    model.save(tmp_path / "model.keras")
    cfg = dict(model=str(tmp_path / "model.keras"), dataset="quickstart", output=None, plots=True,
               batch_size=256, test_examples=32, bound="power")
    first = certify_script.certify(cfg)["files"]
    (tmp_path / "certify.json").write_text("{}")  # what main() writes
    second = certify_script.certify(cfg)["files"]
    assert os.path.basename(first["json"]) == "certify.json"
    assert os.path.basename(second["json"]) == "certify-2.json"
    assert os.path.basename(second["certified_accuracy_png"]) == "certify-2_certified_accuracy.png"
    for files in (first, second):
        for key in ("certified_accuracy_png", "radius_histogram_png"):
            assert open(files[key], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_image_files_are_named_before_or_while_training(tmp_path):
    from test_data import _colour, _tiny_tree, _write_image
    root = tmp_path / "tiny"
    _tiny_tree(root)
    args = ["--dataset=tiny_imagenet", f"--data_dir={root}", "--depth=1", "--width=4", "--dense_width=8",
            "--batch_size=3", "--epochs=1", "--steps_per_epoch=2", "--verbose=0", "--power_iterations=1",
            "--noaugment", "--noshuffle"]
    missing = root / "val" / "images" / "val_2.JPEG"
    missing.unlink()
    with pytest.raises(train_config.ConfigError, match=rf"1 of 15 image files are not usable: {missing} \(missing\)"):
        train_script.train(parse(args + [f"--model_dir={tmp_path / 'a'}"]))
    assert not (tmp_path / "a" / "model.keras").exists()
    _write_image(missing, _colour(100, 64, 64))
    bad = root / "train" / "n01000001" / "images" / "n01000001_0.JPEG"  # the first training image
    data = bad.read_bytes()
    bad.write_bytes(data[:20] + b"\x00" * (len(data) - 22) + data[-2:])  # markers intact, data not
    with pytest.raises(train_config.ConfigError, match=rf"1 image file\(s\) cannot be decoded: {bad} "):
        train_script.train(parse(args + [f"--model_dir={tmp_path / 'b'}"]))  # found by fit, then named
    with pytest.raises(train_config.ConfigError, match=rf"{bad} \(not decodable\)"):
        train_script.train(parse(args + [f"--model_dir={tmp_path / 'c'}", "--verify_images"]))  # before fit


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_non_finite_epsilon_is_refused_before_any_data_is_read(value):
    with pytest.raises(train_config.ConfigError, match=f"--epsilon must be finite and >= 0. Received: --epsilon={value}"):
        parse([f"--epsilon={value}", "--dataset=/nonexistent.npz"])


def test_relaxation_flag_trains_and_certifies_relaxed_robustness(tmp_path):
    with pytest.raises(train_config.ConfigError, match="--loss=emma trains standard robustness"):
        parse(["--dataset=quickstart", "--loss=emma", "--relaxation=topk:2"])
    with pytest.raises(train_config.ConfigError, match="--relaxation: A relaxation is 'topk:K'"):
        parse(["--dataset=quickstart", "--relaxation=top2"])
    cfg = parse(["--dataset=quickstart", "--relaxation=topk:2"])
    assert cfg["loss"] == "gloro_crossentropy" and any("gloro_crossentropy" in n for n in cfg["notes"])
    with pytest.raises(train_config.ConfigError, match=r"k must be in \[1, 9\]"):
        train_script.build_model(dict(cfg, relaxation="topk:10"), 10, (28, 28, 1))

    model_dir = tmp_path / "top3"
    r = run("gloro_keras.cli.train", ["--preset=quickstart", f"--model_dir={model_dir}", "--relaxation=topk:3", *TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "relaxed VRA" in r.stdout
    model = keras.saving.load_model(model_dir / "model.keras")
    assert isinstance(model, gk.RelaxedGloroModel) and str(model.relaxation) == "topk:3"
    report, r = _certify(model_dir)
    assert report["relaxation"] == "topk:3" and "relaxed VRA" in r.stdout
    assert sum(report["certified_k_histogram"].values()) == report["num_examples"] == 200
    assert report["vra"] <= report["relaxed_vra"]
    assert report["certified_k_histogram"]["0"] <= round(200 * report["rejection_rate"])
    assert open(report["files"]["certified_k_histogram_png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
