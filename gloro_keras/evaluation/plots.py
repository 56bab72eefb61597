"""PNG figures of certification results (matplotlib, no display needed)."""
import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def certified_accuracy_curve(radii, correct, epsilons):
    """Certified accuracy at each ε: fraction of points correct with radius > ε."""
    radii = np.asarray(radii, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    return np.array([np.mean(correct & (radii > e)) for e in np.asarray(epsilons, dtype=np.float64)])


def y_limit(percentages):
    """Top of a percentage axis: a little above the largest value (at most 100), so that a
    4 % curve is not drawn as a flat line at the bottom of a 0–100 % axis."""
    top = float(np.max(percentages, initial=0.0))
    return min(100.0, max(1.0, 1.15 * top))


def plot_certified_accuracy(radii, correct, path, epsilon=None, title=None):
    """Certified accuracy vs ε (whole curve from per-example radii), saved as PNG."""
    plt = _pyplot()
    radii = np.asarray(radii, dtype=np.float64)
    top = float(np.max(radii[np.isfinite(radii)], initial=0.0)) or (epsilon or 1.0)
    eps = np.linspace(0.0, 1.05 * top, 200)
    acc = certified_accuracy_curve(radii, correct, eps)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.plot(eps, 100 * acc, lw=2)
    if epsilon is not None:
        at = 100 * certified_accuracy_curve(radii, correct, [epsilon])[0]
        ax.axvline(epsilon, color="grey", ls="--", lw=1)
        ax.plot([epsilon], [at], "o", color="C3")
        ax.annotate(f"VRA {at:.2f}% at ε={epsilon:.4g}", (epsilon, at), xytext=(6, 6), textcoords="offset points")
    ax.set_xlabel("ℓ2 radius ε")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, y_limit(100 * acc))
    ax.grid(alpha=0.3)
    ax.set_title(title or "Certified accuracy vs radius", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def plot_radius_histogram(radii, correct, path, epsilon=None, title=None):
    """Histogram of certified radii of correctly and wrongly classified points, saved as PNG."""
    plt = _pyplot()
    radii = np.asarray(radii, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    finite = np.isfinite(radii)
    top = float(np.max(radii[finite], initial=0.0)) or 1.0
    bins = np.linspace(0.0, top, 40)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.hist(radii[finite & correct], bins=bins, alpha=0.7, label="correct")
    ax.hist(radii[finite & ~correct], bins=bins, alpha=0.7, label="misclassified")
    if epsilon is not None:
        ax.axvline(epsilon, color="grey", ls="--", lw=1, label=f"ε = {epsilon:.4g}")
    return _finish(plt, fig, ax, path, "certified radius", title or "Certified radii")


def plot_certified_k_histogram(certified_k, label_in_set, path, relaxation=None, title=None):
    """Bar chart of the largest certified k' per example (0: none), split by whether the label
    is in the certified set (relaxed robustness), saved as PNG."""
    plt = _pyplot()
    certified_k = np.asarray(certified_k, dtype=np.int64)
    label_in_set = np.asarray(label_in_set, dtype=bool)
    ks = np.arange(0, int(certified_k.max(initial=0)) + 1)
    hit = np.array([np.sum((certified_k == k) & label_in_set) for k in ks])
    miss = np.array([np.sum((certified_k == k) & ~label_in_set) for k in ks])
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.bar(ks, hit, label="label in the certified set")
    ax.bar(ks, miss, bottom=hit, label="label not in it (or none)")
    ax.set_xticks(ks, ["none" if k == 0 else str(k) for k in ks])
    xlabel = "largest certified k'" + (f" ({relaxation})" if relaxation else "")
    return _finish(plt, fig, ax, path, xlabel, title or "Certified top-k' sets")


def _finish(plt, fig, ax, path, xlabel, title):
    """Label a histogram of examples, save it as PNG and close it; returns the path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
