"""One-call certification report: bounds, clean accuracy, VRA, radii, attacks, plots."""
import dataclasses
import json
import os
import time
from typing import Optional

import numpy as np

from gloro_keras.evaluation import plots
from gloro_keras.ops.epsilon import check_epsilon


@dataclasses.dataclass
class CertificationReport:
    """Figures of one certification pass (accuracies are fractions in [0, 1]).

    lipschitz_bound: K (body product) with `bound`; `bounds` holds every bound computed
    ("sound", "power"), `vra_by_bound` the VRA each gives. `radius_*` summarize per-example
    certified radii (0 where not robust). `pgd_accuracy`: accuracy under ℓ2 PGD at ε (clean
    logits, inputs kept in [0, 1]). `margin_lipschitz_lower_bound`: largest empirical margin
    Lipschitz quotient found; `tightness` its largest ratio to the certified K_ij.
    `soundness_violations`: certified points an attack broke within their radius (must be 0).
    """

    epsilon: float
    num_examples: int
    bound: str
    lipschitz_bound: float
    bounds: dict
    clean_accuracy: float
    vra: float
    rejection_rate: float
    vra_by_bound: dict
    radius_mean: float
    radius_median: float
    radius_quantiles: dict
    certified_accuracy_curve: list
    pgd_accuracy: Optional[float] = None
    margin_lipschitz_lower_bound: Optional[float] = None
    tightness: Optional[float] = None
    soundness_checked: Optional[int] = None
    soundness_violations: Optional[int] = None
    seconds: dict = dataclasses.field(default_factory=dict)
    files: dict = dataclasses.field(default_factory=dict)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, default=float)
        return str(path)

    def table(self):
        """Plain-text summary table."""
        rows = [
            ("examples", f"{self.num_examples}"),
            ("epsilon", f"{self.epsilon:.6g}"),
            (f"Lipschitz bound K ({self.bound})", f"{self.lipschitz_bound:.6g}"),
        ]
        rows += [(f"  K ({k})", f"{v:.6g}") for k, v in self.bounds.items() if k != self.bound]
        rows += [
            ("clean accuracy", f"{100 * self.clean_accuracy:.2f}%"),
            (f"VRA ({self.bound} bound)", f"{100 * self.vra:.2f}%"),
        ]
        rows += [(f"  VRA ({k} bound)", f"{100 * v:.2f}%") for k, v in self.vra_by_bound.items() if k != self.bound]
        rows += [
            ("rejection rate", f"{100 * self.rejection_rate:.2f}%"),
            ("certified radius mean / median", f"{self.radius_mean:.4g} / {self.radius_median:.4g}"),
        ]
        if self.pgd_accuracy is not None:
            rows.append(("PGD accuracy", f"{100 * self.pgd_accuracy:.2f}%"))
        if self.margin_lipschitz_lower_bound is not None:
            rows.append(("empirical margin Lipschitz (lower bound)", f"{self.margin_lipschitz_lower_bound:.4g}"))
            rows.append(("tightness (lower / certified K_ij, max)", f"{self.tightness:.4f}"))
        if self.soundness_violations is not None:
            rows.append(("soundness check: violations / checked", f"{self.soundness_violations} / {self.soundness_checked}"))
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _as_arrays(x, y):
    if y is not None:
        return np.asarray(x), np.asarray(y).reshape(-1).astype(np.int64)
    xs, ys = [], []
    for xb, yb in x:  # a dataset of (x, y) batches
        xs.append(np.asarray(xb))
        ys.append(np.asarray(yb).reshape(-1))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def certification_report(
    model,
    x,
    y=None,
    epsilon=None,
    bound="sound",
    compare_bounds=True,
    attack=False,
    attack_steps=50,
    attack_restarts=1,
    lower_bound=False,
    lower_bound_points=64,
    soundness=False,
    soundness_points=200,
    output_dir=None,
    batch_size=256,
    seed=0,
    arithmetic="float32",
):
    """Certify `model` on (x, y) and gather the paper's figures.

    Args:
        model: a GloroModel.
        x, y: inputs in [0, 1] and integer labels, or a dataset of (x, y) batches as `x`.
        epsilon: radius (default `model.epsilon`).
        bound: "sound" (default) or "power" for the headline VRA; with `compare_bounds`
            the other one is computed as well.
        attack: run ℓ2 PGD at ε for the PGD accuracy.
        lower_bound: search an empirical lower bound on the margin Lipschitz constants.
        soundness: attack every certified point (up to `soundness_points`) at its radius;
            any success is reported loudly (a certification bug).
        arithmetic: "float32" (default) certifies the network as it computes in float32,
            rounding included; "float64" its float64 twin (`model.float64_network()`); "exact"
            the published exact-arithmetic convention, for comparison only.
        output_dir: if given, writes report.json, certified_accuracy.png, radius_histogram.png.
    """
    eps = model.epsilon if epsilon is None else check_epsilon(epsilon)
    if arithmetic not in ("float32", "float64", "exact"):
        raise ValueError(f"arithmetic must be 'float32', 'float64' or 'exact'; got {arithmetic!r}")
    x, y = _as_arrays(x, y)
    seconds = {}
    names = [bound] + ([b for b in ("sound", "power") if b != bound] if compare_bounds else [])
    if arithmetic == "float64":  # the float64 twin is certified with the sound bound only
        names = [bound]
    bounds, vra_by_bound, kmats, certs = {}, {}, {}, {}
    for name in names:
        t = time.perf_counter()
        kmats[name] = model.margin_bound_matrix(name)
        bounds[name] = model.lipschitz_bound(name)
        seconds[f"bound_{name}"] = time.perf_counter() - t
        t = time.perf_counter()
        certs[name] = model.margin_certificate(x, name, arithmetic, batch_size=batch_size)
        seconds[f"certify_{name}"] = time.perf_counter() - t
        vra_by_bound[name] = float(np.mean(certs[name].certify(eps) == y))
    cert = certs[bound]
    certified = cert.certify(eps)
    radii = cert.radius()
    correct = cert.valid & (cert.predicted == y)
    grid = np.linspace(0.0, 2.0 * eps if eps > 0 else 1.0, 21)
    report = CertificationReport(
        epsilon=eps,
        num_examples=len(y),
        bound=bound,
        lipschitz_bound=float(bounds[bound]),
        bounds={k: float(v) for k, v in bounds.items()},
        clean_accuracy=float(np.mean(correct)),
        vra=float(np.mean(certified == y)),
        rejection_rate=float(np.mean(certified == model.num_classes)),
        vra_by_bound=vra_by_bound,
        radius_mean=float(np.mean(radii)),
        radius_median=float(np.median(radii)),
        radius_quantiles={str(q): float(np.quantile(radii, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        certified_accuracy_curve=[[float(e), float(a)] for e, a in zip(grid, plots.certified_accuracy_curve(radii, correct, grid))],
        seconds=seconds,
    )
    if attack:
        from gloro_keras.attacks import pgd_l2

        t = time.perf_counter()
        res = pgd_l2(model.network, x, y, eps, steps=attack_steps, restarts=attack_restarts, clip=(0.0, 1.0),
                     batch_size=batch_size, seed=seed)
        report.pgd_accuracy = float(res.robust_accuracy)
        seconds["pgd"] = time.perf_counter() - t
    if lower_bound:
        from gloro_keras.attacks import margin_lipschitz_lower_bound

        t = time.perf_counter()
        lb = margin_lipschitz_lower_bound(model.network, x[:lower_bound_points], class_pairs="top2", seed=seed,
                                          batch_size=batch_size)
        report.margin_lipschitz_lower_bound = float(lb.value)
        ratio = lb.matrix / np.where(kmats[bound] > 0, kmats[bound], np.inf)
        report.tightness = float(np.nanmax(ratio))
        seconds["lower_bound"] = time.perf_counter() - t
    if soundness:
        from gloro_keras.attacks import soundness_check

        t = time.perf_counter()
        idx = np.flatnonzero(certified < model.num_classes)[:soundness_points]
        rep = soundness_check(model.network, x[idx], certified[idx], radii[idx], batch_size=batch_size, seed=seed)
        report.soundness_checked = int(rep.num_checked)
        report.soundness_violations = int(rep.num_violations)
        seconds["soundness"] = time.perf_counter() - t
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        report.files["certified_accuracy_png"] = plots.plot_certified_accuracy(
            radii, correct, os.path.join(output_dir, "certified_accuracy.png"), epsilon=eps)
        report.files["radius_histogram_png"] = plots.plot_radius_histogram(
            radii, correct, os.path.join(output_dir, "radius_histogram.png"), epsilon=eps)
        report.files["json"] = os.path.join(output_dir, "report.json")
        report.to_json(report.files["json"])
    return report
