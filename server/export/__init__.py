"""Trained models for other toolchains: C source for devices (:mod:`.c_source`), plain
integer arrays (:mod:`.npz`)."""
