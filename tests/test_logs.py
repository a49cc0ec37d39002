import json
import logging

from xrayvision.logs import JsonFormatter, KeyValueFormatter


def record(**extra) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "xrayvision.x", "levelname": "INFO", "msg": "exam claimed",
                                 "levelno": logging.INFO})
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_key_value_lines():
    line = KeyValueFormatter().format(record(uid="1.2.3", worker="host:1", note="two words"))
    assert line.endswith('info xrayvision.x "exam claimed" uid=1.2.3 worker=host:1 '
                         'note="two words"')
    assert "\n" not in KeyValueFormatter().format(record(note="a\nb"))


def test_json_lines():
    body = json.loads(JsonFormatter().format(record(uid="1.2.3", attempts=2)))
    assert body["msg"] == "exam claimed" and body["uid"] == "1.2.3" and body["attempts"] == 2
    assert body["level"] == "info" and body["logger"] == "xrayvision.x"


def test_first_line_of_any_error():
    from sqlalchemy.exc import OperationalError

    from xrayvision.logs import first_line

    assert first_line(TimeoutError()) == "TimeoutError"  # no text: its type
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(ValueError("x" * 300)) == "x" * 200
    wrapped = OperationalError("SELECT 1", {}, ConnectionRefusedError("refused\nmore"))
    assert first_line(wrapped) == "refused"
