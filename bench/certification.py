#!/usr/bin/env python
"""Certification cost: `model.certify(x)` with the sound bound already computed ÷
`model.network.predict(x)`, GloroModel.predict ÷ network.predict, and the one-time bound costs
(sound bound, power-iteration convergence) with their tightness K_sound / K_power.

    python bench/certification.py --configs L6W64 --cert-images 10000
    python bench/certification.py --quick

The model is a GloRo LiResNet (bound_gradient=full) after two training steps on the first
batch (in `bench/run.py`: the model the training section timed). certify and predict run side
by side in alternating rounds, like every ratio of the suite. Writes
bench/results/certification.{json,md} (`--name`, `--out`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402


def add_args(ap):
    ap.add_argument("--cert-images", type=int, default=10_000)
    ap.add_argument("--cert-repeats", type=int, default=2)
    ap.add_argument("--no-power", action="store_true", help="skip the power-iteration convergence timing")


QUICK = {"cert_images": 1280, "cert_repeats": 2, "no_power": True}


def _times(t):
    return {k: {"median": U.med(v["wall"]), "all": v["wall"], "cpu_all": v["cpu"]} for k, v in t.items()}


def run(model, xte, args, log, gloro_predict=True, power_check=True):
    """certify (sound bound pre-computed and cached) vs network.predict, side by side."""
    B = U.BATCH
    x = xte[: args.cert_images]
    power = not args.no_power
    res = {"images": int(len(x))}
    t_sound, k_sound = U.timed(lambda: model.lipschitz_bound("sound"))
    t_cached, _ = U.timed(lambda: model.lipschitz_bound("sound"))
    t_power, k_power = U.timed(lambda: model.lipschitz_bound("power")) if power else (float("nan"),) * 2
    t_cur, k_cur = U.timed(lambda: model.lipschitz_bound("current"))
    res["bound"] = {
        "sound_first_s": t_sound, "sound_cached_call_s": t_cached,
        "power_converge_s": t_power, "current_s": t_cur,
        "K_sound": k_sound, "K_power": k_power, "K_current": k_cur,
        "sound_over_power": k_sound / k_power,
    }
    log(f"  sound bound {t_sound:.2f}s (cached call {t_cached * 1e3:.1f} ms), "
        f"power convergence {t_power:.2f}s, K_sound/K_power={k_sound / k_power:.5f}")
    model.update_bound_cache("sound")  # for model.predict (⊥ output) below
    net = model.network
    # warm-up (traces the predict functions)
    net.predict(x[:B], batch_size=B, verbose=0)
    model.certify(x[:B], batch_size=B)
    model.predict(x[:B], batch_size=B, verbose=0)
    times = U.round_robin({
        "network.predict": lambda: net.predict(x, batch_size=B, verbose=0),
        "certify(sound, cached)": lambda: model.certify(x, bound="sound", batch_size=B),
    }, args.cert_repeats)
    res["ratios"] = {"certify/predict": U.paired(times["certify(sound, cached)"], times["network.predict"])}
    res["images_per_s"] = {k: len(x) / U.med(v["wall"]) for k, v in times.items()}
    res["times_s"] = _times(times)
    # Is the sound bound cached as intended? Count the layers' sound_bound calls in one
    # more certify call with the same weights (counted, so not timed: the hook slows Python calls).
    sound_fns = {type(layer).sound_bound for layer in model.bounded_layers}
    with U.count_calls({"sound": sound_fns}) as counts:
        model.certify(x[:B], bound="sound", batch_size=B)
    res["sound_recomputed_in_certify_calls"] = counts["sound"]
    res["sound_recomputed_counted_on"] = f"one certify(bound='sound') call on {B} images after the timed calls"
    if gloro_predict:
        # GloroModel.predict (m+1 outputs, cached bound) on a subset, its own side-by-side pair
        xs = x[: min(len(x), 10 * B)]
        t2 = U.round_robin({
            "network.predict (subset)": lambda: net.predict(xs, batch_size=B, verbose=0),
            "gloro_model.predict (subset)": lambda: model.predict(xs, batch_size=B, verbose=0),
        }, args.cert_repeats)
        res["subset_images"] = int(len(xs))
        res["times_s"].update(_times(t2))
        res["ratios"]["gloro_predict/predict"] = U.paired(t2["gloro_model.predict (subset)"],
                                                          t2["network.predict (subset)"])
    if power and power_check:
        # certify(bound="power"): is the converged bound cached? (timed once, counted once more)
        t_pc, _ = U.timed(lambda: model.certify(x[:B], bound="power", batch_size=B))
        with U.count_calls({"converge": [type(model).converge_bounds]}) as counts:
            model.certify(x[:B], bound="power", batch_size=B)
        res["certify_power_small"] = {"images": B, "seconds": t_pc, "converge_bounds_calls": counts["converge"]}
        log(f"  certify(power) on {B} images: {t_pc:.2f}s, converge_bounds calls: {counts['converge']}")
    log(f"  certify/predict: {U.spread(res['ratios']['certify/predict'])}; sound bound recomputed "
        f"{res['sound_recomputed_in_certify_calls']}× in a certify call with cached weights")
    return res


def summary_rows(cfg, results):
    c = results["configs"].get(cfg, {}).get("certification", {})
    if "ratios" not in c:
        return []
    rows = [U.ratio_row(cfg, f"certify ({c['images']} imgs, sound bound cached) ÷ network.predict",
                        c["ratios"]["certify/predict"], "certify_ratio")]
    if "gloro_predict/predict" in c["ratios"]:
        rows.append(U.ratio_row(cfg, f"GloroModel.predict ({c['subset_images']} imgs, m+1 outputs, cached bound) "
                                "÷ network.predict", c["ratios"]["gloro_predict/predict"]))
    b = c["bound"]
    rows.append(U.text_row(cfg, "one-time bound: sound / power convergence (s)",
                           f"{U.fmt(b['sound_first_s'])} / {U.fmt(b['power_converge_s'])}"))
    return rows


def details(results):
    rows = []
    for cfg, r in results["configs"].items():
        c = r.get("certification")
        if c and "bound" in c:
            b, p = c["bound"], c.get("certify_power_small")
            rows.append([cfg, c["images"], ", ".join(f"{k} {U.fmt(v)}" for k, v in c["images_per_s"].items()),
                         U.fmt(b["sound_first_s"]), U.fmt(1e3 * b["sound_cached_call_s"]),
                         U.fmt(b["power_converge_s"]), U.fmt(b["sound_over_power"], 5),
                         c["sound_recomputed_in_certify_calls"],
                         f"{U.fmt(p['seconds'])} ({p['converge_bounds_calls']} converge_bounds calls)" if p else "—"])
    if not rows:
        return []
    return ["", "## Certification", "",
            U.md_table(["config", "images", "images/s", "sound bound s (once)", "cached call ms",
                        "power convergence s", "K_sound/K_power",
                        f"sound bound recomputed in a certify call ({U.BATCH} imgs, same weights)",
                        f"certify(bound='power') on {U.BATCH} imgs s"], rows)]


def main(argv=None):
    args, configs, s = U.start_section(__doc__, add_args, argv, dict(QUICK, configs="L6W64"))
    tf, keras = U.tf_keras()
    s.meta["environment"] = U.environment(tf, keras)
    xtr, ytr, xte, s.meta["data"] = U.load_arrays()
    x, y = tf.constant(xtr), tf.constant(ytr)
    results = {"meta": s.meta, "configs": {}}
    for i, cfg in enumerate(configs):
        s.mark(f"{cfg} certification")
        models, _, errors = U.warm_models(["gloro_full"], *U.parse_config(cfg), x, y, s.log)
        if errors:
            results["configs"][cfg] = {"certification": {"error": errors["gloro_full"]}}
            continue
        results["configs"][cfg] = {"certification": run(models["gloro_full"], xte, args, s.log,
                                                        gloro_predict=i == 0, power_check=i == 0)}
        del models
        keras.backend.clear_session()
    return U.finish_section(s, results, [row for cfg in configs for row in summary_rows(cfg, results)],
                            [details(results)], args, "certification", "gloro-keras certification")


if __name__ == "__main__":
    sys.exit(main())
