"""Shared fixtures: project paths, the shipped datasets, and a socket blocker."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
CASES = Path(__file__).parent / "data" / "cases"  # copies of ../shared/cases, so they run everywhere
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def bccd_records():
    from fpn_lab.data.parsers import VOCBBoxParser
    from fpn_lab.data.splits import VOCImageSetSplitter

    parser = VOCBBoxParser(DATA / "bccd" / "annotations", DATA / "bccd" / "images")
    train, test = parser.parse(VOCImageSetSplitter(DATA / "bccd" / "ImageSets" / "Main"))
    return parser, train, test


@pytest.fixture
def no_network(monkeypatch):
    """Make every attempt to open a network connection fail at once."""

    def refuse(*args, **kwargs):
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
