"""The clinical evaluation report: intervals, operating points, calibration, subgroups, TTA,
a Grad-CAM gallery and a model card, as one HTML file and its JSON."""

from cxr.report.build import build_report

__all__ = ["build_report"]
