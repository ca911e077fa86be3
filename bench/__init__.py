"""Benchmarks (`make bench`): standalone scripts against real processes; never run by the tests."""
