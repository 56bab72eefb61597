"""One-call certification report: bounds, clean accuracy, VRA, radii, attacks, plots."""
import dataclasses
import json
import os
import time
from typing import Optional

import numpy as np

from gloro_keras.attacks import margin_lipschitz_lower_bound, pgd_l2, soundness_check
from gloro_keras.evaluation import plots
from gloro_keras.ops.certificate import MarginCertificate
from gloro_keras.ops.epsilon import check_epsilon

RADIUS_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
VRA_AT = (0.25, 0.5, 1.0, 1.5, 2.0)  # radii, in multiples of ε, of `CertificationReport.vra_at`


@dataclasses.dataclass
class CertificationReport:
    """Figures of one certification pass (accuracies are fractions in [0, 1]).

    lipschitz_bound: K (body product) with `bound`; `bounds` holds every bound computed
    ("sound", "power"), `vra_by_bound` the VRA each gives. `radius_*` summarize per-example
    certified radii (0 where not robust), `correct_radius_*` the same radii set to 0 where the
    prediction is wrong; `vra_at["2x"]` is the fraction correct with a radius above 2ε.
    `certified_fraction`: fraction with a certificate at ε (1 − rejection rate).
    `attack_examples`: how many of the first examples the attacks below used, and
    `vra_on_attack_examples` the VRA on them. `pgd_accuracy`: accuracy under ℓ2 PGD at ε
    (clean logits, inputs kept in [0, 1]). `margin_lipschitz_lower_bound`: largest empirical
    margin Lipschitz quotient found; `tightness` its largest ratio to the certified K_ij.
    `soundness_violations`: certified points an attack broke within their radius (must be 0).
    `seconds`: `bound_<name>` and `certify_<name>` per bound, `data` (reading a dataset's
    batches), and per attack.
    For a `RelaxedGloroModel` the figures above are about standard robustness of the same
    network, and `relaxation`, `relaxed_vra` (the label lies in a certified top-k' set) and
    `certified_k_histogram` ({k': examples whose largest certified k' it is}, "0": none) about
    the relaxed robustness it certifies.
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
    arithmetic: str = "float32"
    certified_fraction: Optional[float] = None
    radius_max: Optional[float] = None
    correct_radius_mean: Optional[float] = None
    correct_radius_median: Optional[float] = None
    correct_radius_max: Optional[float] = None
    correct_radius_quantiles: dict = dataclasses.field(default_factory=dict)
    vra_at: dict = dataclasses.field(default_factory=dict)
    attack_examples: Optional[int] = None
    vra_on_attack_examples: Optional[float] = None
    pgd_accuracy: Optional[float] = None
    margin_lipschitz_lower_bound: Optional[float] = None
    tightness: Optional[float] = None
    soundness_checked: Optional[int] = None
    soundness_violations: Optional[int] = None
    seconds: dict = dataclasses.field(default_factory=dict)
    files: dict = dataclasses.field(default_factory=dict)
    relaxation: Optional[str] = None
    relaxed_vra: Optional[float] = None
    certified_k_histogram: dict = dataclasses.field(default_factory=dict)

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        return self.table()

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
        if self.relaxation is not None:
            rows.append((f"relaxed VRA ({self.relaxation})", f"{100 * self.relaxed_vra:.2f}%"))
            rows.append(("largest certified k' (examples)",
                         ", ".join(f"{'none' if k == '0' else k}: {v}" for k, v in self.certified_k_histogram.items())))
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


def _batches(x, y):
    """(x, int64 y) numpy pairs: the arrays themselves, or a dataset's batches."""
    if y is not None:
        yield np.asarray(x), np.asarray(y).reshape(-1).astype(np.int64)
        return
    for xb, yb in (x.as_numpy_iterator() if hasattr(x, "as_numpy_iterator") else x):
        yield np.asarray(xb), np.asarray(yb).reshape(-1).astype(np.int64)


def _summary(values):
    """mean, median, max and `RADIUS_QUANTILES` of `values`."""
    v = np.asarray(values, dtype=np.float64)
    return (float(np.mean(v)), float(np.median(v)), float(np.max(v)),
            {str(q): float(np.quantile(v, q)) for q in RADIUS_QUANTILES})


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
    attack_examples=None,
    output_dir=None,
    json_name="report.json",
    batch_size=256,
    seed=0,
    arithmetic="float32",
    data_name=None,
    file_prefix="",
):
    """Certify `model` on (x, y) and gather the paper's figures.

    Every bound is computed once (the power iteration is converged once and its iterates
    then serve every batch); a dataset is certified batch by batch, so only the examples
    the attacks need are kept in memory.

    Args:
        model: a GloroModel.
        x, y: inputs in [0, 1] and integer labels, or a dataset (any iterable) of (x, y)
            batches as `x`.
        epsilon: radius (default `model.epsilon`).
        bound: "sound" (default) or "power" for the headline VRA; with `compare_bounds`
            the other one is computed as well.
        attack: run ℓ2 PGD at ε (`attack_steps` steps, `attack_restarts` restarts) for
            the PGD accuracy.
        lower_bound: search an empirical lower bound on the margin Lipschitz constants
            (on the first `lower_bound_points` examples).
        soundness: attack every certified point (up to `soundness_points`; None: all) at
            its radius; any success is reported loudly (a certification bug).
        attack_examples: the attacks, the lower bound and the soundness check use the
            first `attack_examples` examples (None: all).
        output_dir: if given, writes certified_accuracy.png, radius_histogram.png and
            the JSON report `json_name` (None: no JSON) there, the PNG names prefixed by
            `file_prefix`; the plots' titles name the model, `data_name`, ε and the bound.
        batch_size: inference and attack batch size.
        seed: seed of the attacks' random starts.
        arithmetic: "float32" (default) certifies the network as it computes in float32,
            rounding included; "float64" its float64 twin (`model.float64_network()`); "exact"
            the published exact-arithmetic convention, for comparison only.

    Returns:
        A `CertificationReport`.

    Example:

    ```python
    report = certification_report(model, x_test, y_test, attack=True, output_dir="report")
    print(report.table())
    ```
    """
    eps = model.epsilon if epsilon is None else check_epsilon(epsilon)
    if arithmetic not in ("float32", "float64", "exact"):
        raise ValueError(f"arithmetic must be 'float32', 'float64' or 'exact'; got {arithmetic!r}")
    if attack_examples is not None and attack_examples < 1:
        raise ValueError(f"attack_examples must be None or >= 1. Received: attack_examples={attack_examples}")
    if arithmetic == "float64" and bound != "sound":
        raise ValueError(f"arithmetic='float64' certifies with the sound bound only; got bound={bound!r}")
    names = [bound] + ([b for b in ("sound", "power") if b != bound] if compare_bounds else [])
    if arithmetic == "float64":  # the float64 twin is certified with the sound bound only
        names = [bound]
    m = model.num_classes

    seconds = {}
    bounds, kmats, kind = {}, {}, {}
    for name in names:
        t = time.perf_counter()
        if name == "power":
            model.converge_bounds()
            kind[name] = "current"  # the converged iterates, as they are: converged once
        else:
            kind[name] = name
        kmats[name] = model.margin_bound_matrix(kind[name])
        bounds[name] = model.lipschitz_bound(kind[name])
        seconds[f"bound_{name}"] = time.perf_counter() - t

    need_x = attack or lower_bound or soundness
    parts = {name: [] for name in names}
    labels, kept, num_kept = [], [], 0
    relaxation = getattr(model, "relaxation", None)
    relaxed_k, relaxed_hit = [], []
    seconds.update({f"certify_{name}": 0.0 for name in names})
    if y is None:
        seconds["data"] = 0.0
    batches = _batches(x, y)
    while True:
        t = time.perf_counter()
        try:
            xb, yb = next(batches)
        except StopIteration:
            break
        if y is None:
            seconds["data"] += time.perf_counter() - t
        for name in names:
            t = time.perf_counter()
            parts[name].append(model.margin_certificate(xb, kind[name], arithmetic, batch_size=batch_size))
            seconds[f"certify_{name}"] += time.perf_counter() - t
        if relaxation is not None:
            t = time.perf_counter()
            rc = model.relaxed_certificate(xb, kind[bound], arithmetic, batch_size=batch_size)
            relaxed_k.append(rc.certified_k(eps))
            relaxed_hit.append(rc.certified_set_contains(yb, eps))
            seconds["certify_relaxed"] = seconds.get("certify_relaxed", 0.0) + time.perf_counter() - t
        labels.append(yb)
        room = len(xb) if attack_examples is None else attack_examples - num_kept
        if need_x and room > 0:
            kept.append(xb[:room])
            num_kept += len(kept[-1])
    y = np.concatenate(labels)
    certs = {name: p[0] if len(p) == 1 else MarginCertificate.concatenate(p) for name, p in parts.items()}
    vra_by_bound = {name: float(np.mean(c.certify(eps) == y)) for name, c in certs.items()}

    cert = certs[bound]
    certified = cert.certify(eps)
    radii = cert.radius()
    correct = cert.valid & (cert.predicted == y)
    robust_radii = np.where(correct, radii, 0.0)
    r_mean, r_median, r_max, r_quantiles = _summary(radii)
    c_mean, c_median, c_max, c_quantiles = _summary(robust_radii)
    grid = np.linspace(0.0, 2.0 * eps if eps > 0 else 1.0, 21)
    report = CertificationReport(
        epsilon=eps,
        num_examples=len(y),
        bound=bound,
        lipschitz_bound=float(bounds[bound]),
        bounds={k: float(v) for k, v in bounds.items()},
        clean_accuracy=float(np.mean(correct)),
        vra=float(np.mean(certified == y)),
        rejection_rate=float(np.mean(certified == m)),
        vra_by_bound=vra_by_bound,
        radius_mean=r_mean,
        radius_median=r_median,
        radius_quantiles=r_quantiles,
        certified_accuracy_curve=[[float(e), float(a)] for e, a in zip(grid, plots.certified_accuracy_curve(radii, correct, grid))],
        arithmetic=arithmetic,
        certified_fraction=float(np.mean(certified != m)),
        radius_max=r_max,
        correct_radius_mean=c_mean,
        correct_radius_median=c_median,
        correct_radius_max=c_max,
        correct_radius_quantiles=c_quantiles,
        vra_at={f"{c:g}x": float(np.mean(robust_radii > c * eps)) for c in VRA_AT},
        seconds=seconds,
    )
    if relaxation is not None:
        relaxed_k, relaxed_hit = np.concatenate(relaxed_k), np.concatenate(relaxed_hit)
        report.relaxation = str(relaxation)
        report.relaxed_vra = float(np.mean(relaxed_hit))
        report.certified_k_histogram = {str(k): int(np.sum(relaxed_k == k)) for k in range(relaxation.k + 1)}
    if need_x:
        xa = np.concatenate(kept)
        n = len(xa)
        ya, certified_a, radii_a = y[:n], certified[:n], radii[:n]
        report.attack_examples = int(n)
        report.vra_on_attack_examples = float(np.mean(certified_a == ya))
    if attack:
        t = time.perf_counter()
        res = pgd_l2(model.network, xa, ya, eps, steps=attack_steps, restarts=attack_restarts, clip=(0.0, 1.0),
                     batch_size=batch_size, seed=seed)
        report.pgd_accuracy = float(res.robust_accuracy)
        seconds["pgd"] = time.perf_counter() - t
    if lower_bound:
        t = time.perf_counter()
        lb = margin_lipschitz_lower_bound(model.network, xa[:lower_bound_points], class_pairs="top2", seed=seed,
                                          batch_size=batch_size)
        report.margin_lipschitz_lower_bound = float(lb.value)
        ratio = lb.matrix / np.where(kmats[bound] > 0, kmats[bound], np.inf)
        report.tightness = float(np.nanmax(ratio))
        seconds["lower_bound"] = time.perf_counter() - t
    if soundness:
        t = time.perf_counter()
        idx = np.flatnonzero(certified_a < m)[:soundness_points]
        rep = soundness_check(model.network, xa[idx], certified_a[idx], radii_a[idx], batch_size=batch_size,
                              seed=seed)
        report.soundness_checked = int(rep.num_checked)
        report.soundness_violations = int(rep.num_violations)
        seconds["soundness"] = time.perf_counter() - t
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        title = (f"{model.name} on {data_name or f'{report.num_examples} examples'}\n"
                 f"{report.bound} bound K = {report.lipschitz_bound:.4g}, {report.arithmetic}, ε = {eps:.4g}")
        report.files["certified_accuracy_png"] = plots.plot_certified_accuracy(
            radii, correct, os.path.join(output_dir, f"{file_prefix}certified_accuracy.png"), epsilon=eps,
            title=title)
        report.files["radius_histogram_png"] = plots.plot_radius_histogram(
            radii, correct, os.path.join(output_dir, f"{file_prefix}radius_histogram.png"), epsilon=eps,
            title=title)
        if relaxation is not None:
            report.files["certified_k_histogram_png"] = plots.plot_certified_k_histogram(
                relaxed_k, relaxed_hit, os.path.join(output_dir, f"{file_prefix}certified_k_histogram.png"),
                relaxation=str(relaxation), title=title)
        if json_name is not None:
            report.files["json"] = os.path.join(output_dir, json_name)
            report.to_json(report.files["json"])
    return report
