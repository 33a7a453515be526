"""A client for the OCI distribution API (Docker Registry HTTP API v2), on the standard library's urllib.

It speaks just what a pull needs: GET /v2/<repo>/manifests/<ref> and /blobs/<digest>
(with Range, to resume), Basic and Bearer token auth from the WWW-Authenticate
challenge, retries of transient failures, and HTTPS with the system's CA store.
Registries on loopback (or any with tls_verify False) are tried over HTTPS without
verification first, then plain HTTP, as docker treats 127.0.0.0/8.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPResponse
from typing import IO

from sdrun.debug import debug
from sdrun.errors import NotFound, SdrunError
from sdrun.image import oci
from sdrun.image.reference import RegistryReference

ATTEMPTS = 4
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
TIMEOUT = 30.0
MANIFEST_ACCEPT = ", ".join((oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_LIST, oci.DOCKER_MANIFEST))


class RegistryError(SdrunError):
    """The registry refused a request or could not be reached."""


def is_loopback(host: str) -> bool:
    name = host[1 : host.find("]")] if host.startswith("[") else host.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class Registry:
    def __init__(
        self, reference: RegistryReference, *, tls_verify: bool | None, credentials: tuple[str, str] | None
    ) -> None:
        self.reference = reference
        self.host = reference.endpoint
        self.credentials = credentials
        self.verify = tls_verify if tls_verify is not None else not is_loopback(self.host)
        self.scheme = "https"
        self.authorization: str | None = None
        context = ssl.create_default_context()
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        # Redirects (a blob served from a CDN) are followed without the registry's Authorization:
        # it is sent as an unredirected header, which urllib never carries over.
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))

    # --- requests ---

    def _request(self, path: str, headers: dict[str, str]) -> HTTPResponse:
        """GET path with retries, the auth dance and, for insecure registries, the fall back to HTTP."""
        challenged = False
        for attempt in range(ATTEMPTS):
            request = urllib.request.Request(f"{self.scheme}://{self.host}{path}", headers=headers)
            if self.authorization:
                request.add_unredirected_header("Authorization", self.authorization)
            try:
                response: HTTPResponse = self.opener.open(request, timeout=TIMEOUT)
                return response
            except urllib.error.HTTPError as error:
                error.close()
                if error.code == 401 and not challenged:
                    challenged = True
                    self.authorization = self._answer(error.headers.get("WWW-Authenticate", ""))
                    continue
                if error.code == 401:
                    raise RegistryError(
                        f"{self.host} refused the credentials"
                        if self.credentials
                        else f"{self.host} needs credentials for {self.reference.repository}",
                        hint=f"sdrun image login {self.reference.host}",
                    ) from None
                if error.code not in RETRY_STATUSES or attempt == ATTEMPTS - 1:
                    raise self._http_error(error, path) from None
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                if isinstance(reason, ssl.SSLError) and not self.verify and self.scheme == "https":
                    self.scheme = "http"  # an insecure registry that speaks plain HTTP
                    continue
                if isinstance(reason, ssl.SSLCertVerificationError):
                    raise RegistryError(
                        f"{self.host}: TLS certificate not trusted: {reason.verify_message}",
                        hint="--tls-verify=false for a registry you trust without it",
                    ) from None
                if attempt == ATTEMPTS - 1:
                    raise RegistryError(f"cannot reach {self.host}: {reason}") from None
            time.sleep(0.25 * 2**attempt)
        raise RegistryError(f"{self.host}: giving up after {ATTEMPTS} attempts")

    def _http_error(self, error: urllib.error.HTTPError, path: str) -> SdrunError:
        if error.code == 404:
            what = "manifest" if "/manifests/" in path else "blob"
            return NotFound(
                f"{self.reference.host}/{self.reference.repository}: {what} not found ({path.rsplit('/', 1)[1]})"
            )
        return RegistryError(f"{self.host} answered {error.code} {error.reason} for {path}")

    def _basic(self) -> str | None:
        if self.credentials is None:
            return None
        return "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()

    def _answer(self, challenge: str) -> str | None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryError(f"{self.host} needs credentials", hint=f"sdrun image login {self.reference.host}")
            return self._basic()
        if scheme == "bearer" and "realm" in params:
            return "Bearer " + self._token(params)
        raise RegistryError(f"{self.host} asks for unsupported authentication '{challenge}'")

    def _token(self, params: dict[str, str]) -> str:
        query = {}
        if scope := params.get("scope") or (
            self.reference.repository and f"repository:{self.reference.repository}:pull"
        ):
            query["scope"] = scope
        if "service" in params:
            query["service"] = params["service"]
        request = urllib.request.Request(f"{params['realm']}?{urllib.parse.urlencode(query)}")
        if (basic := self._basic()) is not None:
            request.add_unredirected_header("Authorization", basic)
        try:
            with self.opener.open(request, timeout=TIMEOUT) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise RegistryError(f"the token service of {self.host} refused: {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise RegistryError(f"cannot get a token for {self.host}: {error}") from None
        token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str):
            raise RegistryError(f"the token service of {self.host} sent no token")
        return token

    # --- the API ---

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """A manifest or index by tag or digest: its bytes, exactly as served, and its media type."""
        path = f"/v2/{self.reference.repository}/manifests/{reference}"
        with self._request(path, {"Accept": MANIFEST_ACCEPT}) as response:
            raw = response.read(4 << 20)
            return raw, oci.media_type_of(raw, response.headers.get("Content-Type"))

    def open_blob(self, digest: str, offset: int) -> tuple[IO[bytes], int]:
        """The blob's bytes from offset if the registry honours Range (206), else from 0."""
        path = f"/v2/{self.reference.repository}/blobs/{digest}"
        # A server that sends other bytes than asked for fails the digest check, and the store then
        # fetches the blob whole.
        response = self._request(path, {"Range": f"bytes={offset}-"} if offset else {})
        start = offset if response.status == 206 else 0
        debug("image", "GET %s from byte %d: %d, starting at byte %d", path, offset, response.status, start)
        return response, start


def check_login(host: str, credentials: tuple[str, str], *, tls_verify: bool | None) -> None:
    """GET /v2/ with the credentials: raises RegistryError if the registry refuses them."""
    registry = Registry(RegistryReference(host, ""), tls_verify=tls_verify, credentials=credentials)
    registry._request("/v2/", {}).close()
