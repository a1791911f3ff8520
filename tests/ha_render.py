"""Renders Home Assistant MQTT value templates the way Home Assistant does, with Jinja2.

Reads a JSON list of {"template": ..., "payload": ...} on stdin and prints a JSON list of the
rendered strings. As in Home Assistant's `render_with_possible_json_value`
(homeassistant/helpers/template.py): the template gets `value` (the payload as text) and
`value_json` (the payload parsed as JSON, when it parses), and is rendered in an immutable
sandboxed Jinja2 environment. Used by tests/tests/homeassistant.rs; needs jinja2 (from PyPI,
in the venv .ci/run makes under target/).
"""

import json
import sys

from jinja2.sandbox import ImmutableSandboxedEnvironment

env = ImmutableSandboxedEnvironment()
out = []
for case in json.load(sys.stdin):
    payload = case["payload"]
    variables = {"value": payload}
    try:
        variables["value_json"] = json.loads(payload)
    except ValueError:
        pass
    out.append(env.from_string(case["template"]).render(**variables).strip())
json.dump(out, sys.stdout)
