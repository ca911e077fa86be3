"""The listener fixtures of the DIMSE sweep are those of the listener tests."""

from tests.studies.net.conftest import demo_ct, listener, north, south

__all__ = ["demo_ct", "listener", "north", "south"]
