"""Certification reports and figures: `certification_report(model, x, y, ...)`."""
from gloro_keras.evaluation.plots import certified_accuracy_curve, plot_certified_accuracy, plot_radius_histogram
from gloro_keras.evaluation.report import CertificationReport, certification_report

__all__ = [
    "CertificationReport",
    "certification_report",
    "certified_accuracy_curve",
    "plot_certified_accuracy",
    "plot_radius_histogram",
]
