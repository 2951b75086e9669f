"""The options of the two commands that serve HTTP (``serve``, ``label-studio``): the address, the
port and the image-feature cache, with one check and one way of showing the address."""

from __future__ import annotations

import argparse

from ..errors import InvalidInputError


def add_http_options(parser: argparse.ArgumentParser, *, default_port: int) -> None:
    """Add ``--host``, ``--port`` and ``--cache-mb``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=default_port, help=f"port (default {default_port})")
    parser.add_argument("--cache-mb", type=float, default=1024,
                        help="memory for image features, least recently used dropped first (default 1024 MB)")


def check_http_options(args: argparse.Namespace, *, size_limit_option: str, size_limit: float) -> None:
    """Refuse a port outside 1..65535, a negative cache or a request-size limit that is not positive
    (``size_limit_option`` names the command's own limit, e.g. ``--max-upload-mb``)."""
    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be 1..65535, got {args.port}")
    if not args.cache_mb >= 0 or not size_limit > 0:
        raise InvalidInputError(f"--cache-mb must be >= 0 and {size_limit_option} > 0, got {args.cache_mb} and {size_limit}")


def shown_address(host: str, port: int) -> str:
    """``host:port`` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
