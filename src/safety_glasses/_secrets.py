"""Keeping secrets out of messages and files: API keys are read only from environment variables.

Example:
    >>> redact_secrets("llm-judge:url=https://u:pw@host/v1?api_key=abc,model=m,key=sk-123,key_env=MY_KEY")
    'llm-judge:url=https://***@host/v1?api_key=***,model=m,key=***,key_env=MY_KEY'
"""

from __future__ import annotations

import re

SECRET_OPTIONS: tuple[str, ...] = ("key", "api_key", "apikey", "token", "access_token", "secret", "password",
                                   "passwd", "auth", "authorization", "bearer")
"""Spec options that would carry a secret; they are refused (keys come from ``key_env=VAR``)."""

_OPTION = re.compile(r"(?i)(?<![A-Za-z0-9_])(" + "|".join(SECRET_OPTIONS) + r")(\s*[=:]\s*)([^,&\s'\"]+)")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s'\"]+@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",]+")


def redact_secrets(text: str) -> str:
    """``text`` with secret-looking values replaced by ``***``: ``key=``/``token=``/``password=`` style
    options (``key_env=VAR`` names a variable and is kept), URL user-info and bearer tokens.

    Example:
        >>> redact_secrets("judge 'x:key=sk-abc' failed")
        "judge 'x:key=***' failed"
    """
    text = _USERINFO.sub(r"\1***@", str(text))
    text = _BEARER.sub(r"\1***", text)
    return _OPTION.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def secret_options(options: dict[str, str]) -> list[str]:
    """The option names of ``options`` that would carry a secret.

    Example:
        >>> secret_options({"key": "x", "model": "m", "key_env": "V"})
        ['key']
    """
    return [k for k in options if k.lower() in SECRET_OPTIONS]
