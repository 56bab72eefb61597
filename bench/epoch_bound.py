"""Cost of the per-epoch bound (`ConvergeBounds` before each validation) as a fraction of an epoch.

    python bench/epoch_bound.py --configs L6W128,L18W256

For each config: `GloroModel(liresnet_network(L, W))` + EMMA on a batch of 256 CIFAR-10 images
(32×32×3), trained 3 steps (the iterates are then as warm as in training), then
what `ConvergeBounds` runs before each validation (`converge()`: the float64 sound bound and the
rounding terms, `update_bound_cache("sound")`) is timed after one more training step each time
(`--bound-repeats`); the power-iteration convergence that used to run before it as well
(`converge_bounds`, ≤ 500 iterations, tolerance 1e-6; now only at the end of training) is timed too,
and so are the layers' sound bounds alone, one after another and in parallel threads
(`bounds.sound_bounds`, what `converge()` runs since 2026-12-04), and the iterates' estimate
(`converge(kind="current")`) that the default `ConvergeBounds()` ("auto") caches at a `fit`'s later
validations once one sound bound took more than 5 % of the training.
The epoch is `ceil(50000 / 256) = 196` training steps at the median step time measured in the same
process (validation excluded, so the fraction is an upper bound). Writes
bench/results/epoch_bound.{json,md} (`--name`, `--out`).
"""
import math
import sys

import _util as U

CIFAR_TRAIN = 50_000


def add_args(ap):
    ap.add_argument("--bound-repeats", type=int, default=2, help="timed per-epoch bounds per config")
    ap.set_defaults(configs="L6W128,L18W256", repeats=3)


def measure(L, W, x, y, args, log):
    from gloro_keras.train import ConvergeBounds

    model = U.build("gloro_full", L, W)
    for _ in range(3):
        model.train_on_batch(x, y)
    steps = [U.timed(lambda: model.train_on_batch(x, y))[0] for _ in range(args.repeats)]
    step = U.med(steps)
    epoch = math.ceil(CIFAR_TRAIN / U.BATCH) * step
    cb = ConvergeBounds()
    cb.set_model(model)
    rows = []
    for i in range(args.bound_repeats):
        model.train_on_batch(x, y)  # as after an epoch: the weights moved, the cache is stale
        t_epoch, k_sound = U.timed(lambda: cb.converge())  # what runs before each validation
        t_power, k_power = U.timed(lambda: model.converge_bounds(cb.max_iterations, cb.tolerance))
        # the layers' sound bounds alone: one after another, and in threads as `converge()` runs them
        side = U.sound_bounds_side_by_side(model.bounded_layers)
        t_seq, t_par, worst = side["sound_sequential_s"], side["sound_parallel_s"], side["parallel_rel_diff"]
        assert worst < 1e-9, f"parallel sound bounds differ from the sequential ones by {worst:.2e}"
        rows.append(dict(total_s=t_epoch, power_s=t_power, k_power=float(k_power), k_sound=float(k_sound), **side))
        log(f"  L{L}W{W} bound {i + 1}: per-epoch (sound) {t_epoch:.2f} s; power convergence (not per epoch "
            f"any more) {t_power:.2f} s; K {float(k_sound):.5g} / power {float(k_power):.5g}; step {step:.2f} s; "
            f"sound bounds alone: sequential {t_seq:.2f} s, parallel {t_par:.2f} s (largest relative difference {worst:.1e})")
    total = U.med([r["total_s"] for r in rows])
    auto = U.auto_bound_cost(model, x, y, cb, total, epoch, args.bound_repeats)
    return dict(step_s=steps, step_median_s=step, epoch_s=epoch, bounds=rows, bound_median_s=total,
                power_median_s=U.med([r["power_s"] for r in rows]), fraction_of_epoch=total / epoch,
                current_median_s=auto["current_s"], auto_switches=auto["auto_switches"],
                auto_fraction_of_epoch=auto["auto_fraction_of_epoch"],
                parallel_over_sequential=U.med([r["sound_parallel_s"] / r["sound_sequential_s"] for r in rows]))


def main(argv=None):
    args, configs, s = U.start_section(__doc__, add_args, argv, quick=False)
    tf, keras = U.tf_keras()
    x, y, _, source = U.load_arrays()
    results = {"meta": s.meta, "configs": {}}
    s.meta["environment"] = U.environment(tf, keras)
    s.meta["data"] = source
    rows = []
    for name in configs:
        L, W = U.parse_config(name)
        s.mark(name)
        r = measure(L, W, x, y, args, s.log)
        results["configs"][name] = r
        rows.append(U.value_row(name, "per-epoch bound (ConvergeBounds before validation), s", r["bound_median_s"]))
        rows.append(U.value_row(name, "CIFAR-10 epoch (196 steps, no validation), s", r["epoch_s"]))
        rows.append(U.value_row(name, "per-epoch bound ÷ epoch", r["fraction_of_epoch"], key="epoch_bound_fraction"))
        rows.append(U.value_row(name, "ConvergeBounds() (\"auto\") after its first validation ÷ epoch",
                                r["auto_fraction_of_epoch"]))
    details = [["## Per-epoch bound", "", U.md_table(
        ["config", "step s (median)", "epoch s", "per-epoch bound s", "fraction", "power convergence s (not run)",
         "sound bounds parallel ÷ sequential", "iterates' estimate s", "\"auto\" caches later"],
        [[n, U.fmt(r["step_median_s"]), U.fmt(r["epoch_s"]), U.fmt(r["bound_median_s"]),
          U.fmt(r["fraction_of_epoch"], 4), U.fmt(r["power_median_s"]), U.fmt(r["parallel_over_sequential"], 3),
          U.fmt(r["current_median_s"], 4), "the iterates' estimate" if r["auto_switches"] else "the sound bound"]
         for n, r in results["configs"].items()])]]
    return U.finish_section(s, results, rows, details, args, "epoch_bound", "Per-epoch bound cost")


if __name__ == "__main__":
    sys.exit(main())
