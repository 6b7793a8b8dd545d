"""The engine's version (recorded in every store), in core so every room can read it without importing the
package's public face (engine/__init__.py, which reaches the Python API)."""

VERSION = "0.1.0"
