"""Tests of the ln2d folder."""
