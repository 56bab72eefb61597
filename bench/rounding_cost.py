"""VRA and certify time with and without the float32 rounding terms (issue: certificates that
hold for the network as it actually computes).

    python bench/rounding_cost.py --model=runs/quickstart/model.keras            # shipped sample
    python bench/rounding_cost.py --model=m.keras --data=../shared/data/cifar10-jpeg.npz

Prints, per arithmetic ("exact": the published convention; "float32": the default), the VRA
at the model's ε with the sound bound, and the wall time of `certify` over the test images,
measured in alternation (`--rounds`), as a ratio.
"""
import argparse
import json
import time

import numpy as np


def load_test(path, limit):
    if path is None:
        from gloro_keras.data import sample_path

        path = sample_path()
    d = np.load(path)
    x = d["x_test"].astype("float32") / 255.0
    if x.ndim == 3:
        x = x[..., None]
    y = d["y_test"].reshape(-1).astype(np.int64)
    return (x[:limit], y[:limit]) if limit else (x, y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=None, help=".npz with x_test/y_test (default: the shipped MNIST sample)")
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--float64_inference", default=None,
                    help="comma-separated layer names to switch to float64 accumulation at inference "
                         "(for models saved before the LiResNet builder did it: stem,neck_conv,neck_dense,head)")
    args = ap.parse_args()

    import keras

    import gloro_keras  # noqa: F401  (registers the classes)

    model = keras.models.load_model(args.model)
    if args.float64_inference:
        import gloro_keras as gk

        for name in args.float64_inference.split(","):
            model.network.get_layer(name).float64_inference = True
        model = gk.GloroModel(model.network, epsilon=model.epsilon)  # re-analysed with the flags
        out_note = f"float64 inference in {args.float64_inference}"
    else:
        out_note = None
    x, y = load_test(args.data, args.limit)
    eps = model.epsilon
    out = {"model": args.model, "examples": int(len(y)), "epsilon": eps, "note": out_note}
    model.lipschitz_bound("sound")  # cached: the timings below measure certification only
    for ar in ("exact", "float32"):
        cert = model.margin_certificate(x, arithmetic=ar, batch_size=args.batch_size)
        pred = cert.certify(eps)
        out[f"vra_{ar}"] = float(np.mean(pred == y))
        out[f"certified_{ar}"] = float(np.mean(pred < model.num_classes))
        out[f"median_radius_{ar}"] = float(np.median(cert.radius()))
        if ar == "float32":
            # share of ε·K_ji that the rounding terms (a_ji + b_ji·ε) take, at the runner-up i
            rows = np.arange(len(y))
            masked = np.where(np.arange(model.num_classes)[None] == cert.predicted[:, None], -np.inf, cert.logits)
            i = np.argmax(masked, axis=1)
            j = cert.predicted
            k = model.margin_bound_matrix("sound")[j, i]
            gap = cert.logits[rows, j] - cert.logits[rows, i]
            a = gap - cert.slack[rows, i]
            b = cert.rate[rows, i] - k
            share = (a + b * eps) / (eps * k)
            out["rounding_share_of_eps_K_median"] = float(np.median(share))
            out["rounding_share_of_eps_K_p90"] = float(np.quantile(share, 0.9))
    out["clean"] = float(np.mean(cert.predicted == y))
    times = {"exact": [], "float32": []}
    for _ in range(args.rounds):
        for ar in times:
            t = time.perf_counter()
            model.certify(x, arithmetic=ar, batch_size=args.batch_size)
            times[ar].append(time.perf_counter() - t)
    out["certify_seconds"] = {k: float(np.median(v)) for k, v in times.items()}
    out["time_ratio_float32_over_exact"] = out["certify_seconds"]["float32"] / out["certify_seconds"]["exact"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
