"""Tests of the export folder."""
