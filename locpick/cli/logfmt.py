"""``--log-format json``: one JSON object per log line, for log shippers.

Keys: ``time`` (UTC, ISO 8601), ``level``, ``event`` (a short name when the code gives one, else
the message), ``message``, and when the record carries them ``image``, ``host`` (of the
location), ``bytes``, ``seconds``. Text is scrubbed of secrets like every other log line (the
handler keeps its RedactingFilter; this formatter scrubs the extra fields and tracebacks too).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from locpick.redact import SCRUB

#: Record attributes copied into the object when present (set with ``extra=``).
FIELDS = ("image", "host", "bytes", "seconds")


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        message = SCRUB(record.getMessage())
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": _scrub(getattr(record, "event", None)) or message,
            "message": message,
            "logger": record.name,
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = _scrub(value)
        if record.exc_info and record.exc_info[1] is not None:
            doc["traceback"] = SCRUB(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["traceback"] = SCRUB(record.exc_text)
        return json.dumps(doc, ensure_ascii=False, default=str)


def _scrub(value: Any) -> Any:
    return SCRUB(value) if isinstance(value, str) else value
