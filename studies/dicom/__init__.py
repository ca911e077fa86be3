"""Pure pydicom code for the ingest pipeline and the viewers: parse and validate, preamble, render, synthetic data.

No ORM and no Django settings here; callers pass limits and options in.
"""
