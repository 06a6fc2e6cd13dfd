"""Tests of the docker folder."""
