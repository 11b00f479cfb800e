"""A real OTLP/HTTP trace receiver for goldrelay's traces test (tests/api/traces.rs).

Accepts `POST /v1/traces` (binary protobuf, optionally gzip), decodes it with the
`opentelemetry-proto` package (pip), and appends one JSON line per span to OUT:
its trace id, span id, parent span id, name, kind and attributes. Every raw
request body is also appended to OUT.raw, so a test can look for a secret in
everything that was exported, not only in what this script decodes.

Usage: python otlp_receiver.py PORT_FILE OUT
Listens on 127.0.0.1, on a free port it writes to PORT_FILE once ready.
"""

import gzip
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value_of(any_value):
    """An AnyValue as plain JSON."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(any_value, kind)
    if kind == "array_value":
        return [value_of(v) for v in value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in value.values}
    if kind == "bytes_value":
        return value.hex()
    return value


def attributes(pairs):
    return {kv.key: value_of(kv.value) for kv in pairs}


def spans_of(request):
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": span.kind,
                    "attributes": attributes(span.attributes),
                    "events": [
                        {"name": e.name, "attributes": attributes(e.attributes)}
                        for e in span.events
                    ],
                    "status": {"code": span.status.code, "message": span.status.message},
                    "resource": resource,
                }


class Receiver(BaseHTTPRequestHandler):
    out = None

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as error:  # a malformed export is the test's failure to see
            self.send_error(400, str(error))
            return
        with open(self.out + ".raw", "ab") as raw:
            raw.write(body)
        with open(self.out, "a", encoding="utf-8") as lines:
            for span in spans_of(request):
                lines.write(json.dumps(span) + "\n")
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass  # quiet: the test reads OUT, not this process's output


def main():
    port_file, out = sys.argv[1], sys.argv[2]
    Receiver.out = out
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    with open(port_file + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    # Renamed into place, so the test never reads a half-written port.
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
