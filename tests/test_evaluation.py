"""Certification report on a model trained on real MNIST: attacks, lower bound, plots."""
import json
import re

import pytest

import gloro_keras as gk
from gloro_keras.evaluation import certification_report
from conftest import MNIST_EPS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.xdist_group("trained_mnist")  # one worker trains it, once
def test_report_figures_are_consistent_and_sound(trained_mnist, tmp_path):
    model, xt, yt = trained_mnist
    x, y = xt[:300], yt[:300]
    report = certification_report(model, x, y, attack=True, attack_steps=30, lower_bound=True,
                                  lower_bound_points=32, soundness=True, soundness_points=60,
                                  output_dir=tmp_path)
    assert report.epsilon == pytest.approx(MNIST_EPS)
    # sound K ≥ converged power-iteration K, so it certifies no more than the estimate
    assert report.bounds["sound"] >= report.bounds["power"] * (1 - 1e-7)
    assert report.vra_by_bound["sound"] <= report.vra_by_bound["power"]
    assert report.vra == report.vra_by_bound["sound"] > 0.5
    # an attack can never beat a true certificate
    assert report.pgd_accuracy >= report.vra
    assert report.clean_accuracy >= report.pgd_accuracy
    assert report.soundness_violations == 0 and report.soundness_checked >= 50
    # empirical lower bound ≤ certified bound, pair by pair
    assert 0 < report.tightness <= 1.0
    # whole certified-accuracy curve from radii agrees with certify() at ε
    at_eps = dict((round(e, 9), a) for e, a in report.certified_accuracy_curve)[round(report.epsilon, 9)]
    assert at_eps == pytest.approx(report.vra, abs=1e-9)
    for key in ("certified_accuracy_png", "radius_histogram_png"):
        data = open(report.files[key], "rb").read()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    saved = json.load(open(report.files["json"]))
    assert saved["vra"] == report.vra
    assert "VRA (sound bound)" in report.table()


def test_report_prints_as_a_table_and_plots_scale_to_the_data():
    from gloro_keras.evaluation.plots import y_limit
    assert y_limit([0.0, 4.0, 2.0]) == pytest.approx(4.6)  # a 4 % curve fills the plot
    assert y_limit([0.0, 95.0]) == 100.0 and y_limit([0.0]) == 1.0
    report = gk.CertificationReport(
        epsilon=0.1, num_examples=10, bound="sound", lipschitz_bound=2.0, bounds={"sound": 2.0},
        clean_accuracy=0.9, vra=0.5, rejection_rate=0.4, vra_by_bound={"sound": 0.5}, radius_mean=0.1,
        radius_median=0.1, radius_quantiles={}, certified_accuracy_curve=[])
    text = str(report)
    assert text == report.table() and len(text.splitlines()) >= 6
    assert re.search(r"^VRA \(sound bound\) +50\.00%$", text, re.M)
