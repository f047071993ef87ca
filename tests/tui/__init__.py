"""Tests of the Textual panes, driven with run_test() and Pilot."""
