"""Tests of the serve folder."""
