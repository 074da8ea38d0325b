"""Experiment runners and one config file per experiment."""
