"""Tests of the export/fusion folder."""
