"""Quiet, useful replica logs: Ray Serve logs every exception a replica method raises as an
ERROR with its traceback ("Request failed."), routine client errors included. This filter
turns an APIError under 500 (a bad request, a context too long) into one WARNING line with
its status and message; unexpected errors keep their traceback, logged once here (the
ingress logs one line for them, see serve_app/ingress/gateway/failures.py). Ray's JSON log lines
carry the request id, which ties them to the ingress's lines for the same request.
"""

from __future__ import annotations

import logging

from contract.errors import APIError

SERVE_LOGGER = "ray.serve"


class ClientErrorsAsWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, APIError) and error.status_code < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "Request refused: %s %s: %s", (error.status_code, error.code, error.message)
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_errors(logger_name: str = SERVE_LOGGER) -> None:
    """Install the filter once per process on Ray Serve's logger."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, ClientErrorsAsWarnings) for f in logger.filters):
        logger.addFilter(ClientErrorsAsWarnings())
