"""Google credentials for the ``gdrive`` storage.

Four kinds, chosen by the ``auth`` setting:

* ``service_account``: a service account key file (``credentials_file``), optionally impersonating a user
  of a Workspace domain (``subject``, domain-wide delegation);
* ``oauth``: a user's own account through the OAuth installed-app flow. The OAuth client is
  ``client_secrets_file``; the token is cached in ``token_file`` (default
  ``~/.config/data-manager/gdrive-token.json``, mode 0600). Without a usable token the browser flow runs
  once, and only when a terminal is attached;
* ``adc``: application default credentials (``gcloud auth application-default login``,
  ``GOOGLE_APPLICATION_CREDENTIALS``, or the metadata server);
* ``none``: a fixed dummy token, accepted only with an ``api_root`` on this machine (tests against a fake
  Drive server).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from data_manager.errors import StorageError

SCOPES = {
    "drive": "https://www.googleapis.com/auth/drive",
    "drive.file": "https://www.googleapis.com/auth/drive.file",
}
DEFAULT_TOKEN_FILE = Path("~/.config/data-manager/gdrive-token.json")
AUTH_KINDS = ("service_account", "oauth", "adc", "none")
DUMMY_TOKEN = "test"


def make_credentials(
    kind: str,
    scope: str,
    *,
    credentials_file: Path | None = None,
    subject: str | None = None,
    client_secrets_file: Path | None = None,
    token_file: Path = DEFAULT_TOKEN_FILE,
    oauth_port: int = 0,
) -> Any:
    """google-auth credentials of ``kind``, or a one-line StorageError."""
    scopes = [SCOPES[scope]]
    if kind == "service_account":
        assert credentials_file is not None
        return _service_account(credentials_file, scopes, subject)
    if kind == "oauth":
        assert client_secrets_file is not None
        return oauth_user_credentials(client_secrets_file, token_file.expanduser(), scopes, oauth_port)
    if kind == "adc":
        import google.auth
        import google.auth.exceptions

        try:
            creds, _project = google.auth.default(scopes=scopes)
        except google.auth.exceptions.DefaultCredentialsError:
            raise StorageError(
                "Google Drive: no application default credentials found (set credentials_file, "
                "client_secrets_file, or run `gcloud auth application-default login`)"
            ) from None
        return creds
    if kind == "none":
        from google.oauth2.credentials import Credentials

        return Credentials(token=DUMMY_TOKEN)
    raise ValueError(kind)


def _service_account(path: Path, scopes: list[str], subject: str | None) -> Any:
    from google.oauth2 import service_account

    try:
        creds = service_account.Credentials.from_service_account_file(str(path), scopes=scopes)
    except FileNotFoundError:
        raise StorageError(f"Google Drive: service account key file {path} does not exist") from None
    except (OSError, ValueError, KeyError) as exc:
        # ValueError/KeyError: not a service account key (wrong JSON); the message names no key material.
        raise StorageError(f"Google Drive: {path} is not a usable service account key file ({type(exc).__name__})") from None
    return creds.with_subject(subject) if subject else creds


def oauth_user_credentials(client_secrets_file: Path, token_file: Path, scopes: list[str], port: int = 0) -> Any:
    """The user's credentials: the cached token (refreshed if expired), else the installed-app flow."""
    import google.auth.exceptions
    from google.oauth2.credentials import Credentials

    creds = None
    if token_file.exists():
        try:
            creds = Credentials.from_authorized_user_file(str(token_file), scopes)
        except (ValueError, KeyError, OSError):
            creds = None  # unreadable or foreign file: sign in again
    if creds is not None and creds.valid:
        return creds
    if creds is not None and creds.refresh_token:
        try:
            import google_auth_httplib2
            from googleapiclient.http import build_http

            creds.refresh(google_auth_httplib2.Request(build_http()))
            save_token(creds, token_file)
            return creds
        except google.auth.exceptions.RefreshError:
            creds = None  # revoked or expired refresh token: sign in again
        except google.auth.exceptions.TransportError:
            raise StorageError("Google Drive: cannot reach Google to refresh the OAuth token") from None
    return _run_installed_app_flow(client_secrets_file, token_file, scopes, port)


def _run_installed_app_flow(client_secrets_file: Path, token_file: Path, scopes: list[str], port: int) -> Any:
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise StorageError(
            f"Google Drive: no usable OAuth token in {token_file}; run `data-manager status` once in a terminal to sign in"
        )
    if not client_secrets_file.is_file():
        raise StorageError(f"Google Drive: OAuth client file {client_secrets_file} does not exist")
    try:
        from google_auth_oauthlib.flow import InstalledAppFlow
    except ImportError:
        raise StorageError("Google Drive: auth = \"oauth\" needs the package google-auth-oauthlib") from None
    try:
        flow = InstalledAppFlow.from_client_secrets_file(str(client_secrets_file), scopes)
    except (ValueError, KeyError, OSError) as exc:
        raise StorageError(
            f"Google Drive: {client_secrets_file} is not an OAuth client file of type 'Desktop app' ({type(exc).__name__})"
        ) from None
    print(f"Google Drive: signing in to store backups; the token will be kept in {token_file}", file=sys.stderr)
    try:
        creds = flow.run_local_server(
            port=port,
            open_browser=True,
            authorization_prompt_message="Open this URL in a browser to let data-manager use Google Drive:\n{url}",
            success_message="data-manager: signed in to Google Drive. You may close this window.",
        )
    except Exception as exc:  # the flow raises oauthlib and OSError subclasses alike
        raise StorageError(f"Google Drive: OAuth sign-in failed ({type(exc).__name__}: {str(exc)[:150]})") from None
    save_token(creds, token_file)
    return creds


def save_token(creds: Any, token_file: Path) -> None:
    """Write the OAuth token readable by the owner only (0600, directory 0700), atomically.

    The temporary file gets a random name and is created with O_EXCL (and O_NOFOLLOW): a file or symlink
    another user planted beside the token can neither be followed nor truncated, and nothing is written
    anywhere but a fresh file of ours, which then replaces the token in one rename.
    """
    token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = (creds.to_json() if hasattr(creds, "to_json") else json.dumps(creds)).encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = token_file.with_name(f".{token_file.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o600)
            break
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
    try:
        try:
            os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, token_file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash once the directory is synced
        dir_fd = os.open(token_file.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
