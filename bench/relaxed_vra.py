"""Standard and relaxed VRA of saved GloRo models, side by side (docs/relaxed_robustness.md).

    python bench/relaxed_vra.py --models=runs/quickstart/model.keras,runs/top5/model.keras \
        --relaxation=topk:5 --epsilons=0.3,1.0

For every model and ε: clean and top-K clean accuracy, standard VRA (the top class certified)
and relaxed VRA (the label in a certified top-k' set, `--relaxation` applied to the model's
network, whatever it was trained for), and how many test images get each largest certified k'.
All certificates use the sound bound and the float32 rounding terms (`certify`'s defaults).
"""
import argparse
import json

import keras
import numpy as np

import gloro_keras as gk
from gloro_keras.data import sample_path
from gloro_keras.ops.relaxations import top_classes_np


def load_test(path):
    if path is None:
        path = sample_path()
    d = np.load(path)
    x = d["x_test"].astype("float32") / 255.0
    return (x[..., None] if x.ndim == 3 else x), d["y_test"].reshape(-1).astype(np.int64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="comma-separated .keras files")
    ap.add_argument("--data", default=None, help=".npz with x_test/y_test (default: the shipped MNIST sample)")
    ap.add_argument("--relaxation", default="topk:5")
    ap.add_argument("--epsilons", default=None, help="comma-separated radii (default: each model's ε)")
    args = ap.parse_args()
    x, y = load_test(args.data)
    rows = []
    for path in args.models.split(","):
        saved = keras.models.load_model(path, compile=False)
        relaxed = gk.RelaxedGloroModel(saved.network, epsilon=saved.epsilon, relaxation=args.relaxation)
        relax = relaxed.relaxation
        margin = relaxed.margin_certificate(x)
        cert = relaxed.relaxed_certificate(x)
        top = top_classes_np(margin.logits, relax.k)
        epsilons = [float(e) for e in args.epsilons.split(",")] if args.epsilons else [saved.epsilon]
        for eps in epsilons:
            ks = cert.certified_k(eps)
            rows.append(dict(
                model=path, trained_for=str(getattr(saved, "relaxation", None) or "standard"), epsilon=eps,
                relaxation=str(relax), clean_acc=float(np.mean(margin.predicted == y)),
                top_k_clean_acc=float(np.mean(np.any(top == y[:, None], axis=1))),
                vra=float(np.mean(margin.certify(eps) == y)),
                relaxed_vra=float(np.mean(cert.certified_set_contains(y, eps))),
                certified_k_histogram={str(k): int(np.sum(ks == k)) for k in range(relax.k + 1)}))
            r = rows[-1]
            print(f"{path} ({r['trained_for']}) ε={eps:g}: clean {100 * r['clean_acc']:.2f}%  "
                  f"top-{relax.k} {100 * r['top_k_clean_acc']:.2f}%  VRA {100 * r['vra']:.2f}%  "
                  f"relaxed VRA ({relax}) {100 * r['relaxed_vra']:.2f}%  largest certified k': "
                  + "  ".join(f"{k}: {v}" for k, v in r["certified_k_histogram"].items()), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
