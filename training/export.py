"""Placeholder: this module is being written (session 2). It must provide add_arguments(parser) and run(args)."""
import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("not written yet")
