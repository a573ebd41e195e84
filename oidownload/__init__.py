"""oidownload: turn Open Images CSV lists into verified, resized, sharded image files."""

__version__ = "0.1.0"
