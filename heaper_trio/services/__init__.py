"""Behaviour, independent of HTTP: services know nothing of Quart."""
