"""Evaluation: the cases scored, zero-shot classification, cross-modal retrieval, calibration fitting, bootstrap
intervals and DeLong tests, external sets, and the reports (JSON, markdown) an evaluation writes.

May import: the library and ``x2ctclip.train.data``.
"""
