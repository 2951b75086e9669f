"""Reading a task's image: from Label Studio (with its token), from hosts the user allowed, or from
a local folder; nothing else (no requests to hosts a task names, no files outside the folder).

A task's image field holds one of:

- a path on Label Studio (``/data/upload/3/abc-photo.jpg``, ``/data/local-files/?d=photos/a.jpg``,
  ``/tasks/7/resolve/?fileuri=...``): fetched from the Label Studio URL with ``Authorization: Token``;
- an ``http(s)://`` URL: fetched if its host is Label Studio's (then with the token) or one named
  by ``--allow-host`` (without the token); other hosts are refused;
- a file path (absolute, relative, or ``file://``): read only if it lies inside ``--root DIR``.

Redirects are not followed (a redirect to another host would bypass the host check); a download is
limited in bytes before it is decoded, and the image in pixels by finesam's reader.
"""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.images import ImageReadError, read_image
from ..errors import InvalidInputError

DOWNLOAD_TIMEOUT_S = 60.0
#: Paths Label Studio serves files under (uploads, local-files storage, cloud storage proxies).
LABEL_STUDIO_PATHS = ("/data/", "/tasks/", "/storage-data/", "/api/", "/projects/")
_CHUNK = 1 << 20


class ImageFetchError(InvalidInputError):
    """A task image that cannot be read: a refused host or path, a failed download, not an image."""


@dataclass(frozen=True)
class LabelStudioHost:
    """Where Label Studio runs (``scheme://host[:port]`` and its path prefix, if any) and the token to read its files."""

    url: str
    token: str | None = None

    @classmethod
    def parse(cls, url: str, token: str | None = None, source: str = "the Label Studio URL") -> "LabelStudioHost":
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(f"{source} {url!r} is not an http(s) URL such as http://localhost:8080")
        try:
            parts.port  # noqa: B018  (a bad port raises here)
        except ValueError as error:
            raise InvalidInputError(f"{source} {url!r} has an invalid port ({error})") from error
        # A Label Studio served under a path (--host http://example.com/label-studio/) keeps it.
        origin = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}".lower()
        return cls(origin + parts.path.rstrip("/"), token or None)

    @property
    def netloc(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _same_origin(a: urllib.parse.SplitResult, b: urllib.parse.SplitResult) -> bool:
    return (a.scheme == b.scheme and (a.hostname or "").lower() == (b.hostname or "").lower()
            and (a.port or _default_port(a.scheme)) == (b.port or _default_port(b.scheme)))


def parse_allowed_host(value: str) -> tuple[str, int | None]:
    """``--allow-host`` value ``HOST`` or ``HOST:PORT`` -> (lower-case host, port or None for any port)."""
    text = value.strip().lower()
    if not text or "/" in text or "@" in text:
        raise InvalidInputError(f"`allowed_hosts` takes a host name or HOST:PORT (e.g. images.example.com), got {value!r}",
                                parameters=("allowed_hosts",))
    parts = urllib.parse.urlsplit(f"//{text}")
    try:
        port = parts.port
    except ValueError as error:
        raise InvalidInputError(f"`allowed_hosts` {value!r} has an invalid port ({error})", parameters=("allowed_hosts",)) from error
    if not parts.hostname:
        raise InvalidInputError(f"`allowed_hosts` takes a host name or HOST:PORT, got {value!r}", parameters=("allowed_hosts",))
    return parts.hostname, port


def _is_personal_access_token(token: str | None) -> bool:
    """Label Studio's personal access tokens are JWTs (three base64url parts); legacy tokens are hex."""
    return bool(token) and token.startswith("eyJ") and token.count(".") == 2


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise ImageFetchError(f"{req.full_url} answered a redirect ({code}) to {newurl}; redirects are not followed: "
                              "give the image's final URL in the task")


class ImageReader:
    """Reads task images under the rules of the module docstring. ``root``: the folder local paths
    must lie in (None: no local files); ``allowed_hosts``: ``--allow-host`` values; ``max_bytes``: the
    largest download; ``max_pixels``: finesam's pixel limit (None: its default)."""

    def __init__(self, root: str | Path | None = None, allowed_hosts: tuple[str, ...] = (), max_bytes: int = 100_000_000,
                 max_pixels: int | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
        self.root = Path(root).resolve() if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise InvalidInputError(f"`root` {str(root)!r} is not a folder", parameters=("root",))
        self.allowed_hosts = tuple(parse_allowed_host(host) for host in allowed_hosts)
        self.max_bytes = int(max_bytes)
        self.max_pixels = max_pixels
        self.timeout = timeout
        # Proxies from the environment apply, as for any client; redirects are refused.
        self._opener = urllib.request.build_opener(_NoRedirects)
        self._access_tokens: dict[tuple[str, str], str] = {}

    def read(self, reference: str, host: LabelStudioHost | None) -> np.ndarray:
        """The (H, W, 3) uint8 image that a task field ``reference`` names, as displayed."""
        if not isinstance(reference, str) or not reference.strip():
            raise ImageFetchError(f"the task's image field must be a URL or path string, got {reference!r}")
        reference = reference.strip()
        parts = urllib.parse.urlsplit(reference)
        if parts.scheme in ("http", "https"):
            return self._decode(self._download_url(reference, parts, host), reference)
        if parts.scheme == "file":
            return self._read_local(urllib.parse.unquote(parts.path), reference)
        if parts.scheme and len(parts.scheme) > 1:  # a Windows drive letter is a path, not a scheme
            raise ImageFetchError(f"the task image {reference!r} has the scheme {parts.scheme!r}; the backend reads "
                                  "Label Studio paths (/data/...), http(s) URLs and files under --root. For cloud storage, "
                                  "let Label Studio serve the files (storage settings) so that tasks hold its URLs")
        if reference.startswith(LABEL_STUDIO_PATHS) and self._local_path(reference) is None:
            if host is None:
                raise ImageFetchError(f"the task image {reference!r} is a Label Studio path, but the Label Studio URL is "
                                      "unknown: connect the backend from Label Studio (it sends its URL to /setup), or set "
                                      "LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY)")
            url = host.url + reference
            return self._decode(self._download_url(url, urllib.parse.urlsplit(url), host), reference)
        return self._read_local(reference, reference)

    # --- local files ------------------------------------------------------------------------------
    def _local_path(self, reference: str) -> Path | None:
        """The file under ``root`` that ``reference`` names, if there is a root and it is there."""
        if self.root is None:
            return None
        path = Path(reference)
        candidate = (path if path.is_absolute() else self.root / path).resolve()
        return candidate if candidate.is_relative_to(self.root) and candidate.is_file() else None

    def _read_local(self, path_text: str, reference: str) -> np.ndarray:
        if self.root is None:
            raise ImageFetchError(f"the task image {reference!r} is a local path: start the backend with --root DIR "
                                  "to read files under DIR (or give tasks Label Studio URLs: /data/upload/..., "
                                  "/data/local-files/?d=...)")
        path = Path(path_text)
        candidate = (path if path.is_absolute() else self.root / path).resolve()
        if not candidate.is_relative_to(self.root):
            raise ImageFetchError(f"the task image {reference!r} lies outside --root {str(self.root)!r}; "
                                  "only files under the root are read")
        if not candidate.is_file():
            raise ImageFetchError(f"the task image {reference!r} does not exist under --root {str(self.root)!r}")
        return read_image(candidate, max_pixels=self.max_pixels)

    # --- downloads --------------------------------------------------------------------------------
    def _token_for(self, parts: urllib.parse.SplitResult, host: LabelStudioHost | None) -> tuple[bool, str | None]:
        """(whether the URL may be fetched, the token to send: only to Label Studio itself)."""
        if host is not None and _same_origin(parts, urllib.parse.urlsplit(host.url)):
            return True, host.token
        name = (parts.hostname or "").lower()
        port = parts.port or _default_port(parts.scheme)
        allowed = any(name == allowed_name and (allowed_port is None or port == allowed_port)
                      for allowed_name, allowed_port in self.allowed_hosts)
        return allowed, None

    def _download_url(self, url: str, parts: urllib.parse.SplitResult, host: LabelStudioHost | None) -> bytes:
        try:
            parts.port  # noqa: B018
        except ValueError as error:
            raise ImageFetchError(f"the task image URL {url!r} has an invalid port ({error})") from error
        if parts.username or parts.password:
            raise ImageFetchError(f"the task image URL {url!r} carries credentials; they are not sent")
        allowed, token = self._token_for(parts, host)
        if not allowed:
            where = f"Label Studio's host {host.netloc!r}" if host is not None else "Label Studio's host (unknown yet)"
            raise ImageFetchError(f"the task image URL {url!r} is on the host {parts.netloc!r}, which is neither "
                                  f"{where} nor a host given with --allow-host; start the backend with "
                                  f"--allow-host {parts.hostname} to read images from it")
        try:
            body = self._get(url, host if token else None)
        except urllib.error.HTTPError as error:
            if error.code == 401 and token and _is_personal_access_token(token):
                self._access_tokens.pop((host.url, token), None)  # expired: refresh once and try again
                try:
                    body = self._get(url, host)
                except urllib.error.HTTPError as again:
                    raise self._http_error(url, again, host, parts) from again
            else:
                raise self._http_error(url, error, host, parts) from error
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ImageFetchError(f"downloading the task image {url!r} failed: {reason}") from error
        if len(body) > self.max_bytes:
            raise ImageFetchError(f"the task image {url!r} is over the limit of {self.max_bytes / 1e6:g} MB (--max-image-mb)")
        if not body:
            raise ImageFetchError(f"the task image {url!r} is empty")
        return body

    def _get(self, url: str, host: LabelStudioHost | None) -> bytes:
        """GET ``url`` (with ``host``'s token when given), at most ``max_bytes + 1`` bytes of it."""
        request = urllib.request.Request(url, headers={"User-Agent": "finesam-label-studio"})
        if host is not None and host.token:
            request.add_header("Authorization", self._authorization(host))
        with self._opener.open(request, timeout=self.timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise ImageFetchError(f"the task image {url!r} is {int(declared) / 1e6:.1f} MB, over the limit of "
                                      f"{self.max_bytes / 1e6:g} MB (--max-image-mb)")
            return response.read(self.max_bytes + 1)

    def _authorization(self, host: LabelStudioHost) -> str:
        """``Token <legacy token>``, or ``Bearer <access token>`` for a personal access token (a JWT
        refresh token, exchanged at Label Studio's /api/token/refresh/ and kept until refused)."""
        if not _is_personal_access_token(host.token):
            return f"Token {host.token}"
        key = (host.url, host.token)
        access = self._access_tokens.get(key)
        if access is None:
            request = urllib.request.Request(f"{host.url}/api/token/refresh/", data=json.dumps({"refresh": host.token}).encode(),
                                             headers={"Content-Type": "application/json", "User-Agent": "finesam-label-studio"})
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    access = json.loads(response.read(1 << 16)).get("access")
            except (urllib.error.URLError, OSError, ValueError, AttributeError) as error:
                raise ImageFetchError(f"Label Studio at {host.url} did not exchange the personal access token for an "
                                      f"access token ({getattr(error, 'reason', error)}); check LABEL_STUDIO_API_KEY") from error
            if not isinstance(access, str) or not access:
                raise ImageFetchError(f"Label Studio at {host.url} answered /api/token/refresh/ without an access token")
            self._access_tokens[key] = access
        return f"Bearer {access}"

    @staticmethod
    def _http_error(url: str, error: urllib.error.HTTPError, host: LabelStudioHost | None,
                    parts: urllib.parse.SplitResult) -> ImageFetchError:
        hint = ""
        if error.code in (401, 403) and host is not None and _same_origin(parts, urllib.parse.urlsplit(host.url)):
            hint = ("; Label Studio refused the token: it sends one to /setup when the backend is connected (a legacy "
                    "token, refused where legacy tokens are disabled), or set LABEL_STUDIO_API_KEY to a user's "
                    "access token (Account & Settings)")
        return ImageFetchError(f"downloading the task image {url!r} failed: HTTP {error.code} {error.reason}{hint}")

    def _decode(self, body: bytes, reference: str) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="finesam-ls-") as temporary:
            path = Path(temporary) / "image"
            path.write_bytes(body)
            try:
                return read_image(path, max_pixels=self.max_pixels)
            except ImageReadError as error:  # name the task's URL, not the temporary file
                raise ImageReadError(str(error).replace(repr(str(path)), repr(reference))) from error
